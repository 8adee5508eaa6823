"""What the chain changed, as milter actions for the MTA to apply.

The chain edits a :class:`~pipeline.contract.message.Message` built from what the MTA sent; here
the final message is compared with that original and each difference becomes one action:
a removed or rewritten field ``SMFIR_CHGHEADER``, a field added on top ``SMFIR_INSHEADER`` at
index 0, a field added at the end ``SMFIR_ADDHEADER``, a different body ``SMFIR_REPLBODY``, a
different sender ``SMFIR_CHGFROM`` and recipients ``SMFIR_DELRCPT``/``SMFIR_ADDRCPT``. Applying
them gives the MTA exactly the bytes the chain (and the DKIM signer, last) saw.

Header values go out in the MTA's internal form: folded lines joined by LF (Sendmail and Postfix
keep headers that way), with the leading space when ``SMFIP_HDR_LEADSPC`` was negotiated.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.milter import protocol as P


class EditError(ValueError):
    """A change the milter protocol cannot express, or one the MTA did not allow."""


@dataclass(frozen=True, slots=True)
class Field:
    """One header field as raw wire bytes (``Name: value``, folding as CRLF)."""

    raw: bytes

    @property
    def name(self) -> str:
        return P.text(self.raw.partition(b":")[0])

    def value(self, leadspc: bool) -> str:
        value = P.text(self.raw.partition(b":")[2]).replace("\r\n", "\n")
        if not leadspc and value.startswith(" "):
            value = value[1:]  # the MTA puts one space after the colon itself
        return value


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    """``(raw header fields, body)`` of wire bytes (CRLF line ends)."""
    if data.startswith(b"\r\n"):
        return [], data[2:]
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, body = data.removesuffix(b"\r\n"), b""
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return fields, body


def header_actions(original: Sequence[bytes], final: Sequence[bytes], leadspc: bool) -> list[bytes]:
    """CHGHEADER / INSHEADER / ADDHEADER packets that turn ``original`` fields into ``final``."""
    changes: list[tuple[str, int, str]] = []  # (name, 1-based index among that name, new value or "")
    top: list[Field] = []
    appended: list[Field] = []
    occurrence: list[int] = []
    seen: Counter[str] = Counter()
    for raw in original:
        name = Field(raw).name.lower()
        seen[name] += 1
        occurrence.append(seen[name])
    kept: set[int] = set()  # indices of final fields that are original ones (same or rewritten)
    matcher = difflib.SequenceMatcher(None, list(original), list(final), autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            kept.update(range(j1, j2))
            continue
        added = list(range(j1, j2))
        for i in range(i1, i2):
            old = Field(original[i])
            # a field rewritten in place: the next new field of the same name, in order
            match = next((j for j in added if Field(final[j]).name.lower() == old.name.lower()), None)
            if op == "replace" and match is not None:
                changes.append((old.name, occurrence[i], Field(final[match]).value(leadspc)))
                added.remove(match)
                kept.add(match)
            else:
                changes.append((old.name, occurrence[i], ""))
    first, last = (min(kept), max(kept)) if kept else (len(final), -1)
    for j, raw in enumerate(final):
        if j in kept:
            continue
        if j < first:
            top.append(Field(raw))
        elif j > last:
            appended.append(Field(raw))
        else:
            raise EditError(f"field {Field(raw).name} added between existing fields: milters cannot place it")
    for f in (*top, *appended):
        if not f.value(True).strip():
            raise EditError(f"field {f.name} added with an empty value: milters cannot express it")
    packets = []
    # highest index first per name, so an MTA that renumbers after a deletion still finds the rest
    for name, index, value in sorted(changes, key=lambda c: (c[0].lower(), -c[1])):
        packets.append(P.header_action(P.R_CHGHEADER, name, value, index))
    for f in appended:
        packets.append(P.header_action(P.R_ADDHEADER, f.name, f.value(leadspc)))
    for f in reversed(top):  # each goes on top of the previous one: reversed keeps the final order, and
        packets.append(P.header_action(P.R_INSHEADER, f.name, f.value(leadspc), 0))  # the signature goes last
    return packets


def envelope_actions(
    mail_from: str, rcpts: Sequence[str], new_from: str, new_rcpts: Sequence[str]
) -> list[bytes]:
    packets = []
    if new_from != mail_from:
        packets.append(P.address_action(P.R_CHGFROM, new_from))
    before, after = Counter(rcpts), Counter(new_rcpts)
    for rcpt in rcpts:
        if before[rcpt] > after[rcpt]:
            before[rcpt] -= 1
            packets.append(P.address_action(P.R_DELRCPT, rcpt))
    seen = Counter(rcpts)
    for rcpt in new_rcpts:
        if seen[rcpt]:
            seen[rcpt] -= 1
        else:
            packets.append(P.address_action(P.R_ADDRCPT, rcpt))
    return packets


NEEDS = {
    P.R_CHGHEADER: P.F_CHGHDRS,
    P.R_INSHEADER: P.F_ADDHDRS,
    P.R_ADDHEADER: P.F_ADDHDRS,
    P.R_REPLBODY: P.F_CHGBODY,
    P.R_CHGFROM: P.F_CHGFROM,
    P.R_ADDRCPT: P.F_ADDRCPT,
    P.R_DELRCPT: P.F_DELRCPT,
}


def message_actions(
    original_fields: Sequence[bytes],
    original_body: bytes,
    mail_from: str,
    rcpts: Sequence[str],
    final: bytes,
    new_from: str,
    new_rcpts: Sequence[str],
    *,
    leadspc: bool,
    granted: int,
) -> list[bytes]:
    """Every action, in the order the MTA applies them; :class:`EditError` when one is not granted."""
    fields, body = split_message(final)
    headers = header_actions(original_fields, fields, leadspc)
    inserts = [p for p in headers if p[4:5] == P.R_INSHEADER]  # on top, the DKIM signature: sent last
    packets = [p for p in headers if p[4:5] != P.R_INSHEADER]
    packets += envelope_actions(mail_from, rcpts, new_from, new_rcpts)
    if body != original_body:
        packets += list(P.body_chunks(body))
    packets += inserts
    for packet in packets:
        needed = NEEDS[packet[4:5]]
        if not granted & needed:
            raise EditError(f"the MTA did not grant the milter the right to {P.ACTION_NAMES[needed]}")
    return packets
