"""The ingress's pure parts: address parsing, reply adaptation, secret hashing, the credential store."""

from __future__ import annotations

import sqlite3

import pytest

from pipeline.accounts.authenticator import Authenticator
from pipeline.accounts.secrets import check_hash_format, hash_secret, hash_secret_pbkdf2, verify_secret
from pipeline.accounts.store import CredentialError, CredentialStore
from pipeline.chain.driver import make_config
from pipeline.config import ConfigError
from pipeline.ingress.addresses import AddressError, domain_matches, parse_path
from pipeline.ingress.limits import ConnectionLimiter, SlidingWindow
from pipeline.ingress.replies import with_enhanced


@pytest.mark.parametrize(
    ("arg", "address", "trick"),
    [
        ("<a@example.com>", "a@example.com", None),
        (" yo@midominio.com", "yo@midominio.com", None),
        ("<a@example.com> SIZE=10 BODY=8BITMIME", "a@example.com", None),
        ("<user%evil.example@gw.test>", "user%evil.example@gw.test", "percent hack"),
        ("<@a.example,@b.example:user@c.example>", "user@c.example", "source route"),
        ('<"a b"@example.com>', '"a b"@example.com', "quoted local part"),
        ("<host!user@example.com>", "host!user@example.com", "bang path"),
        ('<"a>b"@example.com>', '"a>b"@example.com', "quoted local part"),
    ],
)
def test_paths_parse_and_relay_tricks_are_flagged(arg, address, trick):
    path = parse_path(arg, allow_null=False)
    assert path.address == address
    assert path.relay_trick == trick


@pytest.mark.parametrize(
    "arg",
    ["<a@b@example.com>", "<@evil:>", "<a@-bad.example>", "<.a@example.com>", "<a..b@example.com>", "<a@example..com>",
     "<" + "x" * 65 + "@example.com>", "<a@example.com", "<a@exa_mple.com>", "<a@example.com> BAD=", "<>"],
)
def test_invalid_paths_are_refused(arg):
    with pytest.raises(AddressError):
        parse_path(arg, allow_null=False)


def test_null_sender_only_where_allowed():
    assert parse_path("<>", allow_null=True).address == ""
    assert parse_path("<> BODY=7BIT", allow_null=True).params == {"BODY": "7BIT"}


def test_domain_patterns():
    assert domain_matches("Shop.Example", ["shop.example"])
    assert domain_matches("eu.mail.shop.example", [".shop.example"])
    assert domain_matches("eu.shop.example", ["*.shop.example"])
    assert not domain_matches("shop.example.evil", ["shop.example", ".shop.example"])
    assert not domain_matches("evilshop.example", [".shop.example"])


