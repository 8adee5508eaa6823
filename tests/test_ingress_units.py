"""The ingress's pure parts: address parsing, reply adaptation, secret hashing, the credential store."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.accounts.authenticator import Authenticator
from pipeline.accounts.secrets import check_hash_format, hash_secret, hash_secret_pbkdf2, verify_secret
from pipeline.accounts.store import CredentialError, CredentialStore
from pipeline.chain.driver import make_config
from pipeline.config import ConfigError
from pipeline.ingress.addresses import AddressError, domain_matches, parse_path
from pipeline.ingress.data import check_content, header_block_problem
from pipeline.ingress.limits import ConnectionLimiter, SlidingWindow
from pipeline.ingress.relay import non_fqdn
from pipeline.ingress.replies import with_enhanced
from tests.support import corpus_files, sample_files

FILES = sample_files() + corpus_files()  # every golden input: samples/ and the shared corpus


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


# -- DATA octet checks (pipeline/ingress/data.py) ----------------------------------------------
_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True)
_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
_FIELDS = st.lists(st.tuples(_NAMES, _VALUES), min_size=1, max_size=8)


@settings(max_examples=50, deadline=None)
@given(fields=_FIELDS, body=st.binary(max_size=200))
def test_a_crlf_clean_header_block_is_never_flagged_whatever_the_body(fields, body):
    head = b"".join(f"{name}: {value}\r\n".encode() for name, value in fields)
    assert header_block_problem(head + b"\r\n" + body) is None


@settings(max_examples=50, deadline=None)
@given(fields=_FIELDS, data=st.data(), octet=st.sampled_from([b"\n", b"\r"]))
def test_a_bare_cr_or_lf_in_any_header_line_is_flagged_with_its_line_number(fields, data, octet):
    lines = [f"{name}: {value}".encode() for name, value in fields]
    line = data.draw(st.integers(0, len(lines) - 1))
    at = data.draw(st.integers(len(lines[line].split(b":")[0]) + 1, len(lines[line])))
    lines[line] = lines[line][:at] + octet + lines[line][at:]
    message = b"\r\n".join(lines) + b"\r\n\r\nbody\n"
    name = "LF" if octet == b"\n" else "CR"
    assert header_block_problem(message) == f"bare {name} in header line {line + 1}"


def test_the_header_block_ends_at_the_first_line_that_is_not_a_header_field():
    """enKod's example has no empty line before its HTML: bare LFs from there on are body."""
    assert header_block_problem(b"Subject: x\r\nMIME-Version: 1.0\r\n<!DOCTYPE html>\n<html>\r\n") is None
    assert header_block_problem(b"Subject: x\r\n folded\nBcc: y\r\n\r\n") == "bare LF in header line 2"
    assert check_content(b"Subject: x\r\n\r\nbody\nline\r\n") is None
    assert check_content(b"Subject: x\r\n\r\nbody\nline\r\n", "reject") is not None
    assert check_content(b"Subject: x\r\n\r\nbo\x00dy\r\n") is not None


@pytest.mark.parametrize(
    ("domain", "qualified"),
    [("testmail", False), ("testmail.", False), ("a..b", False), (".ru", False), ("testmail.ru", True),
     ("mail.example.com.", True), ("[192.0.2.1]", True)],
)
def test_a_sender_domain_is_fully_qualified_with_a_dot_between_two_labels(domain, qualified):
    assert non_fqdn(domain) is not qualified


