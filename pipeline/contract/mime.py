"""The byte-preserving MIME tree under :class:`~pipeline.contract.message.Message`.

A message is split into a tree of raw byte ranges (:class:`Part`), without recursing on the
Python stack per nesting level and within the depth/part budget the limits give; a part nobody
edited is emitted from its original bytes, an edited one is re-encoded in its own charset and
transfer encoding once, when the bytes are needed (:class:`_PendingText`), however many plugins
edited it. :class:`Structure` finds the same tree without building it (offsets, nothing copied
or decoded): what the limits at DATA read. :class:`Header` keeps each field's raw bytes. Line
endings are normalised to CRLF on parse, so no bare CR or LF ever reaches the next hop.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import email.header
import email.message
import email.utils
import functools
import re
from collections.abc import Iterator, Sequence
from typing import Protocol

from pipeline.contract.headers import (
    _NOT_A_FIELD,
    CRLF,
    Header,
    format_header,
)


def _html_encode_errors(exc: UnicodeError) -> tuple[bytes, int]:
    """Encoding error handler for HTML bodies: bytes that were undecodable on the way in
    (``surrogateescape``) come back as they were; any other character becomes ``&#N;``."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = bytearray()
    for ch in exc.object[exc.start : exc.end]:
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:
            out.append(cp - 0xDC00)
        else:
            out += b"&#%d;" % cp
    return bytes(out), exc.end


_HTML_ERRORS = "smtpgate-html"
codecs.register_error(_HTML_ERRORS, _html_encode_errors)


_CR_LINE_END = re.compile(rb"\r\n?")
"""A CRLF or a lone CR: one pass (``bytes.replace`` with a two-byte pattern was twice as slow)."""


@functools.lru_cache(maxsize=64)
def _newlines_are_bytes(codec: str) -> bool:
    """Whether ``codec`` encodes text character by character (no state) with ``\\r`` and ``\\n``
    as the bytes 13 and 10 and no other character giving either byte: then replacing line ends
    in the encoded bytes is the same as replacing them in the text. UTF-8 and the single-byte
    ASCII-based charsets mail uses; not UTF-16/32, EBCDIC or the stateful ISO-2022 family."""
    try:
        name = codecs.lookup(codec).name
    except LookupError:
        return False
    return name in ("utf-8", "ascii") or name.startswith(("iso8859-", "cp125", "koi8-"))


def _parse_headers(block: bytes) -> list[Header]:
    headers: list[Header] = []
    if not block:
        return headers
    for line in block.split(CRLF):
        if line[:1] in (b" ", b"\t") and headers:
            prev = headers[-1]
            prev.raw = prev.raw + CRLF + line
            continue
        name, sep, _ = line.partition(b":")
        headers.append(Header(name.decode("ascii", "replace").strip() if sep else "", line))
    return headers


def _params(content_type: str) -> email.message.Message:
    m = email.message.Message()
    m["Content-Type"] = content_type
    return m


@functools.lru_cache(maxsize=256)
def _content_type_info(ctype: str) -> tuple[str, bytes, str | None]:
    """(type/subtype, boundary of a multipart or ``b""``, charset) of a Content-Type value. Cached:
    the standard library's parameter parse was most of the cost of a part, and messages repeat
    the same few values."""
    params = _params(ctype)
    content_type, boundary = params.get_content_type(), params.get_param("boundary")
    if content_type.startswith("multipart/") and isinstance(boundary, str) and boundary:
        return content_type, boundary.encode("utf-8", "surrogateescape"), params.get_content_charset()
    return content_type, b"", params.get_content_charset()


def _header_value(headers: list[Header], name: str) -> str | None:
    """The decoded value of the first field called ``name`` (any case)."""
    lname = name.lower()
    for h in headers:
        if h.lname == lname:
            return h.value
    return None


def _mime_fields(headers: list[Header]) -> tuple[str | None, str | None, str | None]:
    """The decoded values of the first Content-Type, Content-Disposition and
    Content-Transfer-Encoding fields (what the structure scan reads of each entity): one pass,
    as three :func:`_header_value` calls would find them."""
    ctype = disposition = cte = None
    for h in headers:
        lname = h.lname
        if not lname.startswith("content-"):
            continue
        if lname == "content-type":
            if ctype is None:
                ctype = h.value
        elif lname == "content-disposition":
            if disposition is None:
                disposition = h.value
        elif lname == "content-transfer-encoding" and cte is None:
            cte = h.value
    return ctype, disposition, cte


def _cte(value: str | None) -> str:
    return (value or "7bit").strip().lower()


def _is_attachment(disposition: str | None) -> bool:
    return (disposition or "").split(";")[0].strip().lower() == "attachment"


