"""The fast paths added for throughput give exactly what the slow paths gave.

* relaxed body canonicalisation and the header/body split in ``dkim_sign`` against stock dkimpy
  (every sample and corpus message, hand-picked edge cases, random input);
* the whole ``DKIM-Signature`` field against dkimpy's own signer, and stock ``dkim.verify``;
* the css_inline result cache against a fresh engine run, and its bound;
* ``pipeline.toolkit.html.protect`` skipping tags with nothing to protect.
"""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import Relaxed

from pipeline.chain.driver import make_chain, make_config
from pipeline.contract.message import Message
from pipeline.toolkit.html import AMP_MARK, protect
from plugins.css_inline import CssInline
from plugins.dkim_sign import _OpenSSLDKIM, dns_txt_value, relaxed_body, signed_headers
from tests.support import corpus_files, sample_files

FILES = sample_files() + corpus_files()
EDGE_BODIES = [
    b"",
    b"\r\n",
    b"\r\n\r\n\r\n",
    b" ",
    b" \r\n",
    b"\t\r\n \r\n",
    b"a  b\t\tc \t d\r\n",
    b"a \r\n \r\nb\t\r\n\r\n",
    b"no final newline  ",
    b"bare\nLF  \n and\rCR \r",
    b"x \r \n\r\n",
    b"  lead\r\n\ttab lead\r\n",
]


def test_relaxed_body_matches_dkimpy_on_every_sample_and_corpus_message() -> None:
    assert FILES
    for path in FILES:
        raw = path.read_bytes()
        for data in (raw, Message(raw).as_bytes()):
            body = data.partition(b"\r\n\r\n")[2] or data
            assert relaxed_body(body) == Relaxed.canonicalize_body(body), path.name
            assert relaxed_body(data) == Relaxed.canonicalize_body(data), path.name


def test_relaxed_body_matches_dkimpy_on_edge_cases_and_random_input() -> None:
    for body in EDGE_BODIES:
        assert relaxed_body(body) == Relaxed.canonicalize_body(body), body
    rng = random.Random(20261121)
    alphabet = b" \t\r\n.ab"
    for _ in range(5000):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert relaxed_body(body) == Relaxed.canonicalize_body(body), body


