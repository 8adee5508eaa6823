"""mailerq_headers: MailerQ's ``x-mq-*`` headers, read at DATA where they map.

MailerQ strips every ``x-mq-*`` header and turns it into a JSON property of the message
(https://www.mailerq.com/documentation/5.2/mime-headers). Those with a meaning here:
``x-mq-tag`` (a tag), ``x-mq-delayed`` (send time), ``x-mq-maxdelivertime`` (delivery
deadline), ``x-mq-inlinecss`` (the ``inlinecss`` switch). Properties MailerQ has no special
meaning for (``x-mq-order-id``) become metadata, as they become JSON properties there. The
ones about MailerQ's own machinery (queues, source IP, smarthost, retries, dsn) do not exist
here and are refused, so a sender never thinks a smarthost or queue was honoured.
"""

from __future__ import annotations

import re

from pipeline import MessageContext, Reject, hookimpl
from pipeline.toolkit import dialects as d

PREFIX = "x-mq-"
UTC_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}")
UNSUPPORTED = {
    "ip", "maxattempts", "retries", "results-queue", "failure-queue", "success-queue", "retry-queue",
    "smarthost-hostname", "smarthost-port", "smarthost-username", "smarthost-password", "dsn",
}


class MailerqHeaders(d.DialectPlugin):
    """Maps x-mq-* onto a tag, send window, the inlinecss switch and metadata."""

    name = "mailerq_headers"
    feature = "mailerq"

    @hookimpl
    def on_message(self, ctx: MessageContext) -> Reject | None:
        extra: dict[str, str] = {}
        for key, value in d.with_prefix(ctx, PREFIX):
            prop = key.lower()
            header = f"x-mq-{prop}"
            if prop in UNSUPPORTED or prop == "envelope":  # envelope: a sender change past the credential's domains
                return d.invalid(header, "not supported by this gateway (see docs/plugins/mailerq_headers.md)")
            if prop == "tag":
                verdict = d.add_tags(ctx, header, [value])
                if verdict is not None:
                    return verdict
                d.campaign_from_tag(ctx, value)
            elif prop in ("delayed", "maxdelivertime"):
                # MailerQ writes times as "YYYY-MM-DD HH:MM:SS" in UTC
                utc = value.strip() + "+00:00" if UTC_TIME.fullmatch(value.strip()) else value
                when = d.timestamp(header, utc)
                if isinstance(when, Reject):
                    return when
                if prop == "delayed":
                    ctx.not_before = when
                else:
                    ctx.deliver_by = when
            elif prop == "inlinecss":
                on = d.flag(header, value, true=("true", "yes", "1"), false=("false", "no", "0"))
                if isinstance(on, Reject):
                    return on
                d.set_switch(ctx, "inlinecss", on, header)
            else:
                extra[prop] = value
        return d.add_metadata(ctx, "x-mq-*", extra) if extra else None
