"""The DATA octet checks' shortcuts answer exactly what the line-by-line computations answered.

* the header-block check proves a message clean with three counts over the text before its first
  empty line, and scans line by line only otherwise: the same answer as the scan for every short
  octet string, for generated header blocks with a bare CR or LF anywhere, and for every sample and
  corpus message (as it is and with a bare line end injected), and the same reply over a real socket;
* the long-line check jumps from line start to the last CRLF within ``limit + 2`` octets: the same
  answer as splitting every line, for every short string, for generated lines around the limit
  and for every sample and corpus message with a line of 998 to 1,001 octets put anywhere, and the
  same reply over a real socket;
* a bracketed MAIL/RCPT path without a quote before its first ``>`` is split there at once: the same
  split (or refusal) as the character-by-character scan, for every short string and generated paths;
* the command loop asks once per line whether aiosmtpd's ``mail.log`` is on: the same lines as
  aiosmtpd's loop at DEBUG, INFO and WARNING.
"""

from __future__ import annotations

import itertools
import logging
import re

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.app.harness import Dialogue, ingress_test_config, running_ingress
from pipeline.ingress import data as D
from pipeline.ingress import replies as R
from pipeline.ingress.server import GatewaySMTP
from tests.support import corpus_files, sample_files


def reference(message: bytes) -> str | None:
    """The header-block check as it was: every header line scanned."""
    return D._header_block_scan(message)


def test_the_header_block_check_agrees_with_the_scan_on_every_short_octet_string() -> None:
    alphabet = (b"\r", b"\n", b"a", b":", b" ")
    for length in range(8):
        for combo in itertools.product(alphabet, repeat=length):
            message = b"".join(combo)
            assert D.header_block_problem(message) == reference(message), message


