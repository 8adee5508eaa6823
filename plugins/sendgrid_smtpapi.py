"""sendgrid_smtpapi: SendGrid's ``X-SMTPAPI`` JSON header, read at DATA and applied per recipient.

SendGrid's SMTP API (https://www.twilio.com/docs/sendgrid/for-developers/sending-email/building-an-x-smtpapi-header)
puts one JSON object in ``X-SMTPAPI``:

- ``to``: the envelope recipients (replacing RCPT TO), each copy's ``To:`` set to its own entry,
  so no recipient sees the others;
- ``sub`` (or ``substitutions``): ``{"-tag-": [one value per "to" entry]}``, applied to each
  recipient's copy (subject, text and HTML) in ``on_personalize``, after ``section`` tags;
- ``category`` (string or list): tags, the first one the campaign when it is a valid id;
- ``unique_args`` / ``custom_args``: metadata carried on every event and webhook;
- ``filters``: ``clicktrack``, ``opentrack``, ``subscriptiontrack`` -> ``trackclicks``,
  ``trackopens``, ``listunsubscribe``; ``bypass_list_management`` is refused (see the doc);
- ``send_at``: deferred delivery.

Anything malformed is a ``550 5.6.0`` naming the header: guessing would deliver to the wrong
people or track someone who asked not to be tracked.
"""

from __future__ import annotations

import email.utils
import json
import re
from typing import Any

from pipeline import MessageContext, PluginConfig, PluginEnv, Reject, hookimpl
from pipeline.toolkit import dialects as d

HEADER = "X-SMTPAPI"
NOTE = "sendgrid"
FILTERS = {"clicktrack": "trackclicks", "opentrack": "trackopens", "subscriptiontrack": "listunsubscribe"}
KNOWN_KEYS = {
    "to", "sub", "substitutions", "section", "category", "unique_args", "custom_args", "filters", "send_at",
    "asm_group_id", "ip_pool",
}
_ADDRESS = re.compile(r"[^\s<>@]+@[^\s<>@]+")


