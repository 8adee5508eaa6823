"""The straightforward computations the admission fast paths must equal.

Each is the code as it was before the admission CPU cut (a scan of every field with
``name.lower()`` per look-up, an uncompiled ``re.sub`` per value, header_validation's three
passes); tests/test_admission_fast_paths.py compares the fast paths with them on generated
headers and on every message in samples/ and the shared corpus.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from pipeline import Header, MessageContext, Reject
from plugins import header_validation as hv


def raw_value(header: Header) -> str:
    """``Header.raw_value`` as it was: an ``re.sub`` whether the field is folded or not."""
    text = header.raw.decode("utf-8", "surrogateescape")
    _, _, value = text.partition(":")
    return re.sub(r"\r\n(?=[ \t])", "", value).strip()


def header_value(headers: list[Header], name: str) -> str | None:
    """``mime._header_value`` as it was: lower-case every field's name."""
    lname = name.lower()
    for h in headers:
        if h.name.lower() == lname:
            return h.value
    return None


def single(ctx: MessageContext, name: str) -> str | Reject | None:
    lname = name.lower()
    values = [raw_value(h) for h in ctx.message.headers if h.name.lower() == lname]
    if not values:
        return None
    if len(values) > 1:
        return Reject(550, "5.6.0", f"Message has {len(values)} {name}: headers")
    return values[0]


def every(ctx: MessageContext, name: str) -> list[str]:
    lname = name.lower()
    return [raw_value(h) for h in ctx.message.headers if h.name.lower() == lname]


def with_prefix(ctx: MessageContext, prefix: str) -> list[tuple[str, str]]:
    lp = prefix.lower()
    return [
        (h.name[len(prefix) :], raw_value(h)) for h in ctx.message.headers if h.name.lower().startswith(lp)
    ]


def read_id(ctx: MessageContext, name: str) -> str | Reject | None:
    """campaign_tag.read_id as it was."""
    from plugins.campaign_tag import ID_PATTERN

    lname = name.lower()
    fields = [h for h in ctx.message.headers if h.name.lower() == lname]
    if not fields:
        return None
    if len(fields) > 1:
        return Reject(550, "5.6.0", f"Message has {len(fields)} {name}: headers")
    value = raw_value(fields[0])
    if not ID_PATTERN.fullmatch(value):
        return Reject(550, "5.6.0", f"Invalid {name} header: expected 1-64 characters from A-Z a-z 0-9 _ -")
    return value


def daily_campaign(fmt: str, received_at: float) -> str:
    """campaign_tag's daily campaign as it was: strftime of the arrival time for each message."""
    return datetime.datetime.fromtimestamp(received_at, datetime.UTC).strftime(fmt)


def header_validation(plugin: Any, ctx: MessageContext) -> Reject | None:
    """``HeaderValidation.on_message`` as it was (three passes, names lower-cased per message)."""
    msg = ctx.message
    headers = msg.headers
    verdict = _check_shape(plugin, headers) or _check_unique(plugin, headers)
    if verdict:
        return verdict
    present = {h.name.lower() for h in headers}
    required = {n.lower() for n in plugin.config.required}
    add_missing = {n.lower(): n for n in plugin.config.add_missing}
    to_add: dict[str, tuple[str, str]] = {}
    for name in plugin.config.required + plugin.config.add_missing:
        lname = name.lower()
        if lname in present or lname in to_add:
            continue
        value = plugin._generate(add_missing[lname], ctx) if lname in add_missing else None
        if value is None:
            if lname in required:
                return Reject(550, "5.6.0", f"Message has no {name}: header")
            continue
        to_add[lname] = (add_missing[lname], value)
    rewrites = _plan_8bit(plugin, headers)
    if isinstance(rewrites, Reject):
        return rewrites
    from_value = next((raw_value(h) for h in headers if h.name.lower() == "from"), None)
    from_value = next((v for (h, _, v) in rewrites if h.name.lower() == "from"), from_value)
    if from_value is None and "from" in to_add:
        from_value = to_add["from"][1]
    if from_value is not None:
        verdict = hv._check_from(from_value)
        if verdict:
            return verdict
    for header, index, value in rewrites:
        msg.change_header(header.name, value, index)
    for name, value in to_add.values():
        msg.add_header(name, value)
    return None


def _check_shape(plugin: Any, headers: list[Header]) -> Reject | None:
    if len(headers) > plugin.config.max_headers:
        return Reject(
            552,
            "5.3.4",
            f"Message has too many header fields ({len(headers)}, limit {plugin.config.max_headers})",
        )
    limit = plugin.config.max_header_line
    for number, header in enumerate(headers, 1):
        if not header.name or not hv._FIELD_START.match(header.raw):
            return Reject(550, "5.6.0", f"Malformed header field number {number}: expected Name: value")
        longest = max(len(line) for line in header.raw.split(b"\r\n"))
        if longest > limit:
            return Reject(
                550, "5.6.0", f"Header line too long in {header.name}: ({longest} octets, limit {limit})"
            )
    return None


def _check_unique(plugin: Any, headers: list[Header]) -> Reject | None:
    counts: dict[str, int] = {}
    for header in headers:
        counts[header.name.lower()] = counts.get(header.name.lower(), 0) + 1
    for name in plugin.config.unique:
        n = counts.get(name.lower(), 0)
        if n > 1:
            return Reject(550, "5.6.0", f"Message has {n} {name}: headers")
    return None


def _plan_8bit(plugin: Any, headers: list[Header]) -> list[tuple[Header, int, str]] | Reject:
    plan: list[tuple[Header, int, str]] = []
    seen: dict[str, int] = {}
    for header in headers:
        lname = header.name.lower()
        index = seen.get(lname, 0)
        seen[lname] = index + 1
        if not header.has_8bit():
            continue
        if plugin.config.eight_bit_headers == "reject":
            return Reject(550, "5.6.0", f"Raw 8-bit bytes in {header.name}: header; use RFC 2047 encoding")
        if lname in hv.STRUCTURED_HEADERS or lname.startswith(hv.STRUCTURED_PREFIXES):
            return Reject(
                550, "5.6.0", f"Raw 8-bit bytes in {header.name}: header (a structured field must be ASCII)"
            )
        text = plugin._decode_raw(header)
        if lname in hv.ADDRESS_HEADERS:
            value = hv.encode_address_header(header.name, text)
            if isinstance(value, Reject):
                return value
        else:
            value = text
        plan.append((header, index, value))
    return plan
