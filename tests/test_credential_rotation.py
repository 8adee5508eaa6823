"""Rotating a stored credential's secret (``POST /api/v1/credentials/{name}/rotate``) on both storage
backends: the new secret verifies, the old one does not, an API key gets a new key id. The
PostgreSQL store used to read the SQLite connection here and failed."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.accounts.secrets import verify_secret
from pipeline.accounts.store import CredentialError, CredentialStore


def test_rotating_a_stored_secret_replaces_it_on_both_backends(backend: Any) -> None:
    store = (
        CredentialStore(url=backend.url)
        if backend.url
        else CredentialStore(backend.data_dir / "credentials.db")
    )
    try:
        first = store.add("app", "apikey")
        password = store.add("desk", "password", username="desk")
        assert first is not None and password is not None
        [before] = [r for r in store.records() if r.name == "app"]
        second = store.rotate("app")
        new_password = store.rotate("desk")
        records = {r.name: r for r in store.records()}
        assert records["app"].secret_hash and verify_secret(second, records["app"].secret_hash)
        assert not verify_secret(first, records["app"].secret_hash)
        assert records["app"].key_id != before.key_id and second.startswith(f"sg_{records['app'].key_id}")
        assert records["desk"].secret_hash and verify_secret(new_password, records["desk"].secret_hash)
        assert not verify_secret(password, records["desk"].secret_hash)
        with pytest.raises(CredentialError):
            store.rotate("nobody")
    finally:
        store.close()
