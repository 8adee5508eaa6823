"""mailgun_headers: Mailgun's ``X-Mailgun-*`` SMTP headers, read at DATA.

Mailgun documents them for SMTP sending
(https://documentation.mailgun.com/docs/mailgun/user-manual/sending-messages/#sending-via-smtp):
``X-Mailgun-Tag`` (repeatable, at most 3), ``X-Mailgun-Track``, ``-Track-Clicks`` (yes, no,
htmlonly), ``-Track-Opens``, ``X-Mailgun-Variables`` (a JSON object: "user-variables" on every
event), ``X-Mailgun-Deliver-By`` (RFC 2822 date), ``X-Mailgun-Require-TLS`` and
``X-Mailgun-Skip-Verification`` (yes/no). Each maps onto smtpgate's switches, tags, metadata
and delivery deadline; a malformed value is a ``550 5.6.0`` naming the header.
"""

from __future__ import annotations

from pipeline import MessageContext, Reject, hookimpl
from pipeline.toolkit import dialects as d

MAX_TAGS = 3  # Mailgun: "a single message may be marked with up to 3 tags"


class MailgunHeaders(d.DialectPlugin):
    """Maps X-Mailgun-* onto switches, tags, variables and a deliver-by time."""

    name = "mailgun_headers"
    feature = "mailgun"

    @hookimpl
    def on_message(self, ctx: MessageContext) -> Reject | None:
        if not d.has_prefix(ctx, "X-Mailgun-"):
            return d.add_tags(ctx, "X-Mailgun-Tag", ())  # (every other step reads a header: none to read)
        tags = d.every(ctx, "X-Mailgun-Tag")
        if len(tags) > MAX_TAGS:
            return d.invalid("X-Mailgun-Tag", f"at most {MAX_TAGS} tags per message")
        verdict = d.add_tags(ctx, "X-Mailgun-Tag", tags)
        if verdict is not None:
            return verdict
        if tags:
            d.campaign_from_tag(ctx, tags[0])
        for step in (self._tracking, self._variables, self._delivery):
            verdict = step(ctx)
            if verdict is not None:
                return verdict
        return None

    def _tracking(self, ctx: MessageContext) -> Reject | None:
        # The general switch first; the specific ones override it. htmlonly is "yes": links are
        # only ever rewritten in HTML parts here.
        return (
            d.switch_from(ctx, "X-Mailgun-Track", ("trackclicks", "trackopens"))
            or d.switch_from(ctx, "X-Mailgun-Track-Clicks", ("trackclicks",), true=("yes", "true", "htmlonly"))
            or d.switch_from(ctx, "X-Mailgun-Track-Opens", ("trackopens",))
        )

    def _variables(self, ctx: MessageContext) -> Reject | None:
        values = d.every(ctx, "X-Mailgun-Variables")  # Mailgun allows several; they merge
        for raw in values:
            parsed = d.json_object("X-Mailgun-Variables", raw)
            if isinstance(parsed, Reject):
                return parsed
            verdict = d.add_metadata(ctx, "X-Mailgun-Variables", parsed)
            if verdict is not None:
                return verdict
        return None

    def _delivery(self, ctx: MessageContext) -> Reject | None:
        by = d.single(ctx, "X-Mailgun-Deliver-By")
        if isinstance(by, Reject):
            return by
        if by is not None:
            when = d.timestamp("X-Mailgun-Deliver-By", by)
            if isinstance(when, Reject):
                return when
            ctx.deliver_by = when
        flags: dict[str, bool] = {}
        for name in ("X-Mailgun-Require-TLS", "X-Mailgun-Skip-Verification"):
            on = d.header_flag(ctx, name)
            if isinstance(on, Reject):
                return on
            if on is not None:
                flags[name] = on
                ctx.notes.setdefault("mailgun", {})[name.lower()] = on  # the timeline shows what was asked
        if flags.get("X-Mailgun-Require-TLS"):
            # Mailgun: "the message will only be sent over TLS"; with Skip-Verification the
            # certificate and host name are not checked, otherwise they must verify. The egress
            # defers the copy when the next hop cannot meet that, and never lowers its own level.
            ctx.require_tls = "encrypt" if flags.get("X-Mailgun-Skip-Verification") else "verify"
        return None
