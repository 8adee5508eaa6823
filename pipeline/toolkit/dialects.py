"""Shared reading rules for vendor header dialects (SendGrid, Mailgun, Postmark, SES, MailerQ).

Each dialect plugin maps its vendor's headers onto the same few things: feature switches, tags,
metadata, a campaign id and a delivery window. The rules are here once so the dialects agree:
a malformed value is a ``550 5.6.0`` naming the header (as for ``X-SMTPeter-*``), a credential's
lock beats any header, and metadata is bounded (it is stored with every message and sent in
every webhook). The headers themselves are removed after admission by the gateway
(``[chain] strip_header_prefixes``), not here, so they go even when a dialect is off.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import logging
import re
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.contract.context import MessageContext
from pipeline.contract.headers import Header
from pipeline.contract.message import Message
from pipeline.contract.plugin import Plugin, PluginConfig
from pipeline.contract.verdicts import Reject

log = logging.getLogger("smtpgate.dialects")

TAG_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
"""A tag: 1-128 characters, no control characters (SendGrid categories may hold spaces)."""
MAX_TAGS = 10
MAX_METADATA_BYTES = 10_000
"""SendGrid's limit for unique_args / custom_args; the largest of the vendors' limits."""
CAMPAIGN_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""campaign_tag's id alphabet: a tag becomes the campaign only when it is a valid id."""


def invalid(name: str, expected: str) -> Reject:
    """The one reply for a malformed vendor header, shaped like the X-SMTPeter-* one."""
    return Reject(550, "5.6.0", f"Invalid {name} header: {expected}")


_last_index: tuple[weakref.ref[Message], int, dict[str, list[Header]]] | None = None
"""The field index of the last message looked at, with its edit count when built."""


def fields_by_name(message: Message) -> dict[str, list[Header]]:
    """The message's top-level fields by lower-case name, in order: the dialects look up about
    twenty names per message at DATA, and scanning every field for each was most of their cost.

    Built once per message and state: every change to the header block goes through a
    :class:`Message` method that records an edit, so the edit count tells when it is stale (a
    changed value needs no rebuild: the index holds the fields themselves)."""
    global _last_index
    edits = len(message.edits)
    last = _last_index
    if last is not None and last[1] == edits and last[0]() is message:
        return last[2]
    index: dict[str, list[Header]] = {}
    for h in message.headers:
        same = index.get(h.lname)
        if same is None:
            index[h.lname] = [h]
        else:
            same.append(h)
    _last_index = (weakref.ref(message), edits, index)
    return index


def has_prefix(ctx: MessageContext, prefix: str) -> bool:
    """Whether any top-level field's name starts with ``prefix`` (any case): a dialect whose
    headers are all absent (nearly every message) reads nothing else."""
    lp = prefix.lower()
    for lname in fields_by_name(ctx.message):  # (a loop: no generator for a handful of names)
        if lname.startswith(lp):
            return True
    return False


def single(ctx: MessageContext, name: str) -> str | Reject | None:
    """The unfolded raw value of a header that may appear once; ``None`` when absent."""
    found = fields_by_name(ctx.message).get(name.lower())
    if not found:
        return None
    if len(found) > 1:
        return Reject(550, "5.6.0", f"Message has {len(found)} {name}: headers")
    return found[0].raw_value


def every(ctx: MessageContext, name: str) -> list[str]:
    """The unfolded raw values of a header that may repeat (X-Mailgun-Tag)."""
    return [h.raw_value for h in fields_by_name(ctx.message).get(name.lower(), ())]


def with_prefix(ctx: MessageContext, prefix: str) -> list[tuple[str, str]]:
    """``(name without the prefix, raw value)`` of each header whose name starts with ``prefix``."""
    if not has_prefix(ctx, prefix):
        return []
    lp = prefix.lower()
    return [(h.name[len(prefix) :], h.raw_value) for h in ctx.message.headers if h.lname.startswith(lp)]


def flag(name: str, value: str, true: Iterable[str] = ("yes", "true"), false: Iterable[str] = ("no", "false")) -> bool | Reject:
    """A yes/no header value (case-insensitive) or the 550 naming the accepted words."""
    true, false = tuple(true), tuple(false)
    v = value.strip().lower()
    if v in true:
        return True
    if v in false:
        return False
    return invalid(name, f"expected {' or '.join([*true, *false])}")