class SendgridSmtpapi(d.DialectPlugin):
    """Maps X-SMTPAPI onto recipients, switches, tags, metadata and a send time."""

    name = "sendgrid_smtpapi"
    feature = "sendgrid"

    class Config(PluginConfig):
        max_recipients: int = 1000  # SendGrid's own limit for "to"; a credential's max_recipients also applies

    def __init__(self, config: Any, env: PluginEnv) -> None:
        super().__init__(config, env)
        self._parsed: tuple[tuple[str, int, int], dict[str, Any]] | None = None

    @hookimpl
    def on_message(self, ctx: MessageContext) -> Reject | None:
        raw = d.single(ctx, HEADER)
        if raw is None or isinstance(raw, Reject):
            return raw
        api = d.json_object(HEADER, raw)
        if isinstance(api, Reject):
            return api
        unknown = sorted(set(api) - KNOWN_KEYS)
        if unknown:
            return d.invalid(HEADER, f"unsupported key {unknown[0]!r}")
        for step in (self._categories, self._args, self._filters, self._send_at, self._recipients):
            verdict = step(ctx, api)
            if verdict is not None:
                return verdict
        return None

    def _categories(self, ctx: MessageContext, api: dict[str, Any]) -> Reject | None:
        cats = api.get("category", [])
        cats = [cats] if isinstance(cats, str) else cats
        if not isinstance(cats, list):
            return d.invalid(HEADER, "category must be a string or a list of strings")
        verdict = d.add_tags(ctx, HEADER, cats)
        if verdict is None and cats:
            d.campaign_from_tag(ctx, cats[0])
        return verdict

    def _args(self, ctx: MessageContext, api: dict[str, Any]) -> Reject | None:
        for key in ("unique_args", "custom_args"):
            args = api.get(key, {})
            if not isinstance(args, dict) or not all(isinstance(v, str | int | float) for v in args.values()):
                return d.invalid(HEADER, f"{key} must be an object of strings")
            verdict = d.add_metadata(ctx, HEADER, {k: str(v) for k, v in args.items()})
            if verdict is not None:
                return verdict
        return None

    def _filters(self, ctx: MessageContext, api: dict[str, Any]) -> Reject | None:
        filters = api.get("filters", {})
        if not isinstance(filters, dict):
            return d.invalid(HEADER, "filters must be an object")
        for name, spec in filters.items():
            enable = spec.get("settings", {}).get("enable") if isinstance(spec, dict) else None
            if isinstance(enable, bool) or enable not in (0, 1, "0", "1"):
                return d.invalid(HEADER, f"filters.{name}.settings.enable must be 0 or 1")
            on = str(enable) == "1"
            if name == "bypass_list_management":
                if on:  # the stoplist is checked at RCPT and again for added recipients: never bypassed
                    return d.invalid(HEADER, "bypass_list_management is not supported: the stoplist always applies")
                continue
            if name not in FILTERS:
                return d.invalid(HEADER, f"unsupported filter {name!r}")
            d.set_switch(ctx, FILTERS[name], on, f"{HEADER} filters.{name}")
        return None

    def _send_at(self, ctx: MessageContext, api: dict[str, Any]) -> Reject | None:
        if "send_at" not in api:
            return None
        value = api["send_at"]
        if not isinstance(value, int) or isinstance(value, bool):
            return d.invalid(HEADER, "send_at must be a Unix timestamp")
        when = d.timestamp(HEADER, value)
        if isinstance(when, Reject):
            return when
        ctx.not_before = when
        return None

    def _recipients(self, ctx: MessageContext, api: dict[str, Any]) -> Reject | None:
        subs = api.get("sub", api.get("substitutions", {}))
        sections = api.get("section", {})
        if not isinstance(sections, dict) or not all(isinstance(v, str) for v in sections.values()):
            return d.invalid(HEADER, "section must be an object of strings")
        if not isinstance(subs, dict) or not all(isinstance(v, list) for v in subs.values()):
            return d.invalid(HEADER, "sub must be an object of lists")
        if "to" not in api:
            if subs:
                return d.invalid(HEADER, "sub needs a to list")
            return None
        to = api["to"]
        if not isinstance(to, list) or not to or not all(isinstance(t, str) for t in to):
            return d.invalid(HEADER, "to must be a non-empty list of addresses")
        limit = self.config.max_recipients
        if ctx.credential is not None and ctx.credential.max_recipients:
            limit = min(limit, ctx.credential.max_recipients)
        if len(to) > limit:
            return Reject(550, "5.5.3", f"Too many recipients in {HEADER} to: {len(to)}, at most {limit}")
        for tag, values in subs.items():
            if len(values) != len(to) or not all(isinstance(v, str | int | float) for v in values):
                return d.invalid(HEADER, f"sub {tag!r} needs one value per to address")
        copies: dict[str, Any] = {}
        for i, entry in enumerate(to):
            _, address = email.utils.parseaddr(entry)
            if not _ADDRESS.fullmatch(address) or "\r" in entry or "\n" in entry:
                return d.invalid(HEADER, f"to[{i}] is not an address")
            copies[address.lower()] = {"to": entry, "sub": {tag: str(values[i]) for tag, values in subs.items()}}
        for rcpt in list(ctx.message.rcpt_tos):
            ctx.message.remove_recipient(rcpt)
        for address in dict.fromkeys(email.utils.parseaddr(t)[1] for t in to):
            ctx.message.add_recipient(address)
        # One JSON string: the core deep-copies notes into every copy's context, and a string is
        # copied by reference (a dict per recipient would make a batch of n recipients cost n^2).
        ctx.notes[NOTE] = json.dumps({"copies": copies, "section": sections})
        return None

    def _state(self, queue_id: str, encoded: str) -> dict[str, Any]:
        """The parsed per-recipient state, parsed once per message (copies come one after another)."""
        key = (queue_id, len(encoded), hash(encoded))
        if self._parsed is None or self._parsed[0] != key:
            self._parsed = (key, json.loads(encoded))
        return self._parsed[1]

    @hookimpl
    def on_personalize(self, ctx: MessageContext) -> None:
        if NOTE not in ctx.notes or ctx.recipient is None:
            return
        state = self._state(ctx.queue_id, ctx.notes[NOTE])
        copy = state["copies"].get(ctx.recipient.lower())
        if copy is None:
            return
        if "To" in ctx.message:
            ctx.message.change_header("To", copy["to"])
        else:
            ctx.message.add_header("To", copy["to"])
        pairs = list(state["section"].items()) + list(copy["sub"].items())
        if not pairs:
            return
        subject = ctx.message.get("Subject")
        if subject is not None and substitute(subject, pairs) != subject:
            ctx.message.change_header("Subject", substitute(subject, pairs))
        for part in ctx.message.html_parts():
            text = part.text()
            if substitute(text, pairs) != text:
                ctx.message.replace_html(part, substitute(text, pairs))
        for part in ctx.message.text_parts():
            text = part.text()
            if substitute(text, pairs) != text:
                ctx.message.replace_text(part, substitute(text, pairs))


def substitute(text: str, pairs: list[tuple[str, str]]) -> str:
    """Replace each tag with its value, sections first (a section may hold substitution tags)."""
    for tag, value in pairs:
        text = text.replace(tag, value)
    return text