def test_long_line_check_by_blocks_agrees_with_splitting_every_line() -> None:
    import itertools

    from pipeline.ingress.data import MAX_LINE as _MAX_LINE
    from pipeline.ingress.data import has_long_line as _has_long_line

    def reference(body: bytes, limit: int) -> bool:
        return bool(body) and max(map(len, body.split(b"\r\n"))) > limit

    for limit in range(1, 6):  # every body of up to 8 octets from CR, LF and a letter
        for length in range(9):
            for combo in itertools.product((b"\r", b"\n", b"a"), repeat=length):
                body = b"".join(combo)
                assert _has_long_line(body, limit) == reference(body, limit), (body, limit)
    typical = FILES[0].read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    for extra in (_MAX_LINE - 1, _MAX_LINE, _MAX_LINE + 1):  # at the real limit, anywhere in a message
        for at in (0, len(typical) // 2, len(typical)):
            line = b"\r" * (extra // 3) + b"x" * (extra - extra // 3)  # bare CRs count as line octets
            body = typical[:at] + line + b"\r\n" + typical[at:]
            assert _has_long_line(body) == reference(body, _MAX_LINE), (extra, at)


# -- ingress ----------------------------------------------------------------------------------


def test_smuggling_check_with_its_fast_exit_flags_exactly_the_four_dot_line_sequences() -> None:
    import itertools

    from pipeline.ingress.data import smuggling as _smuggling

    def reference(body: bytes) -> bool:
        return body.startswith((b".\n", b".\r")) or any(
            seq in body for seq in (b"\n.\n", b"\n.\r", b"\r.\n", b"\r.\r")
        )

    for length in range(7):
        for combo in itertools.product((b"\r", b"\n", b".", b"a"), repeat=length):
            body = b"".join(combo)
            assert _smuggling(body) == reference(body), body


async def test_a_session_is_set_up_as_aiosmtpds_own_constructor_would_set_it_up():
    """SessionBase builds aiosmtpd's per-connection state itself (its command tables once per class):
    every attribute aiosmtpd's constructor sets exists, with the same value where it is a plain one."""
    import types

    from aiosmtpd.smtp import SMTP

    from pipeline.ingress.server import GatewaySMTP
    from pipeline.ingress.session import _Hooks

    config = make_config({"limits": {"max_message_size": 12345, "idle_timeout": 42.0}})
    listener = config.listeners[0]
    ours = GatewaySMTP(types.SimpleNamespace(config=config), listener, None)  # type: ignore[arg-type]
    class AiosmtpdTables(GatewaySMTP):  # aiosmtpd's constructor assigns the tables ours makes when read
        _auth_methods: Any = None
        _smtp_methods: Any = None

    theirs = object.__new__(AiosmtpdTables)
    SMTP.__init__(theirs, _Hooks(), data_size_limit=12345, enable_SMTPUTF8=True, hostname=config.gateway.hostname,
                  ident="ESMTP smtpgate", tls_context=None, require_starttls=False, timeout=42.0,
                  auth_require_tls=listener.require_tls, loop=asyncio.get_running_loop())
    missing = set(vars(theirs)) - set(vars(ours))
    # the command and AUTH tables are properties of the class, made when read (no reference cycle)
    assert missing == {"_auth_methods", "_smtp_methods"}
    assert all(isinstance(getattr(GatewaySMTP, name), property) for name in missing)
    objects = {"_stream_reader_wr", "_stream_reader", "_strong_reader", "_loop", "loop", "_closed", "event_handler",
               "_client_connected_cb", "_auth_methods", "_smtp_methods", "_handle_hooks", "_auth_callback"}
    for name, value in vars(theirs).items():
        if name not in objects and not callable(value):
            assert getattr(ours, name) == value, name
    assert ours._auth_callback is theirs._auth_callback
    assert ours._handle_hooks == theirs._handle_hooks == {}
    assert {k: v.is_builtin for k, v in ours._auth_methods.items()} == {
        k: v.is_builtin for k, v in theirs._auth_methods.items()}
    assert sorted(ours._smtp_methods) == sorted(theirs._smtp_methods)
    assert ours._smtp_methods.get("NOSUCH") is None and ours._smtp_methods.get("DATA") is not None
    assert ours._stream_reader._limit == theirs._stream_reader._limit  # type: ignore[attr-defined]
