"""Accounts: credentials (secret hashing, the store, the authenticator). Used by the ingress, the CLI, replay and events."""