@pytest.mark.parametrize(
    ("raw", "adapted"),
    [
        ("250 OK", "250 2.0.0 OK"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
        ('500 Error: command "X" not recognized', '500 5.5.1 Error: command "X" not recognized'),
        ("501 Syntax: HELO hostname", "501 5.5.4 Syntax: HELO hostname"),
        ("454 TLS not available", "454 4.7.0 TLS not available"),
        ("502 5.5.1 Too many unrecognized commands, goodbye.", "502 5.5.1 Too many unrecognized commands, goodbye."),
        ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
    ],
)
def test_builtin_replies_get_enhanced_codes(raw, adapted):
    assert with_enhanced(raw) == adapted


def test_secret_hashes_verify_and_are_salted():
    secret = "correct-horse-battery-staple"  # long enough never to appear by chance in base64
    h1, h2 = hash_secret(secret), hash_secret(secret)
    assert h1 != h2 and secret not in h1
    assert verify_secret(secret, h1) and not verify_secret(secret + "2", h1)
    p = hash_secret_pbkdf2("pw", 1000)
    assert verify_secret("pw", p) and not verify_secret("px", p)
    check_hash_format(h1)
    check_hash_format(p)
    for bad in ("pw", "scrypt$3$8$1$aa$bb", "md5$x$y"):
        with pytest.raises(ValueError):
            check_hash_format(bad)


def test_store_keeps_only_hashes(tmp_path):
    store = CredentialStore(tmp_path / "credentials.db")
    key = store.add("app", "apikey", options={"features": {"trackopens": False}, "sandbox": True})
    password = store.add("login", "password", username="User@Example")
    assert key and password
    with pytest.raises(CredentialError, match="already exists"):
        store.add("app", "apikey")
    with pytest.raises(CredentialError, match="already used"):
        store.add("other", "password", username="user@example")
    with pytest.raises(CredentialError, match="not an IP network"):
        store.add("net", "ip", networks=["10.0.0.300/8"])
    with pytest.raises(CredentialError, match="no credential"):
        store.remove("missing")
    listed = {r["name"]: r for r in store.list()}
    assert listed["app"]["features"] == {"trackopens": False} and listed["app"]["sandbox"] is True
    store.close()
    dump = b"".join(bytes(str(row), "utf-8") for row in sqlite3.connect(tmp_path / "credentials.db").execute(
        "SELECT * FROM credentials"))
    assert key.encode() not in dump and password.encode() not in dump


async def test_authenticator_matches_config_and_store_and_ip_lists(tmp_path):
    store = CredentialStore(tmp_path / "credentials.db")
    key = store.add("stored", "apikey")
    store.add("office", "ip", networks=["10.1.0.0/16"])
    config = make_config({"credentials": [
        {"name": "cfg", "kind": "password", "username": "cfg-user", "secret": "pw", "locked": ["trackopens"]},
        {"name": "wide", "kind": "ip", "networks": ["10.0.0.0/8", "::1/128"]},
    ]})
    auth = Authenticator(config, store)
    ok = await auth.authenticate("cfg-user", "pw")
    assert ok.credential is not None and ok.credential.locked == frozenset({"trackopens"})
    assert (await auth.authenticate("CFG-USER", "pw")).reason == "ok"  # logins are case-insensitive
    assert (await auth.authenticate("cfg-user", "nope")).reason == "invalid"
    assert (await auth.authenticate("anything", key)).name == "stored"
    assert (await auth.authenticate("apikey", key[:-1] + "x")).reason == "invalid"
    assert auth.match_ip("10.1.2.3").name == "office"  # most specific network wins
    assert auth.match_ip("10.9.9.9").name == "wide"
    assert auth.match_ip("::ffff:10.9.9.9").name == "wide"
    assert auth.match_ip("::1").name == "wide"
    assert auth.match_ip("192.0.2.1") is None
    store.set_disabled("office")
    assert auth.match_ip("10.1.2.3").name == "wide"  # a disabled allow-list entry no longer matches
    store.close()


def test_bad_config_credentials_name_the_key():
    with pytest.raises(ConfigError, match=r"credentials\[0\]\.networks: 'nope' is not an IP network"):
        Authenticator(make_config({"credentials": [{"name": "x", "kind": "ip", "networks": ["nope"]}]}), None)
    with pytest.raises(ConfigError, match=r"credentials\[0\]: a apikey credential needs secret or secret_hash"):
        Authenticator(make_config({"credentials": [{"name": "x", "kind": "apikey"}]}), None)
    with pytest.raises(ConfigError, match=r"credentials\[0\]\.secret_hash: secret_hash must look like"):
        Authenticator(make_config({"credentials": [{"name": "x", "kind": "apikey", "secret_hash": "plain"}]}), None)
    with pytest.raises(ConfigError, match=r"credentials\[1\]\.name: two credentials are named 'x'"):
        Authenticator(make_config({"credentials": [{"name": "x", "kind": "ip", "networks": ["10.0.0.0/8"]}] * 2}), None)


def test_limits():
    limiter = ConnectionLimiter(max_total=3, max_per_ip=2)
    assert limiter.acquire("a") is None and limiter.acquire("a") is None
    assert limiter.acquire("a") == "ip"
    assert limiter.acquire("b") is None
    assert limiter.acquire("c") == "total"
    limiter.release("a")
    assert limiter.acquire("c") is None
    window = SlidingWindow(60)
    assert [window.add("ip") for _ in range(3)] == [1, 2, 3]
    assert window.count("ip") == 3 and window.count("other") == 0
