"""The byte-preserving MIME tree under :class:`~pipeline.contract.message.Message`.

A message is split into a tree of raw byte ranges (:class:`Part`), without recursing on the
Python stack per nesting level and within the depth/part budget the limits give; a part nobody
edited is emitted from its original bytes, an edited one is re-encoded once in its own charset
and transfer encoding. :class:`Header` keeps each field's raw bytes. Line endings are normalised
to CRLF on parse, so no bare CR or LF ever reaches the next hop.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.header
import email.message
import email.utils
import functools
import re
from collections.abc import Iterator

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
def _content_type_info(ctype: str) -> tuple[str, str | None, str | None]:
    """(type/subtype, boundary, charset) of a Content-Type value. Cached: the standard library's
    parameter parse was most of the cost of a part, and messages repeat the same few values."""
    params = _params(ctype)
    boundary = params.get_param("boundary")
    return params.get_content_type(), boundary if isinstance(boundary, str) else None, params.get_content_charset()


class Part:
    """A MIME entity: its headers, and either a raw body (leaf) or children (multipart).

    The tree is built with an explicit work list, never by recursion on the Python stack: a
    hostile message nesting thousands of multiparts must get a precise refusal (see
    :attr:`depth`), not a ``RecursionError``.
    """

    truncated: str | None  # root only: "depth" or "parts" when parsing stopped at a bound

    def __init__(self, raw: bytes, path: str = "", *, max_depth: int | None = None, max_parts: int | None = None) -> None:
        """Parse ``raw``; with ``max_depth`` / ``max_parts`` stop splitting once past them (the
        rest stays opaque bytes) and say so in :attr:`truncated`, so a bomb costs bounded work."""
        self._parse_node(raw, path or "1", None)
        budget = max_parts if max_parts is not None else -1
        pending: list[Part] = [self] if self._boundary else []
        while pending:
            node = pending.pop()
            if max_depth is not None and node.depth > max_depth:
                self.truncated = "depth"
                continue
            children = node._split(node._boundary, budget)
            if children is None:
                self.truncated = "parts"
                continue
            budget -= len(children) if budget >= 0 else 0
            pending.extend(child for child in children if child._boundary)

    def _parse_node(self, raw: bytes, path: str, parent: Part | None) -> None:
        """Headers and body of this entity only; children are split by the caller's work list."""
        self.path = path
        self.parent = parent
        self.depth: int = 0 if parent is None else parent.depth + 1
        self._raw: bytes | None = raw
        if raw.startswith(CRLF):
            head, body = b"", raw[2:]
        else:
            head, sep, body = raw.partition(CRLF + CRLF)
            if not sep:  # headers only, no body
                head, body = raw.rstrip(b"\r\n") if raw.endswith(CRLF) else raw, b""
            end = _NOT_A_FIELD.search(head)
            if end is not None:
                # No empty line before the body (enKod's documented example): as Postfix's cleanup
                # does, the first line that is not a header field starts the body; serialising
                # puts the missing empty line in.
                head, body, self._raw = head[: end.start()], raw[end.end() :], None
        self.headers: list[Header] = _parse_headers(head)
        self._head_sep = not raw.startswith(CRLF)
        self.body: bytes = body
        self.children: list[Part] | None = None
        self.preamble = b""
        self.epilogue = b""
        self._delims: list[bytes] = []
        self._boundary = b""
        self.truncated = None
        self.content_type, boundary, self.charset = _content_type_info(self.get_header("Content-Type") or "")
        if self.content_type.startswith("multipart/") and boundary:
            self._boundary = boundary.encode("utf-8", "surrogateescape")

    # -- structure -------------------------------------------------------------------------
    def _split(self, boundary: bytes, budget: int = -1) -> list[Part] | None:
        """Cut the body at its delimiters into child entities (not yet split themselves);
        ``None`` (and the part left whole) when there would be more than ``budget`` (>= 0)."""
        # A delimiter is CRLF "--" boundary (or "--" boundary at the very start). The pattern starts
        # with the literal "--boundary" so the regex engine can scan fast (a leading alternation
        # made parsing several times slower); the CRLF before it is checked by hand.
        body = self.body
        pat = re.compile(rb"--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r\n|\Z)")
        matches: list[tuple[int, int, bool]] = []  # (start incl. leading CRLF, end, closing)
        prev_end = 0
        for m in pat.finditer(body):
            start = m.start()
            if start == 0:
                pass
            elif start - 2 >= prev_end and body[start - 2 : start] == CRLF:
                start -= 2
            else:
                continue
            matches.append((start, m.end(), bool(m.group(1))))
            prev_end = m.end()
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
        self.epilogue = self.body[closed_at:] if closed_at is not None else b""
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
        lname = name.lower()
        for h in self.headers:
            if h.name.lower() == lname:
                return h.value
        return None

    @property
    def cte(self) -> str:
        """Content-Transfer-Encoding, lower-case (default ``7bit``)."""
        return (self.get_header("Content-Transfer-Encoding") or "7bit").strip().lower()

    @property
    def is_attachment(self) -> bool:
        disp = (self.get_header("Content-Disposition") or "").split(";")[0].strip().lower()
        return disp == "attachment"

    # -- payload ---------------------------------------------------------------------------
    def payload_bytes(self) -> bytes:
        """The body with its transfer encoding undone."""
        cte = self.cte
        if cte == "base64":
            try:
                return binascii.a2b_base64(self.body)
            except binascii.Error:  # bad padding or a stray character: decode what can be decoded
                data = re.sub(rb"[^A-Za-z0-9+/]", b"", self.body)
                data = data[:-1] if len(data) % 4 == 1 else data  # a lone sixth of a byte holds nothing
                return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
        if cte == "quoted-printable":
            return binascii.a2b_qp(self.body)
        return self.body

    @property
    def codec(self) -> str:
        return self.charset or "us-ascii"

    def text(self) -> str:
        """The decoded text (charset honoured; undecodable bytes survive a round trip)."""
        data = self.payload_bytes()
        try:
            return data.decode(self.codec, "surrogateescape")
        except (LookupError, UnicodeError):  # unknown charset, or one surrogateescape cannot serve (utf-16, idna)
            return data.decode("utf-8", "surrogateescape")

    def _set_text(self, text: str) -> None:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        codec = self.codec
        # HTML keeps its declared charset (its <meta> says so too): characters the charset cannot
        # hold become numeric character references. Plain text has no such escape: it goes utf-8.
        errors = _HTML_ERRORS if self.content_type == "text/html" else "surrogateescape"
        try:
            data = text.encode(codec, errors)
        except (UnicodeError, LookupError):
            data = text.encode("utf-8", "surrogateescape")
            self._set_param("charset", "utf-8")
        cte = self.cte
        if cte == "base64":
            body = base64.encodebytes(data.replace(b"\n", CRLF)).replace(b"\n", CRLF)
        elif cte == "quoted-printable":
            body = binascii.b2a_qp(data, quotetabs=False, istext=True).replace(b"\n", CRLF)
        else:
            longest = max((len(line) for line in data.split(b"\n")), default=0)
            if longest > 998 or (cte == "7bit" and not data.isascii()):
                body = binascii.b2a_qp(data, quotetabs=False, istext=True).replace(b"\n", CRLF)
                self._replace_header("Content-Transfer-Encoding", "quoted-printable")
            else:
                body = data.replace(b"\n", CRLF)
        self.body = body
        self._raw = None

    def _set_param(self, param: str, value: str) -> None:
        current = self.get_header("Content-Type") or "text/plain"
        if not current.isascii() or re.search(r"[\x00-\x08\x0a-\x1f\x7f]", current):
            current = self.content_type  # a malformed field (8-bit, NUL) is rebuilt from its type, not carried on
        msg = _params(current)
        msg.set_param(param, value)
        self._replace_header("Content-Type", str(msg["Content-Type"]))
        self.charset = value if param == "charset" else self.charset

    def _replace_header(self, name: str, value: str) -> None:
        raw = format_header(name, value)
        lname = name.lower()
        for h in self.headers:
            if h.name.lower() == lname:
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
        new.path, new._raw, new._head_sep, new.body = self.path, self._raw, self._head_sep, self.body
        new.parent, new.depth, new._boundary, new.truncated = parent, self.depth, self._boundary, self.truncated
        new.headers = []
        for h in self.headers:
            copy = Header(h.name, h.raw)
            copy._value = h._value
            new.headers.append(copy)
        new.children = None
        new.preamble, new.epilogue, new._delims = self.preamble, self.epilogue, list(self._delims)
        new.content_type, new.charset = self.content_type, self.charset
        return new