def _entity_spans(buf: bytes, start: int, end: int) -> tuple[int, int, bool]:
    """Where the header block of the entity ``buf[start:end]`` ends and its body starts (absolute
    offsets), and whether an empty line separates them (``False``: the body starts at the first
    line that is not a header field). Offsets, so the structure scan copies nothing."""
    if buf.startswith(CRLF, start, end):  # no header fields at all
        return start, start + 2, True
    sep = buf.find(CRLF + CRLF, start, end)
    if sep >= 0:
        head_end, body_start = sep, sep + 4
    else:  # headers only, no body
        head_end = body_start = end
        if buf.endswith(CRLF, start, end):
            while head_end > start and buf[head_end - 1] in (10, 13):
                head_end -= 1
    bad = _NOT_A_FIELD.search(buf, start, head_end)
    if bad is not None:
        return bad.start(), bad.end(), False
    return head_end, body_start, True


def _delimiters(buf: bytes, boundary: bytes, start: int, end: int) -> list[tuple[int, int, bool]]:
    """The delimiter lines of a multipart body ``buf[start:end]``: (start including the CRLF
    before it, end including its line break, closing?), absolute offsets.

    A delimiter is ``--boundary`` (``--`` more when closing), optional blanks, then CRLF or the
    end of the body, at the very start of the body or after a CRLF not inside the previous
    delimiter. Found with ``bytes.find`` on the literal ``--boundary`` (a regex tried at every
    position was most of the parse) and checked by hand.
    """
    dash = b"--" + boundary
    matches: list[tuple[int, int, bool]] = []
    prev_end = start
    pos = buf.find(dash, start, end)
    while pos >= 0:
        q = pos + len(dash)
        closing = buf.startswith(b"--", q, end)
        if closing:
            q += 2
        while q < end and buf[q] in (32, 9):
            q += 1
        if q == end:
            stop = q
        elif buf.startswith(CRLF, q, end):
            stop = q + 2
        else:  # not a delimiter line: look again one octet on
            pos = buf.find(dash, pos + 1, end)
            continue
        if pos == start:
            matches.append((pos, stop, closing))
            prev_end = stop
        elif pos - 2 >= prev_end and buf.startswith(CRLF, pos - 2, pos):
            matches.append((pos - 2, stop, closing))
            prev_end = stop
        pos = buf.find(dash, stop, end)
    return matches


class _Splittable(Protocol):
    depth: int
    _boundary: bytes

    def _split(self, boundary: bytes, budget: int = -1) -> Sequence[_Splittable] | None: ...


def _split_all(root: _Splittable, max_depth: int | None, max_parts: int | None) -> str | None:
    """Split ``root`` and every multipart below it with an explicit work list (never recursion on
    the Python stack: a hostile message nesting thousands of multiparts must get a precise
    refusal, not a ``RecursionError``). Returns ``"depth"`` or ``"parts"`` when splitting stopped
    at a bound. Shared by :class:`Part` and the structure scan (:func:`scan_structure`), so the
    limits checked at DATA see exactly the tree the worker will build."""
    truncated = None
    budget = max_parts if max_parts is not None else -1
    pending: list[_Splittable] = [root] if root._boundary else []
    while pending:
        node = pending.pop()
        if max_depth is not None and node.depth > max_depth:
            truncated = "depth"
            continue
        children = node._split(node._boundary, budget)
        if children is None:
            truncated = "parts"
            continue
        budget -= len(children) if budget >= 0 else 0
        pending.extend(child for child in children if child._boundary)
    return truncated


def decode_payload(body: bytes, cte: str) -> bytes:
    """``body`` with the transfer encoding ``cte`` (lower-case) undone; bad base64 decoded as far as it goes."""
    if cte == "base64":
        try:
            return binascii.a2b_base64(body)
        except binascii.Error:  # bad padding or a stray character: decode what can be decoded
            data = re.sub(rb"[^A-Za-z0-9+/]", b"", body)
            data = data[:-1] if len(data) % 4 == 1 else data  # a lone sixth of a byte holds nothing
            return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
    if cte == "quoted-printable":
        return binascii.a2b_qp(body)
    return body


def _common_prefix(a: bytes, b: bytes) -> int:
    """How many leading bytes ``a`` and ``b`` share: compared 4 KB at a time by ``startswith``
    (C speed, no Python loop per byte or line), the differing block narrowed down by halving."""
    n = min(len(a), len(b))
    lo = 0
    while lo < n:
        hi = min(lo + 4096, n)
        if not a.startswith(b[lo:hi], lo):
            while hi - lo > 1:  # a[:lo] == b[:lo], and they differ before hi
                mid = (lo + hi) // 2
                if a.startswith(b[lo:mid], lo):
                    lo = mid
                else:
                    hi = mid
            return lo
        lo = hi
    return n


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """How many trailing bytes ``a`` and ``b`` share, at most ``limit`` (as :func:`_common_prefix`)."""
    la, lb = len(a), len(b)
    lo = 0
    while lo < limit:
        hi = min(lo + 4096, limit)
        if not a.endswith(b[lb - hi : lb - lo], 0, la - lo):
            while hi - lo > 1:  # the last lo bytes are equal, the last hi are not
                mid = (lo + hi) // 2
                if a.endswith(b[lb - mid : lb - lo], 0, la - lo):
                    lo = mid
                else:
                    hi = mid
            return lo
        lo = hi
    return limit