_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,12}", fullmatch=True)
_VALUES = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@settings(max_examples=150, deadline=None)
@given(
    fields=st.lists(st.tuples(_NAMES, _VALUES, st.booleans()), min_size=0, max_size=8),
    separator=st.sampled_from([b"\r\n", b"", b"<html>\r\n", b"\n", b"\r"]),
    body=st.binary(max_size=60),
    injections=st.lists(
        st.tuples(st.integers(0, 400), st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\n\r\n"])), max_size=3
    ),
)
def test_the_header_block_check_agrees_with_the_scan_on_generated_messages(
    fields, separator, body, injections
):
    head = b"".join(
        name.encode() + b": " + value + (b"\r\n\tfolded" if folded else b"") + b"\r\n"
        for name, value, folded in fields
    )
    message = head + separator + body
    for at, octets in injections:
        at = min(at, len(message))
        message = message[:at] + octets + message[at:]
    assert D.header_block_problem(message) == reference(message)


def _messages() -> list[tuple[str, bytes]]:
    """Every sample and corpus message as a client sends it (CRLF line ends), and with a bare LF or
    CR put into its first, middle and last header line and into its body."""
    found = []
    for path in sample_files() + corpus_files():
        raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        found.append((path.name, raw))
        end = raw.find(b"\r\n\r\n")
        lines = raw[: max(end, 0)].split(b"\r\n")
        starts = list(itertools.accumulate([0] + [len(line) + 2 for line in lines[:-1]]))
        for which, octet in ((0, b"\n"), (len(lines) // 2, b"\r"), (len(lines) - 1, b"\n")):
            at = starts[which] + len(lines[which]) // 2 + 1
            found.append((f"{path.name}+{octet!r}@header{which}", raw[:at] + octet + raw[at:]))
        if end != -1:
            at = end + 4 + (len(raw) - end) // 2
            found.append((f"{path.name}+LF@body", raw[:at] + b"\n" + raw[at:]))
    return found


MESSAGES = _messages()


def test_the_header_block_check_agrees_with_the_scan_on_every_sample_and_corpus_message() -> None:
    assert len(MESSAGES) > 20
    flagged = 0
    for name, message in MESSAGES:
        expected = reference(message)
        assert D.header_block_problem(message) == expected, name
        flagged += expected is not None
    assert flagged > len(MESSAGES) // 3  # the injected bare line ends were found


def _stuffed(message: bytes) -> bytes:
    return (b"." if message.startswith(b".") else b"") + message.replace(b"\r\n.", b"\r\n..")


@pytest.mark.parametrize("chunk", range(4))
async def test_data_replies_over_a_real_socket_are_those_of_the_line_by_line_check(data_dir, chunk):
    """Each message in a transaction of its own: a bare line end in the header block is refused
    naming the line exactly as the scan names it; any other message is not refused for it."""
    messages = MESSAGES[chunk::4]
    config = ingress_test_config(data_dir, relay={"local_domains": ["local.test"]})
    async with running_ingress(config) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        assert (await d.reply()).code == 220
        assert (await d.cmd("EHLO client.test")).code == 250
        refused = 0
        for name, message in messages:
            assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
            assert (await d.cmd("RCPT TO:<user@local.test>")).code == 250
            assert (await d.cmd("DATA")).code == 354
            body = message if message.endswith(b"\r\n") else message + b"\r\n"
            r = await d.cmd(_stuffed(body) + b".\r\n")
            problem = reference(D.unstuff(_stuffed(body)))
            if problem is not None:
                expected = R.with_enhanced(R.bare_newline_in_header(problem))
                assert f"{r.code} {r.text}" == expected, name
                refused += 1
            else:
                assert "bare" not in r.text, (name, r)
        assert (await d.cmd("QUIT")).code == 221
        await d.close()
    assert refused > len(messages) // 3


def split_reference(body: bytes, limit: int = D.MAX_LINE) -> bool:
    """The long-line check as it first was: every line split out."""
    return bool(body) and max(map(len, body.split(b"\r\n"))) > limit


def test_the_long_line_check_agrees_with_splitting_on_every_short_octet_string() -> None:
    for limit in range(1, 5):
        for length in range(9):
            for combo in itertools.product((b"\r", b"\n", b"a"), repeat=length):
                body = b"".join(combo)
                assert D.has_long_line(body, limit) == split_reference(body, limit), (body, limit)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(
        st.tuples(st.integers(0, 1003), st.sampled_from([b"x", b"\r", b"\n", b"x\r"])),
        min_size=0,
        max_size=12,
    ),
    ending=st.sampled_from([b"\r\n", b"", b"\r", b"\n"]),
)
def test_the_long_line_check_agrees_with_splitting_on_generated_lines_around_the_limit(lines, ending):
    body = b"\r\n".join((fill * length)[:length] for length, fill in lines) + ending
    assert D.has_long_line(body) == split_reference(body)


def test_the_long_line_check_agrees_with_splitting_on_every_sample_and_corpus_message() -> None:
    for name, message in MESSAGES:
        stuffed = _stuffed(message)
        assert D.has_long_line(stuffed) == split_reference(stuffed), name
        for length in (D.MAX_LINE - 1, D.MAX_LINE, D.MAX_LINE + 1, D.MAX_LINE + 2):
            for at in (0, len(stuffed) // 3, len(stuffed) - 2, len(stuffed)):
                at = stuffed.rfind(b"\r\n", 0, at) + 2 if at else 0  # a line of its own
                body = stuffed[:at] + b"y" * length + b"\r\n" + stuffed[at:]
                assert D.has_long_line(body) == split_reference(body) == (length > D.MAX_LINE), (
                    name,
                    length,
                    at,
                )


@pytest.mark.parametrize("length", [D.MAX_LINE, D.MAX_LINE + 1])
async def test_a_line_over_the_limit_gets_the_same_reply_over_a_real_socket(data_dir, length):
    config = ingress_test_config(data_dir, relay={"local_domains": ["local.test"]})
    async with running_ingress(config) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        assert (await d.reply()).code == 220
        assert (await d.cmd("EHLO client.test")).code == 250
        assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
        assert (await d.cmd("RCPT TO:<user@local.test>")).code == 250
        assert (await d.cmd("DATA")).code == 354
        r = await d.cmd(b"Subject: hi\r\n\r\n" + b"z" * (length - 1) + b"\r\n" + b"." * length + b"\r\n.\r\n")
        if length > D.MAX_LINE:
            assert f"{r.code} {r.text}" == R.with_enhanced(R.LINE_TOO_LONG), r
        else:
            assert r.code == 250, r
        assert (await d.cmd("QUIT")).code == 221
        await d.close()


# -- MAIL / RCPT paths ------------------------------------------------------------------------


def split_path_reference(arg: str) -> tuple[str, str]:
    """``_split_path`` as it was: the bracketed path found character by character."""
    from pipeline.ingress.addresses import AddressError

    arg = arg.strip()
    if not arg.startswith("<"):
        path, _, rest = arg.partition(" ")
        return path, rest
    in_quotes = escaped = False
    for i, ch in enumerate(arg):
        if escaped:
            escaped = False
        elif ch == "\\" and in_quotes:
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch == ">" and not in_quotes:
            return arg[1:i], arg[i + 1 :]
    raise AddressError("syntax", "unbalanced angle brackets")


def _outcome(fn, arg):  # type: ignore[no-untyped-def]
    try:
        return fn(arg)
    except ValueError as exc:
        return (type(exc).__name__, getattr(exc, "kind", None), str(exc))


def test_the_path_split_agrees_with_the_character_scan_on_every_short_string() -> None:
    from pipeline.ingress.addresses import _split_path

    for length in range(7):
        for combo in itertools.product('<>"\\a @', repeat=length):
            arg = "".join(combo)
            assert _outcome(_split_path, arg) == _outcome(split_path_reference, arg), arg


@settings(max_examples=300, deadline=None)
@given(arg=st.text(st.sampled_from('<>"\\ab@.:, =-\t'), max_size=40))
def test_parsed_paths_are_those_of_the_character_scan(arg):
    from pipeline.ingress import addresses as A

    fast = _outcome(lambda a: A.parse_path(a, allow_null=True), arg)
    saved = A._split_path
    A._split_path = split_path_reference
    try:
        slow = _outcome(lambda a: A.parse_path(a, allow_null=True), arg)
    finally:
        A._split_path = saved
    assert fast == slow


# -- the command loop's aiosmtpd log lines ----------------------------------------------------


class AiosmtpdLoop(GatewaySMTP):
    """The session with aiosmtpd's own command loop (and its QUIT), for its ``mail.log`` lines."""

    async def _command_loop(self) -> None:
        await SMTP._handle_client(self)

    smtp_QUIT = SMTP.smtp_QUIT


async def _mail_log_lines(config, caplog, level: int) -> list[str]:  # type: ignore[no-untyped-def]
    caplog.clear()
    async with running_ingress(config) as (_, ingress):
        logging.getLogger("mail.log").setLevel(level)  # (the service sets WARNING at start)
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        assert (await d.reply()).code == 220
        assert (await d.cmd("EHLO client.test")).code == 250
        assert (await d.cmd("NOOP")).code == 250
        assert (await d.cmd("MAIL FROM:<a@shop.example> BODY=8BITMIME")).code == 250
        assert (await d.cmd("QUIT")).code == 221
        assert await d.closed()
        await d.close()
    return [
        re.sub(r"\('127\.0\.0\.1', \d+\)", "PEER", r.getMessage())
        for r in caplog.records
        if r.name == "mail.log" and (">>" in r.getMessage() or "readline" in r.getMessage())
    ]


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING])
async def test_the_command_loop_logs_each_line_as_aiosmtpds_loop_at_every_level(
    data_dir, monkeypatch, caplog, level
):
    caplog.set_level(logging.DEBUG)
    config = ingress_test_config(data_dir, relay={"local_domains": ["local.test"]})
    saved = logging.getLogger("mail.log").level
    try:
        ours = await _mail_log_lines(config, caplog, level)
        monkeypatch.setattr("pipeline.ingress.service.GatewaySMTP", AiosmtpdLoop)
        theirs = await _mail_log_lines(config, caplog, level)
    finally:
        logging.getLogger("mail.log").setLevel(saved)
    assert ours == theirs
    assert len(ours) == {logging.DEBUG: 8, logging.INFO: 4, logging.WARNING: 0}[level], ours


# -- reading DATA -----------------------------------------------------------------------------


def read_reference(stream: bytes, limit: int) -> bytes | str | None:
    """What DATA is by definition: up to the first ``CRLF . CRLF`` (the DATA line's CRLF counts)."""
    end = (b"\r\n" + stream).find(b"\r\n.\r\n")
    if end == -1:
        return None
    body = stream[:end]
    return R.TOO_BIG if limit and len(body) > limit else body


@settings(max_examples=400, deadline=None)
@given(
    stream=st.lists(
        st.sampled_from([b".", b"\r", b"\n", b"a", b"\r\n", b".\r\n", b"\r\n.\r\n"]), max_size=30
    ).map(b"".join),
    cuts=st.lists(st.integers(0, 80), max_size=6),
    limit=st.sampled_from([0, 4, 16]),
    chunk=st.sampled_from([4, 7, 1 << 20]),
)
async def test_reading_data_ends_at_the_first_crlf_dot_crlf_as_by_definition(stream, cuts, limit, chunk):
    import asyncio

    saved = D.DATA_CHUNK
    D.DATA_CHUNK = chunk  # small: the reads that hit the limit without a ".CRLF" are tried too
    try:
        reader = asyncio.StreamReader(limit=512)
        edges = sorted({0, len(stream), *[min(c, len(stream)) for c in cuts]})

        async def feed() -> None:
            for a, b in itertools.pairwise(edges):
                reader.feed_data(stream[a:b])
                await asyncio.sleep(0)
            reader.feed_eof()

        feeder = asyncio.ensure_future(feed())
        got = await D.read_data(reader, limit, lambda: None)
        await feeder
    finally:
        D.DATA_CHUNK = saved
    assert got == read_reference(stream, limit)


@pytest.mark.parametrize("pad", range(-6, 7))
@pytest.mark.parametrize("where", [None, 0, -1])
@pytest.mark.parametrize("octet", [b"\n", b"\r"])
def test_header_blocks_around_the_counted_prefix_agree_with_the_scan(pad, where, octet):
    """Header blocks whose first empty line lies just inside, at and just beyond ``HEADER_PREFIX``
    (long ones are scanned), with no bare line end or one in the first or last header line."""
    line = b"X-Long: " + b"v" * 90
    count = D.HEADER_PREFIX // (len(line) + 2)
    lines = [line] * count
    lines[-1] = b"X-Last: " + b"w" * (D.HEADER_PREFIX - count * (len(line) + 2) + len(line) - 8 + 2 + pad)
    if where is not None:
        lines[where] = lines[where][:10] + octet + lines[where][10:]
    message = b"\r\n".join(lines) + b"\r\n\r\nbody\nwith a bare LF\r\n"
    assert D.header_block_problem(message) == reference(message)
    if where is not None:
        assert reference(message) is not None


def test_a_message_without_an_empty_line_before_its_html_is_scanned_only_up_to_it() -> None:
    """enKod's form: the header block ends at the first line that is not a header field; the body's
    bare line ends (and an empty line deep in it) do not count."""
    head = b"Subject: x\r\nMIME-Version: 1.0\r\n<!DOCTYPE html>\n<html>\r\n"
    for body in (b"", b"x\n" * 5000, b"y\r\n" * 5000 + b"\r\n\r\nz\n"):
        assert D.header_block_problem(head + body) is None
        assert reference(head + body) is None
        bad = b"Subject: x\rBcc: y\r\n" + head + body
        assert D.header_block_problem(bad) == reference(bad) == "bare CR in header line 1"
