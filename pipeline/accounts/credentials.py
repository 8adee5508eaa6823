"""Deprecated import path (one release): credentials are split into
:mod:`pipeline.accounts.secrets` (hashing, verification, new keys), :mod:`pipeline.accounts.store`
(the records and the SQLite store) and :mod:`pipeline.accounts.authenticator` (AUTH and IP checks).
"""

from pipeline.accounts.authenticator import Authenticator, AuthOutcome
from pipeline.accounts.secrets import (
    API_KEY_PREFIX,
    check_hash_format,
    hash_secret,
    hash_secret_pbkdf2,
    new_api_key,
    new_password,
    verify_secret,
)
from pipeline.accounts.store import SCHEMA, CredentialError, CredentialStore, Record, config_records

__all__ = [
    "API_KEY_PREFIX",
    "SCHEMA",
    "AuthOutcome",
    "Authenticator",
    "CredentialError",
    "CredentialStore",
    "Record",
    "check_hash_format",
    "config_records",
    "hash_secret",
    "hash_secret_pbkdf2",
    "new_api_key",
    "new_password",
    "verify_secret",
]
