"""The message editing API: parse once, edit through methods that record who changed what, serialise once.

Why not ``email.message``: re-serialising with the standard library refolds headers and can
change parts nobody touched. Here the message is split into a tree of raw byte ranges; a part
that no plugin edited is emitted from its original bytes, so attachments and untouched
alternatives come out byte-identical. Only edited parts are re-encoded, in their own charset
and transfer encoding.

Line endings are normalised to CRLF on parse: a bare CR or LF relayed to the next hop is the
raw material of SMTP smuggling, so nothing downstream ever sees one.

The tree itself (parts, headers, parsing, encoding) is :mod:`pipeline.contract.mime`; this
module is the editing API on top, and re-exports the tree's names.
"""

from __future__ import annotations

import email.header
import email.message
import email.utils
from collections.abc import Iterator, Sequence

from pipeline.contract.headers import (  # noqa: F401 (re-exported: these names were always importable here)
    ADDRESS_HEADERS,
    CRLF,
    Edit,
    Header,
    MessageError,
    SealedError,
    check_address,
    check_header,
    current_actor,
    decode_header_value,
    format_header,
    normalize_newlines,
)
from pipeline.contract.mime import Part, Structure
from pipeline.contract.vocabulary import EditAction


class Message:
    """A message with its envelope; every change goes through a method that records an :class:`Edit`."""

    def __init__(
        self,
        raw: bytes,
        mail_from: str | None = None,
        rcpt_tos: Sequence[str] = (),
        *,
        max_depth: int | None = None,
        max_parts: int | None = None,
    ) -> None:
        if not isinstance(raw, bytes | bytearray):
            raise MessageError("a message is bytes")
        raw = normalize_newlines(bytes(raw))
        if not raw or raw.isspace():  # (no strip(): that would copy the whole message)
            raise MessageError("empty message")
        end = raw.find(CRLF)  # (not split(): that copied the whole rest of the message)
        first_line = raw if end < 0 else raw[:end]
        if first_line and not first_line.startswith((b" ", b"\t")) and b":" not in first_line:
            raise MessageError("not an RFC 5322 message: the first line is not a header field")
        # Only the top-level header block is parsed here; the MIME tree is split on first use of
        # :attr:`root` (parts, bodies). Admission reads headers, and the worker parses the spooled
        # bytes again anyway: splitting at DATA too was a fifth of the ingress process's time.
        self._root = Part(raw, split=False)
        self._bounds = (max_depth, max_parts)
        self._unsplit = bool(self._root._boundary)
        self._structure: Structure | None = None
        self._mail_from = mail_from
        self._rcpt_tos = list(rcpt_tos)
        self.edits: list[Edit] = []
        self.sealed_by: str | None = None
        self._cache: bytes | None = raw if self._root._raw is not None else None
        self._assembled = False  # whether _cache was assembled from the tree (not the bytes as received)

    @classmethod
    def from_file(cls, path: str) -> Message:
        with open(path, "rb") as fh:
            return cls(fh.read())

    @property
    def root(self) -> Part:
        """The MIME tree (split now if it was not yet)."""
        if self._unsplit:
            self._unsplit = False
            self._root.split_tree(*self._bounds)
        return self._root

    def structure(self) -> Structure:
        """The MIME structure of the message as received, found by a scan that builds no tree
        and decodes nothing (what the limits at DATA need); computed once."""
        if self._structure is None:
            self._structure = Structure(self._root, *self._bounds)
        return self._structure

    # -- bookkeeping ----------------------------------------------------------------------
    def _record(self, action: EditAction, target: str, detail: str = "") -> None:
        if self.sealed_by is not None:
            raise SealedError(
                f"message was signed by {self.sealed_by}; {current_actor.get()} tried to {action}"
            )
        if len(detail) > 200:
            detail = detail[:197] + "..."
        self.edits.append(Edit(current_actor.get(), action, target, detail))
        self._cache = None

    def seal(self) -> None:
        """Forbid further edits: called by a signer, so nothing changes the bytes it signed."""
        self.sealed_by = current_actor.get()

    # -- headers ---------------------------------------------------------------------------
    @property
    def headers(self) -> list[Header]:
        """The top-level header fields in order (read-only view; edit through the methods)."""
        return list(self._root.headers)

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of a header, decoded; ``default`` when absent."""
        value = self._root.get_header(name)
        return default if value is None else value

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [h.value for h in self._root.headers if h.lname == lname]

    def __contains__(self, name: str) -> bool:
        return self._root.get_header(name) is not None

    def add_header(self, name: str, value: str, *, first: bool = False) -> None:
        """Add a header at the end of the header block (``first=True``: at the top)."""
        header = Header(name, format_header(name, value))
        self._record(EditAction.ADD_HEADER, name, value)
        self._insert(header, first)

    def insert_raw_header(self, raw: bytes, *, first: bool = True) -> None:
        """Insert an already formatted (and folded) field, e.g. a ``DKIM-Signature`` from a signer."""
        raw = raw.rstrip(b"\r\n")
        lines = raw.split(CRLF)
        name, sep, _ = lines[0].partition(b":")
        unfolded = raw.replace(CRLF, b"")
        if (
            not sep
            or any(line[:1] not in (b" ", b"\t") for line in lines[1:])
            or b"\n" in unfolded
            or b"\r" in unfolded
            or b"\0" in raw
        ):
            raise MessageError("raw header must be one field, continuation lines indented")
        header = Header(name.decode("ascii", "replace"), raw)
        check_header(header.name, "")
        before = self._cache if self._assembled and self._root.headers else None
        self._record(EditAction.ADD_HEADER, header.name, header.raw_value)
        self._insert(header, first)
        if first and before is not None:
            # A field on top of an assembled message (a signature, on every copy) is the only
            # change: assembling again would give the new field, CRLF, then the same bytes.
            self._cache = b"".join((raw, CRLF, before))

    def _insert(self, header: Header, first: bool) -> None:
        if first:
            self._root.headers.insert(0, header)
        else:
            self._root.headers.append(header)
        self._root._invalidate()

    def change_header(self, name: str, value: str, index: int = 0) -> None:
        """Change the ``index``-th occurrence of a header (milter chgheader); add it if absent."""
        lname = name.lower()
        found = [h for h in self._root.headers if h.lname == lname]
        if index < len(found):
            h = found[index]
            raw = format_header(h.name, value)  # validate before recording: a refused edit leaves no trace
            self._record(EditAction.CHANGE_HEADER, name, value)
            h.raw, h._value = raw, None
            self._root._invalidate()
        else:
            self.add_header(name, value)

    def remove_header(self, name: str) -> int:
        """Remove every occurrence of a header; returns how many were removed."""
        lname = name.lower()
        keep = [h for h in self._root.headers if h.lname != lname]
        removed = len(self._root.headers) - len(keep)
        if removed:
            self._record(EditAction.REMOVE_HEADER, name, f"{removed} field(s)" if removed > 1 else "")
            self._root.headers[:] = keep
            self._root._invalidate()
        return removed

    # -- body ------------------------------------------------------------------------------
    def walk(self) -> Iterator[Part]:
        return self.root.walk()

    def _text_leaves(self, subtype: str) -> list[Part]:
        return [
            p
            for p in self.root.walk()
            if not p.is_multipart and p.content_type == f"text/{subtype}" and not p.is_attachment
        ]

    def html_parts(self) -> list[Part]:
        """HTML bodies (not attachments), in document order."""
        return self._text_leaves("html")

    def text_parts(self) -> list[Part]:
        """Plain-text bodies (not attachments), in document order."""
        return self._text_leaves("plain")

    def replace_html(self, part: Part, html: str) -> None:
        """Replace an HTML part's text; charset and transfer encoding are kept (or safely upgraded)."""
        self._replace_body(part, html, EditAction.REPLACE_HTML)

    def replace_text(self, part: Part, text: str) -> None:
        """Replace a plain-text part's text."""
        self._replace_body(part, text, EditAction.REPLACE_TEXT)

    def _replace_body(self, part: Part, text: str, action: EditAction) -> None:
        chain = self._ancestors(part)
        if chain is None:
            raise MessageError("that part does not belong to this message")
        self._record(action, f"part {part.path} ({part.content_type})", f"{len(text)} chars")
        part._set_text(text)
        for p in chain:
            p._invalidate()

    def _ancestors(self, target: Part) -> list[Part] | None:
        """Root-to-``target`` chain through parent links: O(depth), not a search of the tree
        (a search per edited part made 10,000 HTML parts cost seconds)."""
        chain = []
        node: Part | None = target
        while node is not None:
            chain.append(node)
            node = node.parent
        if chain[-1] is not self.root:
            return None
        chain.reverse()
        return chain

    # -- envelope --------------------------------------------------------------------------
    @property
    def mail_from(self) -> str | None:
        return self._mail_from

    @property
    def rcpt_tos(self) -> list[str]:
        return list(self._rcpt_tos)

    def change_sender(self, address: str) -> None:
        """Change the envelope sender (milter chgfrom), e.g. to a VERP bounce address."""
        check_address(address)
        self._record(EditAction.CHANGE_SENDER, "MAIL FROM", address)
        self._mail_from = address

    def add_recipient(self, address: str) -> None:
        if not address:
            raise MessageError("a recipient address cannot be empty")
        check_address(address)
        self._record(EditAction.ADD_RCPT, "RCPT TO", address)
        self._rcpt_tos.append(address)

    def remove_recipient(self, address: str) -> None:
        if address not in self._rcpt_tos:
            raise MessageError(f"{address} is not a recipient")
        self._record(EditAction.REMOVE_RCPT, "RCPT TO", address)
        self._rcpt_tos.remove(address)

    # -- output ----------------------------------------------------------------------------
    def as_bytes(self) -> bytes:
        """The message as it would go on the wire (CRLF line endings)."""
        if self._cache is None:
            if self._unsplit and self._root._raw is None and self.structure().repairs_children:
                self.root  # noqa: B018 - a child needs its missing empty line: serialise the tree
            self._assembled = self._root._raw is None
            self._cache = self._root.as_bytes()
        return self._cache

    def copy(self, rcpt_tos: Sequence[str] | None = None, *, split: bool = True) -> Message:
        """An independent copy (for per-recipient fan-out); the edit log is carried over.

        ``split=False``: a message whose MIME tree nobody needed yet gives a copy that splits it
        on first use, as this one would (the only copy of a message: no split at all when no
        plugin reads the parts, where splitting only to clone the tree was a sixth of a worker's
        time per message with no processing plugin)."""
        clone = Message.__new__(Message)
        if split or not self._unsplit:
            # Parse once: fan-out splits the tree (if nothing did yet) and copies it; N copies
            # splitting it each would parse it N times.
            clone._root, clone._unsplit = self.root.clone(), False
        else:  # the top-level entity only (its header fields copied, its bytes shared)
            clone._root, clone._unsplit = self._root._clone_node(None), True
        clone._bounds, clone._structure = self._bounds, self._structure
        clone._mail_from = self._mail_from
        clone._rcpt_tos = list(self._rcpt_tos if rcpt_tos is None else rcpt_tos)
        clone.edits = list(self.edits)
        clone.sealed_by = None
        clone._cache, clone._assembled = self._cache, self._assembled
        return clone

    def addresses(self, name: str) -> list[tuple[str, str]]:
        """``(display name, address)`` pairs of an address header."""
        return email.utils.getaddresses(self.get_all(name))