def _changed_lines(new: bytes, old: bytes, starts: list[int]) -> tuple[int, int]:
    """``(i, j)``: ``old``'s lines ``[i, j)`` (``starts``: where each begins) hold every byte in
    which ``new`` differs from ``old``; the lines before ``i`` end before the first differing byte,
    and the line break before line ``j`` is in the common suffix. Two block comparisons, no loop
    per line: a recipient's copy differs from the first only where its links and pixel are."""
    i = bisect.bisect_right(starts, _common_prefix(new, old)) - 1
    same_end = _common_suffix(new, old, min(len(new), len(old)) - starts[i])
    return i, bisect.bisect_right(starts, len(old) - same_end)


def _crlf_only(data: bytes, lf: bytes) -> bool:
    """Whether every line end of ``data`` is a CRLF, given ``lf``, ``data`` with each CRLF or lone
    CR made an LF: then ``lf`` is one byte shorter per line end. A line end near the middle is
    looked at first, so a text whose lines end in LF (what an HTML serialiser writes between the
    original's CRLF doctype and end) is told apart without counting."""
    middle = data.find(b"\n", len(data) // 2)
    if middle > 0 and data[middle - 1] != 13:
        return False
    return len(lf) + lf.count(b"\n") == len(data)


_QP_PLAIN = b"\t\n" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
"""The bytes :func:`qp_encode_crlf` encodes itself (any other byte: ``b2a_qp`` does it all)."""
_QP_ASCII = bytes(range(0x80))
_QP_BYTE = [bytes((b,)) for b in range(0x100)]
_QP_ESCAPE = [b"=%02X" % b for b in range(0x100)]
_QP_REPLACE_MAX = 12
"""Up to this many distinct high byte values are escaped by one ``bytes.replace`` each (UTF-8 text
in a Latin script, a few symbols and no-break spaces); more by one regex over the text."""
_QP_HIGH = re.compile(rb"[\x80-\xff]+")
# One output line of a long encoded line: ``b2a_qp`` fills a line while it stays within 75
# columns and breaks it (``=``, CRLF) before the token that would not fit, an escape (``=XX``)
# that would reach column 76 or a literal byte that would, unless that byte ends the line. So a
# piece is 75 bytes, or 73 or 74 when an escape starts at column 74 or 75, and is only cut off
# when more than one literal byte (or an escape) follows it; else the line's rest.
_QP_PIECE = re.compile(rb".{73}(?:[^=]{2}(?=..)|(?==)|[^=](?==))|.+", re.DOTALL)
_QP_BLANK_END = (b" ", b"\t")
_QP_BLANK = {32: b"=20", 9: b"=09"}


def _qp_escape_high(m: re.Match[bytes]) -> bytes:
    return b"=" + binascii.hexlify(m.group(), b"=").upper()


def _qp_line(line: bytes) -> bytes:
    """One escaped line that is long or ends with a blank, as ``b2a_qp`` writes it (CRLF soft breaks)."""
    if len(line) >= 76:
        line = b"=\r\n".join(_QP_PIECE.findall(line))
    last = line[-1]
    if last in _QP_BLANK:  # a blank before a line break is escaped after the line was cut
        line = line[:-1] + _QP_BLANK[last]
    return line


def qp_encode_crlf(data: bytes) -> bytes:
    """``binascii.b2a_qp(data, quotetabs=False, istext=True)`` with CRLF line ends, byte for byte.

    ``b2a_qp`` walks the data twice a byte at a time (0.42 ms for a 50 KB HTML part). For text
    of printable ASCII, tabs and newlines (and a few UTF-8 bytes) the same output is built from
    whole-text C operations: every ``=`` becomes ``=3D`` and each run of high bytes its escapes,
    lines that fit are kept as they are, and only the long ones (and those ending with a blank)
    are cut by one regex each (0.30 ms). Anything rarer (control bytes, a CR, a line that is a
    lone ``.``, a blank at the very end, mostly non-ASCII text) goes to ``b2a_qp`` itself."""
    if data.translate(None, _QP_PLAIN) or data.endswith(_QP_BLANK_END):
        return binascii.b2a_qp(data, quotetabs=False, istext=True).replace(b"\n", CRLF)
    escaped = data.replace(b"=", b"=3D")
    if not escaped.isascii():
        high = escaped.translate(None, _QP_ASCII)
        if len(high) > len(escaped) >> 6:
            return binascii.b2a_qp(data, quotetabs=False, istext=True).replace(b"\n", CRLF)
        distinct = set(high)
        if len(distinct) <= _QP_REPLACE_MAX:  # a whole-text replace per byte value. The regex's
            # search tries every position (0.8 ms over 50 KB, twice what b2a_qp costs for all of
            # it): the corpus's postmark-example.eml part now encodes in 0.18 ms, not 0.45
            for byte in distinct:
                escaped = escaped.replace(_QP_BYTE[byte], _QP_ESCAPE[byte])
        else:
            escaped = _QP_HIGH.sub(_qp_escape_high, escaped)
    lines = escaped.split(b"\n")
    if b"." in lines:  # b2a_qp escapes a lone "." line (an SMTP end of data)
        return binascii.b2a_qp(data, quotetabs=False, istext=True).replace(b"\n", CRLF)
    blank = _QP_BLANK_END
    return CRLF.join(
        [line if len(line) < 76 and line[-1:] not in blank else _qp_line(line) for line in lines]
    )


class _QPLines:
    """Quoted-printable encodings (CRLF line ends) of one part's successive edits, shared by the
    copies of a message: each copy's HTML differs from the first copy's only on the lines its
    links and pixel are on, and quoted-printable is line-local, so only those lines are encoded
    again. The lines before the first differing byte and after the last one are found by two
    block comparisons and taken from the first copy's encoding as one slice each; lines between
    them that are equal, by position, to the first copy's reuse their encoding. Kept only from
    the second encode on: a message with one recipient pays nothing for it."""

    __slots__ = ("first", "base")

    def __init__(self) -> None:
        self.first: tuple[bytes, bytes] | None = None  # (data, CRLF encoding) of the first encode
        # the first encode's lines, each one's encoding (LF line ends, without its hard break),
        # and where each line starts in the data and in the CRLF encoding
        self.base: tuple[list[bytes], list[bytes], list[int], list[int]] | None = None

    def encode(self, data: bytes) -> bytes:
        """``binascii.b2a_qp(data, quotetabs=False, istext=True)``, byte for byte (``data`` has no CR)."""
        return self.encode_crlf(data).replace(CRLF, b"\n")

    def encode_crlf(self, data: bytes) -> bytes:
        """:meth:`encode` with every ``\\n`` of the result a CRLF, as the part goes on the wire.

        Per line, ``b2a_qp`` only depends on the line and on whether a newline follows it, so
        each line but the last is encoded as ``line + "\\n"`` would be, and a run of whole lines
        as that run alone would be; a hard line break in the output is a ``\\n`` not after ``=``
        (a literal ``=`` is always ``=3D``)."""
        if self.first is None:
            out = qp_encode_crlf(data)
            self.first = (data, out)
            return out
        first, out = self.first
        if data == first:
            return out
        if self.base is None:
            lines = first.split(b"\n")
            chunks = out.replace(b"=\r\n", b"=\0").split(CRLF)
            if len(lines) != len(chunks):
                self.base = ([], [], [], [])
            else:
                starts, enc_starts = [0], [0]
                for line, chunk in zip(lines[:-1], chunks[:-1], strict=True):
                    starts.append(starts[-1] + len(line) + 1)
                    enc_starts.append(
                        enc_starts[-1] + len(chunk) + chunk.count(b"\0") + 2
                    )  # a soft break is 3 bytes
                self.base = (lines, [c.replace(b"=\0", b"=\n") for c in chunks], starts, enc_starts)
        lines, _, starts, enc_starts = self.base
        if not lines:
            return qp_encode_crlf(data)
        i, j = _changed_lines(data, first, starts)  # the first copy's lines holding every change
        n = len(lines)
        tail_start = len(data) - (len(first) - starts[j]) if j < n else len(data)
        middle = self._middle(data[starts[i] : tail_start], i, j)
        view = memoryview(out)  # (joined without copying the two slices first)
        return b"".join((view[: enc_starts[i]], middle, view[enc_starts[j] :] if j < n else b""))

    def _middle(self, middle: bytes, i: int, j: int) -> bytes:
        """The CRLF encoding of ``middle``, the data that stands where the first copy's lines
        ``[i, j)`` were (ending with their last line break, unless ``j`` is past the last line)."""
        lines, chunks, _, _ = self.base or ([], [], [], [])
        ours = middle.split(b"\n")
        last: bytes | None = None
        if j < len(lines):
            if len(ours) - 1 != j - i:  # lines added or removed: no line matches by position
                return binascii.b2a_qp(middle, quotetabs=False, istext=True).replace(b"\n", CRLF)
            ours.pop()  # (empty: what follows the last line break)
        else:
            if len(ours) != j - i:
                return binascii.b2a_qp(middle, quotetabs=False, istext=True).replace(b"\n", CRLF)
            last = ours.pop()
        encoded = [
            chunk if line == base else None
            for line, base, chunk in zip(ours, lines[i:j], chunks[i:j], strict=False)
        ]
        changed = [k for k, chunk in enumerate(encoded) if chunk is None]
        if changed:  # one b2a_qp call for all of them (a copy with 200 links has 200 such lines)
            fresh = binascii.b2a_qp(b"\n".join([ours[k] for k in changed]) + b"\n", False, True)
            parts = fresh.replace(b"=\n", b"=\0").split(b"\n")
            if len(parts) != len(changed) + 1:  # (cannot happen: one hard break per line)
                return binascii.b2a_qp(middle, quotetabs=False, istext=True).replace(b"\n", CRLF)
            for k, part in zip(changed, parts, strict=False):
                encoded[k] = part.replace(b"=\0", b"=\n")
        if last is None:
            encoded.append(b"")
        else:
            encoded.append(chunks[-1] if last == lines[-1] else binascii.b2a_qp(last, False, True))
        return b"\n".join(encoded).replace(b"\n", CRLF)  # type: ignore[arg-type]  # (no None left)


class _PendingText:
    """An edited part's new content, charset-encoded (LF line endings), and its transfer encoding
    done at most once. Shared by the copies of a message (it never changes, the encoded form and
    the decoded text are only filled in), so copies that leave the part alone encode it once
    between them, and the plugins of every copy that read it before editing it decode it once."""

    __slots__ = ("data", "mode", "_encoded", "lines", "text", "crlf")

    def __init__(
        self, data: bytes, mode: str, lines: _QPLines | None = None, crlf: bytes | None = None
    ) -> None:
        self.data = data
        self.mode = mode  # "base64", "quoted-printable" or "identity"
        self._encoded: bytes | None = None
        self.lines = lines if lines is not None else _QPLines()  # shared with the edits before it
        self.text: tuple[str, str] | None = None  # (codec, what Part.text() gave for it)
        self.crlf = crlf  # data with CRLF line ends (only for data without CR): the payload

    def with_lf(self, new: bytes) -> tuple[bytes, bool]:
        """``new`` with each CRLF or lone CR made an LF, as ``_CR_LINE_END.sub`` gives it, for
        ``new`` read from this edit's CRLF form (``self.crlf`` must be set) and then edited; and
        whether every line end of ``new`` was a CRLF (then it is the result's CRLF form).

        The lines before the first byte that differs from ``self.crlf`` and after the last one
        are this edit's own LF lines: two block comparisons and two slices of ``self.data``; only
        the lines between are rewritten (a recipient's links and pixel, not the whole part). The
        two line starts are found around the differing bytes (``rfind``/``find`` of the LF and a
        count of the LFs before them, all C scans), not from a table of every line of the part:
        building that table was most of a single-recipient message's cost here."""
        old = self.crlf
        assert old is not None
        lines = len(old) - len(self.data)  # line breaks in old (each LF of self.data is a CRLF there)

        def in_data(pos: int) -> int:  # the offset in self.data of a line start in old
            if pos <= len(old) // 2:  # one CR less per line break before it (counted on the shorter side)
                return pos - old.count(b"\n", 0, pos)
            return pos - (lines - old.count(b"\n", pos))

        prefix = _common_prefix(new, old)
        start = old.rfind(b"\n", 0, prefix) + 1  # the first changed line's start in old
        same_end = _common_suffix(new, old, min(len(new), len(old)) - start)
        after = old.find(b"\n", len(old) - same_end)  # the line break ending the last changed line
        rest: bytes | memoryview = b""
        if after < 0:  # the change reaches into the last line: it is rewritten to the end
            middle = new[start:]
        else:
            middle = new[start : len(new) - (len(old) - after - 1)]
            rest = memoryview(self.data)[in_data(after + 1) :]
        start_lf = in_data(start)
        crlfs = middle.count(CRLF)
        only_crlf = middle.count(b"\n") == crlfs == middle.count(b"\r")
        view = memoryview(self.data)  # (joined without copying the two slices first)
        return b"".join((view[:start_lf], _CR_LINE_END.sub(b"\n", middle), rest)), only_crlf

    def encoded(self) -> bytes:
        if self._encoded is None:
            data = self.data
            if self.mode == "base64":
                self._encoded = base64.encodebytes(data.replace(b"\n", CRLF)).replace(b"\n", CRLF)
            elif self.mode == "quoted-printable":
                if b"\r" in data:  # (only from a charset like utf-16: text has no CR left)
                    self._encoded = binascii.b2a_qp(data, quotetabs=False, istext=True).replace(b"\n", CRLF)
                else:
                    self._encoded = self.lines.encode_crlf(data)
            else:
                self._encoded = data.replace(b"\n", CRLF)
        return self._encoded


class Entity:
    """One entity of a message as the structure scan finds it: located by offsets in the
    message's bytes (nothing copied, nothing decoded), with what the limits at DATA look at."""

    __slots__ = (
        "_buf",
        "_end",
        "_boundary",
        "depth",
        "content_type",
        "is_attachment",
        "cte",
        "body_start",
        "children",
        "intact",
    )

    def __init__(self, buf: bytes, start: int, end: int, depth: int) -> None:
        head_end, self.body_start, self.intact = _entity_spans(buf, start, end)
        headers = _parse_headers(buf[start:head_end])
        self._buf, self._end, self.depth = buf, end, depth
        ctype, disposition, cte = _mime_fields(headers)
        self.content_type, self._boundary, _ = _content_type_info(ctype or "")
        self.is_attachment = _is_attachment(disposition)
        self.cte = _cte(cte)
        self.children: list[Entity] | None = None

    @property
    def is_multipart(self) -> bool:
        return self.children is not None

    @property
    def body_size(self) -> int:
        """Octets of the (still transfer-encoded) body."""
        return self._end - self.body_start

    def body(self) -> bytes:
        """The (still transfer-encoded) body: a copy, made only when asked for."""
        return self._buf[self.body_start : self._end]

    def payload_bytes(self) -> bytes:
        """The body with its transfer encoding undone (as :meth:`Part.payload_bytes`)."""
        return decode_payload(self.body(), self.cte)

    def _split(self, boundary: bytes, budget: int = -1) -> list[Entity] | None:
        """As :meth:`Part._split`, on offsets."""
        matches = _delimiters(self._buf, boundary, self.body_start, self._end)
        if not matches:
            return []
        if 0 <= budget < len(matches) - 1:
            return None
        children: list[Entity] = []
        for i, (_, end, closing) in enumerate(matches):
            if closing:
                break
            stop = matches[i + 1][0] if i + 1 < len(matches) else self._end
            children.append(Entity(self._buf, end, stop, self.depth + 1))
        self.children = children
        return children


class Structure:
    """The MIME structure of a message without building its tree: what :class:`Part` would
    split, under the same bounds (:func:`_split_all`), as :class:`Entity` records."""

    def __init__(self, root: Part, max_depth: int | None = None, max_parts: int | None = None) -> None:
        """Scan the body of ``root``, as parsed (split or not: splitting leaves it as it was)."""
        body = root.body
        entity = Entity.__new__(Entity)
        entity._buf, entity._end, entity.depth, entity.body_start, entity.intact = body, len(body), 0, 0, True
        entity.content_type, entity._boundary = root.content_type, root._boundary
        entity.is_attachment, entity.cte, entity.children = root.is_attachment, root.cte, None
        self.root = entity
        self.truncated = _split_all(entity, max_depth, max_parts)

    def walk(self) -> Iterator[Entity]:
        """Every entity, depth first, in the order :meth:`Part.walk` gives."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            if node.children:
                stack.extend(reversed(node.children))

    @property
    def repairs_children(self) -> bool:
        """Whether serialising an edited root would rewrite a child (one without the empty line
        after its header fields): then the tree must be built to serialise."""
        return any(not child.intact for child in self.root.children or ())


class Part:
    """A MIME entity: its headers, and either a raw body (leaf) or children (multipart).

    The tree is built with an explicit work list, never by recursion on the Python stack: a
    hostile message nesting thousands of multiparts must get a precise refusal (see
    :attr:`depth`), not a ``RecursionError``.
    """

    truncated: str | None  # root only: "depth" or "parts" when parsing stopped at a bound

    def __init__(
        self,
        raw: bytes,
        path: str = "",
        *,
        max_depth: int | None = None,
        max_parts: int | None = None,
        split: bool = True,
    ) -> None:
        """Parse ``raw``; with ``max_depth`` / ``max_parts`` stop splitting once past them (the
        rest stays opaque bytes) and say so in :attr:`truncated`, so a bomb costs bounded work.
        ``split=False`` parses this entity's own header block only (:meth:`split_tree` later)."""
        self._parse_node(raw, path or "1", None)
        if split:
            self.split_tree(max_depth, max_parts)

    def split_tree(self, max_depth: int | None = None, max_parts: int | None = None) -> None:
        """Split this (root) entity into its MIME tree, within the depth/part budget."""
        self.truncated = _split_all(self, max_depth, max_parts)

    def _parse_node(self, raw: bytes, path: str, parent: Part | None) -> None:
        """Headers and body of this entity only; children are split by the caller's work list."""
        self.path = path
        self.parent = parent
        self.depth: int = 0 if parent is None else parent.depth + 1
        self._raw: bytes | None = raw
        head_end, body_start, intact = _entity_spans(raw, 0, len(raw))
        head, body = raw[:head_end], raw[body_start:]
        if not intact:
            # No empty line before the body (enKod's documented example): as Postfix's cleanup
            # does, the first line that is not a header field starts the body; serialising
            # puts the missing empty line in.
            self._raw = None
        self.headers: list[Header] = _parse_headers(head)
        self._head_sep = not raw.startswith(CRLF)
        self._body: bytes = body
        self._edit: _PendingText | None = None
        self.children: list[Part] | None = None
        self.preamble = b""
        self.epilogue = b""
        self._delims: list[bytes] = []
        self.truncated = None
        self.content_type, self._boundary, self.charset = _content_type_info(
            self.get_header("Content-Type") or ""
        )

    # -- structure -------------------------------------------------------------------------
    def _split(self, boundary: bytes, budget: int = -1) -> list[Part] | None:
        """Cut the body at its delimiters into child entities (not yet split themselves);
        ``None`` (and the part left whole) when there would be more than ``budget`` (>= 0)."""
        body = self.body
        matches = _delimiters(body, boundary, 0, len(body))
        if not matches:
            return []  # not really multipart: keep as an opaque leaf
        if 0 <= budget < len(matches) - 1:
            return None
        self.preamble = body[: matches[0][0]]
        children: list[Part] = []
        delims: list[bytes] = []
        closed_at: int | None = None
        for i, (start, end, closing) in enumerate(matches):
            delims.append(body[start:end])
            if closing:  # closing delimiter: what follows is the epilogue
                closed_at = end
                break
            stop = matches[i + 1][0] if i + 1 < len(matches) else len(body)
            child = Part.__new__(Part)
            child._parse_node(body[end:stop], f"{self.path}.{len(children) + 1}", self)
            children.append(child)
        self.epilogue = body[closed_at:] if closed_at is not None else b""
        self.children = children
        self._delims = delims
        return children

    @property
    def is_multipart(self) -> bool:
        return self.children is not None

    def walk(self) -> Iterator[Part]:
        """This part and every part below it, depth first (an explicit stack: any depth)."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            if node.children:
                stack.extend(reversed(node.children))

    # -- headers ---------------------------------------------------------------------------
    def get_header(self, name: str) -> str | None:
        return _header_value(self.headers, name)

    @property
    def cte(self) -> str:
        """Content-Transfer-Encoding, lower-case (default ``7bit``)."""
        return _cte(self.get_header("Content-Transfer-Encoding"))

    @property
    def is_attachment(self) -> bool:
        return _is_attachment(self.get_header("Content-Disposition"))

    # -- payload ---------------------------------------------------------------------------
    @property
    def body(self) -> bytes:
        """The body as on the wire (transfer-encoded); an edited part is encoded on first use."""
        edit = self._edit
        return self._body if edit is None else edit.encoded()

    @body.setter
    def body(self, value: bytes) -> None:
        self._body, self._edit = value, None

    def payload_bytes(self) -> bytes:
        """The body with its transfer encoding undone."""
        edit = self._edit
        if edit is not None and edit.crlf is not None:
            return edit.crlf
        if edit is not None and b"\r" not in edit.data:
            # Decoding the encoded form gives these bytes back exactly (base64 and quoted-printable
            # round-trip any CR-free data; tests/test_message.py checks it), so skip both steps.
            edit.crlf = edit.data.replace(b"\n", CRLF)  # (kept: the next edit is compared with it)
            return edit.crlf
        return decode_payload(self.body, self.cte)

    @property
    def codec(self) -> str:
        return self.charset or "us-ascii"

    def text(self) -> str:
        """The decoded text (charset honoured; undecodable bytes survive a round trip).

        For an edit not yet encoded the text is kept with it: every copy's click tracking and
        open pixel read the part the transform left, and decoding it for each was a copy's
        tenth of a millisecond (kept only where it depends on the data and charset alone)."""
        edit, codec = self._edit, self.codec
        if edit is not None and edit.text is not None and edit.text[0] == codec:
            return edit.text[1]
        data = self.payload_bytes()
        try:
            text = data.decode(codec, "surrogateescape")
        except (LookupError, UnicodeError):
            # an unknown charset, or one surrogateescape cannot serve (utf-16, idna)
            text = data.decode("utf-8", "surrogateescape")
        if edit is not None and b"\r" not in edit.data:  # (the transfer encoding plays no part)
            edit.text = (codec, text)
        return text

    def _set_text(self, text: str) -> None:
        """Record ``text`` as this part's new content, charset-encoded now (a charset change is
        visible at once) but transfer-encoded only when the bytes are needed (:attr:`body`): the
        HTML plugins edit the same part one after another, and encoding after each edit was a
        tenth of a worker's time."""
        codec = self.codec
        # Line ends become LF. In a charset where a CR or LF byte only ever stands for that
        # character this is done on the encoded bytes (several times cheaper than on the str).
        crlf = "\r" in text
        if crlf and not _newlines_are_bytes(codec):
            text, crlf = text.replace("\r\n", "\n").replace("\r", "\n"), False
        # HTML keeps its declared charset (its <meta> says so too): characters the charset cannot
        # hold become numeric character references. Plain text has no such escape: it goes utf-8.
        errors = _HTML_ERRORS if self.content_type == "text/html" else "surrogateescape"
        lossless = False  # whether decoding the bytes gives this very text back
        try:
            try:
                data, lossless = text.encode(codec), True
            except UnicodeEncodeError:
                data = text.encode(codec, errors)
        except (UnicodeError, LookupError):
            data = text.encode("utf-8", "surrogateescape")
            self._set_param("charset", "utf-8")
        before, wire = self._edit, None
        if crlf and before is not None and before.crlf is not None:
            lf, only_crlf = before.with_lf(data)  # the text a plugin read (text()) and edited
            wire = data if only_crlf else None  # the payload, as payload_bytes() would give it
            data = lf
        elif crlf:
            lf = _CR_LINE_END.sub(b"\n", data)
            if _crlf_only(data, lf):
                wire = data  # the payload as it is: the next plugin's text() is this text, not decoded again
            data = lf
        cte = self.cte
        if cte == "base64":
            mode = "base64"
        elif cte == "quoted-printable":
            mode = "quoted-printable"
        else:
            longest = max((len(line) for line in data.split(b"\n")), default=0)
            if longest > 998 or (cte == "7bit" and not data.isascii()):
                mode = "quoted-printable"
                self._replace_header("Content-Transfer-Encoding", "quoted-printable")
            else:
                mode = "identity"
        self._edit = _PendingText(data, mode, before.lines if before is not None else None, wire)
        if wire is not None and lossless:
            # text() would decode the payload back to this text: the next plugin gets this very
            # object (and the scan rewrite_html remembered for it, found without hashing it again)
            self._edit.text = (self.codec, text)
        self._body = b""
        self._raw = None

    def _materialize(self) -> None:
        """Transfer-encode a pending edit now (as every edit did before encoding was deferred)."""
        if self._edit is not None:
            self._body, self._edit = self._edit.encoded(), None

    def _set_param(self, param: str, value: str) -> None:
        current = self.get_header("Content-Type") or "text/plain"
        if not current.isascii() or re.search(r"[\x00-\x08\x0a-\x1f\x7f]", current):
            # a malformed field (8-bit, NUL) is rebuilt from its type, not carried on
            current = self.content_type
        msg = _params(current)
        msg.set_param(param, value)
        self._replace_header("Content-Type", str(msg["Content-Type"]))
        self.charset = value if param == "charset" else self.charset

    def _replace_header(self, name: str, value: str) -> None:
        raw = format_header(name, value)
        lname = name.lower()
        for h in self.headers:
            if h.lname == lname:
                h.raw, h._value = raw, None
                break
        else:
            self.headers.append(Header(name, raw))
        self._raw = None

    # -- serialisation ---------------------------------------------------------------------
    def as_bytes(self) -> bytes:
        if self._raw is not None:
            return self._raw
        # Post-order over the edited subtrees with an explicit stack (no recursion per level):
        # each node's bytes are built once its children's are known.
        out: dict[int, bytes] = {}
        stack: list[tuple[Part, bool]] = [(self, False)]
        while stack:
            node, ready = stack.pop()
            if node._raw is not None:
                out[id(node)] = node._raw
            elif ready or node.children is None:
                out[id(node)] = node._assemble([out.pop(id(c)) for c in node.children or ()])
            else:
                stack.append((node, True))
                stack.extend((c, False) for c in node.children)
        return out[id(self)]

    def _assemble(self, children: list[bytes]) -> bytes:
        out = [CRLF.join(h.raw for h in self.headers)]
        if self.headers:
            out.append(CRLF + CRLF)
        elif not self._head_sep or self.body or self.children is not None:
            out.append(CRLF)  # no header fields: the body still starts after an empty line
        if self.children is not None:
            out.append(self.preamble)
            for delim, child in zip(self._delims, children, strict=False):
                out.append(delim)
                out.append(child)
            out.extend(self._delims[len(self.children) :])
            out.append(self.epilogue)
        else:
            out.append(self.body)
        return b"".join(out)

    def _invalidate(self) -> None:
        self._raw = None

    def clone(self) -> Part:
        """An independent copy of this subtree, without re-parsing: the byte strings are shared
        (they are immutable), headers and children are copied. Only the parser's own attributes
        are carried over, exactly what parsing :meth:`as_bytes` again would give."""
        root = self._clone_node(None)
        stack = [(self, root)]
        while stack:
            old, new = stack.pop()
            if old.children is not None:
                new.children = [c._clone_node(new) for c in old.children]
                stack.extend(zip(old.children, new.children, strict=True))
        return root

    def _clone_node(self, parent: Part | None) -> Part:
        new = Part.__new__(Part)
        new.path, new._raw, new._head_sep = self.path, self._raw, self._head_sep
        new._body, new._edit = self._body, self._edit
        new.parent, new.depth, new._boundary, new.truncated = (
            parent,
            self.depth,
            self._boundary,
            self.truncated,
        )
        new.headers = []
        for h in self.headers:
            copy = Header(h.name, h.raw)
            copy._value = h._value
            new.headers.append(copy)
        new.children = None
        new.preamble, new.epilogue, new._delims = self.preamble, self.epilogue, list(self._delims)
        new.content_type, new.charset = self.content_type, self.charset
        return new