def header_flag(
    ctx: MessageContext, name: str, true: Iterable[str] = ("yes", "true"), false: Iterable[str] = ("no", "false")
) -> bool | Reject | None:
    """A yes/no header that may appear once: its value, ``None`` when absent, or the 550."""
    raw = single(ctx, name)
    if raw is None or isinstance(raw, Reject):
        return raw
    return flag(name, raw, tuple(true), tuple(false))


def switch_from(ctx: MessageContext, name: str, features: Iterable[str], **words: Iterable[str]) -> Reject | None:
    """Set ``features`` from a yes/no header when present (``words``: ``true``/``false`` spellings)."""
    on = header_flag(ctx, name, **words)
    if isinstance(on, Reject):
        return on
    if on is not None:
        for feature in features:
            set_switch(ctx, feature, on, name)
    return None


def set_switch(ctx: MessageContext, feature: str, on: bool, source: str) -> None:
    """Set a feature switch for this message unless the credential locks it (the lock wins)."""
    if ctx.credential is not None and feature in ctx.credential.locked:
        log.info("credential locks %s; %s ignored", feature, source)
        return
    ctx.features[feature] = on


def add_tags(ctx: MessageContext, name: str, tags: Iterable[Any]) -> Reject | None:
    """Append tags (kept in order, once each); a 550 for a non-string, overlong or >10 tags."""
    for tag in tags:
        if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag):
            return invalid(name, "a tag is 1-128 characters without control characters")
        if tag not in ctx.tags:
            ctx.tags.append(tag)
    if len(ctx.tags) > MAX_TAGS:
        return invalid(name, f"at most {MAX_TAGS} tags per message")
    return None


def add_metadata(ctx: MessageContext, name: str, values: Mapping[str, Any]) -> Reject | None:
    """Merge string-keyed JSON values into ``ctx.metadata``; a 550 when the result is too large."""
    merged = {**ctx.metadata, **{str(k): v for k, v in values.items()}}
    try:
        size = len(json.dumps(merged, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError):
        return invalid(name, "metadata must be JSON values")
    if size > MAX_METADATA_BYTES:
        return invalid(name, f"metadata is {size} bytes, at most {MAX_METADATA_BYTES}")
    ctx.metadata.clear()
    ctx.metadata.update(merged)
    return None


def json_object(name: str, value: str) -> dict[str, Any] | Reject:
    """A header holding one JSON object (X-SMTPAPI, X-Mailgun-Variables)."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        return invalid(name, f"not JSON ({exc.msg} at character {exc.pos})")
    except (ValueError, RecursionError):  # nesting deeper than the parser's stack: still the sender's error
        return invalid(name, "not JSON (nested too deeply)")
    if not isinstance(parsed, dict):
        return invalid(name, "expected a JSON object")
    return parsed


def timestamp(name: str, value: str | int | float) -> float | Reject:
    """Unix seconds from an integer, an RFC 5322 date or an ISO 8601 time with a zone."""
    if isinstance(value, bool):
        return invalid(name, "expected a Unix timestamp or a date with a time zone")
    if isinstance(value, int | float):
        return float(value) if value >= 0 else invalid(name, "a timestamp cannot be negative")
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            return invalid(name, "expected a Unix timestamp or a date with a time zone")
    if when.tzinfo is None:
        return invalid(name, "expected a Unix timestamp or a date with a time zone")
    return when.timestamp()


def campaign_from_tag(ctx: MessageContext, tag: str) -> None:
    """Use a vendor tag as the campaign when the sender gave no X-Campaign-Id and it is a valid id."""
    if "X-Campaign-Id" not in ctx.message and CAMPAIGN_PATTERN.fullmatch(tag):
        ctx.campaign_id = tag


class DialectPlugin(Plugin):
    """The shape every vendor dialect shares: on by default, off per credential, never by a header
    (a message cannot turn its own dialect off), no config of its own. A subclass names itself,
    its ``feature`` and its ``on_message`` hook."""

    feature_default = True
    feature_by_header = False
    version = "1.0"

    class Config(PluginConfig):
        pass