@pytest.mark.parametrize(
    "message",
    [
        b"From: a@example.com\r\nSubject: x\r\n\r\nbody  \r\n",
        b"From: a@example.com\r\n folded\r\nSubject: x\r\n\r\n\r\nbody after an empty line\r\n",
        b"From: a@example.com\nSubject: bare LF\n\nbody\n",
        b"From: a@example.com\r\nSubject: mixed\r\n\r\nbody\nwith bare LF\r\n",
        b"\r\nno headers at all\r\n",
        b"From: a@example.com\r\nSubject: no body\r\n",
        b"From a@example.com Sat Nov 21 2026\r\nFrom: a@example.com\r\n\r\nmbox line\r\n",
    ],
)
def test_signer_splits_header_and_body_exactly_like_dkimpy(message: bytes) -> None:
    ours = _OpenSSLDKIM(message, rsa.generate_private_key(65537, 1024))
    headers, body = dkim.rfc822_parse(message)
    assert ours.headers == headers
    assert ours.body == body


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def _same_second_signatures(data: bytes, key: rsa.RSAPrivateKey, include: list[bytes]) -> tuple[bytes, bytes]:
    """Ours and stock dkimpy's signature of ``data``; retried when a second boundary fell between
    them (``t=`` would differ)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    for _ in range(5):
        ours = _OpenSSLDKIM(data, key).sign(
            b"s1", b"example.com", pem, canonicalize=(b"relaxed", b"relaxed"), include_headers=include
        )
        stock = dkim.DKIM(data, linesep=b"\r\n").sign(
            b"s1", b"example.com", pem, canonicalize=(b"relaxed", b"relaxed"), include_headers=include
        )
        if re.search(rb"t=(\d+)", ours)[1] == re.search(rb"t=(\d+)", stock)[1]:  # type: ignore[index]
            return ours, stock
    raise AssertionError("could not sign twice within one second")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_signature_field_is_byte_identical_to_stock_dkimpy_and_verifies(
    path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    data = Message(path.read_bytes()).as_bytes()
    include = signed_headers([h.name for h in Message(data).headers])
    if not any(h.name.lower() == "from" for h in Message(data).headers):
        include = [b"from", *include]
    try:
        ours, stock = _same_second_signatures(data, rsa_key, include)
    except dkim.MessageFormatError:  # dkimpy cannot parse this header block: ours must refuse too
        with pytest.raises(dkim.MessageFormatError):
            dkim.DKIM(data).sign(b"s1", b"example.com", b"", include_headers=include)
        return
    assert ours == stock
    record = dns_txt_value(rsa_key).encode()
    assert dkim.verify(ours + data, dnsfunc=lambda name, timeout=5: record)


# -- css_inline cache -------------------------------------------------------------------------


def _css_plugin(tmp_path: Path, engine: str, cache_size: int) -> CssInline:
    config = make_config(
        {
            "gateway": {"data_dir": str(tmp_path / "data")},
            "plugins": {"css_inline": {"engine": engine, "cache_size": cache_size}},
        },
        plugins=["css_inline"],
    )
    instance = make_chain(config).plugins.plugins[0].instance
    assert isinstance(instance, CssInline)
    return instance


def _template(n: int) -> str:
    return (
        "<!DOCTYPE html><html><head><style>p { color: #00f } .x { font-weight: bold }</style></head>"
        f'<body><p class="x">Hello {n} &amp; welcome</p><a href="https://example.com/?a=1&b={n}">go</a></body></html>'
    )


@pytest.mark.parametrize("engine", ["css_inline", "premailer"])
def test_cached_inlining_gives_what_a_fresh_engine_run_gives(tmp_path: Path, engine: str) -> None:
    cached = _css_plugin(tmp_path, engine, 4)
    fresh = _css_plugin(tmp_path, engine, 0)
    htmls = [_template(i % 3) for i in range(9)]
    for path in FILES:
        htmls += [p.text() for p in Message(path.read_bytes()).html_parts()]
    for html in htmls + htmls:
        assert cached.inline(html) == fresh.engine.inline(html)
    assert "color" in cached.inline(_template(1)) and "Hello 1" in cached.inline(_template(1))
    assert "Hello 2" in cached.inline(_template(2))


def test_inlining_cache_keeps_at_most_cache_size_results_and_zero_turns_it_off(tmp_path: Path) -> None:
    plugin = _css_plugin(tmp_path, "css_inline", 2)
    for i in range(5):
        plugin.inline(_template(i))
    assert list(plugin._cache) == [_template(3), _template(4)]
    plugin.inline(_template(3))  # a hit moves to the back: 4 is now the oldest
    plugin.inline(_template(5))
    assert list(plugin._cache) == [_template(3), _template(5)]
    off = _css_plugin(tmp_path, "css_inline", 0)
    off.inline(_template(1))
    assert not off._cache


def test_negative_cache_size_is_a_config_error(tmp_path: Path) -> None:
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="cache_size"):
        _css_plugin(tmp_path, "css_inline", -1)


# -- protect ----------------------------------------------------------------------------------


def test_protect_leaves_tags_without_urls_or_ampersands_as_written_and_still_protects_the_rest() -> None:
    html = (
        '<html><body><table width="100%" class="x"><td  background = "bg.png">'
        '<p title="a&b" style="font: a&b">x</p><a HREF=\'https://e.com/?a=1&b=2\'>y</a>'
        "<img Src = \"pic.gif\" alt=\"\"><div data-x='1'>z</div></body></html>"
    )
    prot = protect(html)
    text = prot.text
    assert '<table width="100%" class="x">' in text and "<div data-x='1'>" in text
    assert "bg.png" not in text and "pic.gif" not in text and "https://e.com" not in text
    assert f'title="a{AMP_MARK}b"' in text and 'style="font: a&b"' in text
    assert len(prot.kept) == 3
    assert prot.restore(text) == html


def test_protect_takes_the_attribute_path_for_non_ascii_tags() -> None:
    # U+212A KELVIN SIGN lower-cases to "k": "bac\u212aground" is the background attribute.
    html = '<html><body><td bac\u212aground="x.png">t</td></body></html>'
    prot = protect(html)
    assert "x.png" not in prot.text and len(prot.kept) == 1
    assert prot.restore(prot.text) == html


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


# -- header_validation ------------------------------------------------------------------------


FROM_VALUES = [
    "Jane <jane@example.com>",
    "jane@example.com",
    '"Doe, Jane" <jane@example.com>',
    "=?utf-8?q?J=C3=A4ne?= <jane@example.com>",
    "a@example.com, b@example.com",
    "Jane <jane@>",
    "jane",
    "<@example.com>",
    "Jane <jane@exa_mple.com>",
    "",
    "undisclosed-recipients:;",
    "Jane <jane@example.com",
    "x" * 3000 + " <jane@example.com>",  # above the cache's length bound: checked uncached
]


def test_cached_from_check_gives_the_uncached_verdict_every_time() -> None:
    from plugins.header_validation import _check_from, check_from

    for _ in range(2):  # the second round answers from the cache
        for value in FROM_VALUES:
            assert check_from(value) == _check_from(value), value
    assert check_from("jane") is not None and check_from("Jane <jane@example.com>") is None


def test_long_from_values_are_not_kept_in_the_cache() -> None:
    from plugins.header_validation import _CHECK_FROM_CACHE_MAX_LEN, _check_from_cached, check_from

    long_value = "y" * (_CHECK_FROM_CACHE_MAX_LEN + 1) + " <jane@example.com>"
    before = _check_from_cached.cache_info()
    assert check_from(long_value) is None
    after = _check_from_cached.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)


# -- SMTP egress: prepared DATA without aiosmtplib's regex passes -------------------------------


WIRE_EDGE = [
    b"",
    b"a",
    b"\r\n",
    b".\r\n",
    b"..\r\n.\r\n",
    b"Subject: x\r\n\r\n.hidden\r\n..two\r\n. \r\nend",
    b"Subject: x\r\n\r\nbody\r\n",
]


def test_wire_data_is_byte_for_byte_what_aiosmtplib_would_send() -> None:
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    from pipeline.egress.smtp import wire_data

    crlf_files = [p.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for p in FILES]
    checked = 0
    for data in WIRE_EDGE + crlf_files + [b"." + d for d in crlf_files[:5]]:
        expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"
        assert wire_data(data) == expected, data[:80]
        checked += 1
    assert checked > 20
    for bare in (b"a\nb\r\n", b"a\rb\r\n", b"a\r\n\n", b"\r", b"x\n.\r\n"):
        assert wire_data(bare) is None, bare  # not CRLF-clean: aiosmtplib's own path


class _OptionSink:
    """SinkHandler that also keeps MAIL parameters and refuses DATA for ``reject-data@`` recipients."""

    def __init__(self) -> None:
        from tests.support.smtp_sink import SinkHandler

        self.inner = SinkHandler(replies={"refused@example.net": ["550 5.1.1 no such user"]})
        self.mail_options: list[list[str]] = []

    async def handle_RCPT(self, *args: object) -> str:
        return await self.inner.handle_RCPT(*args)  # type: ignore[arg-type]

    async def handle_RSET(self, *args: object) -> str:
        return await self.inner.handle_RSET(*args)  # type: ignore[arg-type]

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.mail_options.append(list(envelope.mail_options))  # type: ignore[attr-defined]
        if any(r.startswith("reject-data@") for r in envelope.rcpt_tos):  # type: ignore[attr-defined]
            return "554 5.7.1 content refused"
        return await self.inner.handle_DATA(server, session, envelope)  # type: ignore[arg-type]


async def test_prepared_copies_arrive_byte_identical_with_size_and_refusals_reset_the_reused_connection() -> None:
    from pipeline.egress.base import Copy
    from pipeline.egress.smtp import HopPool, open_connection, send_copy
    from tests.support.smtp_sink import SinkController

    handler = _OptionSink()
    sink = SinkController(handler, data_size_limit=10_000_000)  # advertises SIZE, like Postfix
    sink.start()
    opened: list[object] = []

    async def connect() -> object:
        conn = await open_connection("127.0.0.1", sink.port, helo="gw.test", timeout=10, tls="none",
                                     verify=False, ca_file=None)
        opened.append(conn)
        return conn

    pool = HopPool("127.0.0.1", sink.port, 1, connect)  # type: ignore[arg-type]
    try:
        typical = FILES[0].read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        dotted = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nlast line without CRLF"
        sent = [
            await send_copy(pool, Copy("q1", "a@example.net", "s@example.com", typical)),
            await send_copy(pool, Copy("q2", "refused@example.net", "s@example.com", dotted)),
            await send_copy(pool, Copy("q3", "reject-data@example.net", "s@example.com", dotted)),
            await send_copy(pool, Copy("q4", "b@example.net", "s@example.com", dotted)),
            await send_copy(pool, Copy("q5", "c@example.net", "s@example.com", b"Subject: bare\n\nLF only\n")),
        ]
    finally:
        await pool.close()
        sink.stop()
    assert [r.status for r in sent] == ["sent", "bounced", "bounced", "sent", "sent"]
    assert sent[1].dsn == "5.1.1" and sent[2].reply.startswith("554") and "5.7.1" in sent[2].reply
    assert handler.inner.commands.count("RSET") == 2  # after the refused RCPT and the refused DATA
    assert len(opened) == 1  # one connection for all five: refusals leave it usable
    got = handler.inner.messages
    assert [m.rcpt_tos for m in got] == [["a@example.net"], ["b@example.net"], ["c@example.net"]]
    assert got[0].data == typical
    assert got[1].data == dotted + b"\r\n"  # the last line gets its CRLF, the dots come back unstuffed
    assert got[2].data == b"Subject: bare\r\n\r\nLF only\r\n"  # bare LF: aiosmtplib's own path normalises
    sizes = [o for opts in handler.mail_options for o in opts if o.upper().startswith("SIZE=")]
    assert sizes[:3] == [f"SIZE={len(typical)}", f"SIZE={len(dotted) + 2}", f"SIZE={len(dotted) + 2}"]


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


async def _scripted_hop(data_reply: bytes | None) -> tuple[asyncio.Server, int, list[int]]:
    """A next hop that accepts MAIL and RCPT, then after the message answers ``data_reply``, or
    (``None``) hangs up in the middle of the DATA bytes. Counts connections."""
    connections: list[int] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.write(b"220 hop ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-hop\r\n250-SIZE 10000000\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    if data_reply is None:
                        await reader.read(100)
                        writer.close()
                        return
                    await reader.readuntil(b"\r\n.\r\n")
                    writer.write(data_reply)
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


@pytest.mark.parametrize(
    ("data_reply", "status", "dsn"),
    [(None, "deferred", "4.4.2"), (b"421 4.3.2 shutting down\r\n", "deferred", "4.3.2"),
     (b"452 4.3.1 out of space\r\n", "deferred", "4.3.1")],
)
async def test_prepared_data_phase_failures_defer_and_a_dead_or_closing_connection_is_not_reused(
    data_reply: bytes | None, status: str, dsn: str
) -> None:
    from pipeline.egress.base import Copy
    from pipeline.egress.smtp import HopPool, open_connection, send_copy

    server, port, connections = await _scripted_hop(data_reply)

    async def connect() -> object:
        return await open_connection("127.0.0.1", port, helo="gw.test", timeout=5, tls="none",
                                     verify=False, ca_file=None)

    pool = HopPool("127.0.0.1", port, 1, connect)  # type: ignore[arg-type]
    copy = Copy("q1", "a@example.net", "s@example.com", b"Subject: x\r\n\r\nbody\r\n")
    try:
        first = await send_copy(pool, copy)
        second = await send_copy(pool, copy)
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()
    assert (first.status, first.dsn) == (status, dsn), first
    assert second.status == status
    # a hang-up or a 421 means a fresh connection for the next copy; a plain 4xx keeps it
    assert len(connections) == (1 if data_reply and data_reply.startswith(b"452") else 2)
