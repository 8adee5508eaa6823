"""campaign_tag: read ``X-Campaign-Id`` / ``X-Letter-Id`` into the message context at DATA.

The ids travel with the message (spool record, events, tracking tokens, webhooks), so they
are checked strictly here: Sendsay's alphabet ``[A-Za-z0-9_-]``, 1 to 64 characters, one
field each. A value outside it (a space, an encoded word, a folded line: the shapes a CRLF
injection takes once parsed) is rejected with ``550 5.6.0`` naming the header rather than
cleaned up, so a sender never sees statistics under an id it did not send.

A message without ``X-Campaign-Id`` joins the daily campaign named after its UTC arrival date
(Sendsay groups SMTP mail into one issue per day).
"""

from __future__ import annotations

import datetime
import re

from pydantic import field_validator

from pipeline import MessageContext, Plugin, PluginConfig, Reject, hookimpl
from pipeline.toolkit.dialects import fields_by_name

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
CAMPAIGN_HEADER = "X-Campaign-Id"
LETTER_HEADER = "X-Letter-Id"


class CampaignTag(Plugin):
    """Validates the campaign and letter ids and records them on ``ctx``."""

    name = "campaign_tag"
    feature = "campaign"
    feature_default = True
    feature_by_header = False  # policy: the config and the credential decide, never a message header
    version = "1.0"

    class Config(PluginConfig):
        keep_headers: bool = True
        daily_campaign: str = "%Y-%m-%d"  # strftime of the UTC arrival date; "" = no default campaign

        @field_validator("daily_campaign")
        @classmethod
        def _valid_id(cls, v: str) -> str:
            sample = datetime.datetime(2026, 12, 31, 23, 59, 59, tzinfo=datetime.UTC).strftime(v)
            if v and not ID_PATTERN.fullmatch(sample):
                raise ValueError(f"{v!r} gives {sample!r}, not an id of 1-64 characters from A-Z a-z 0-9 _ -")
            return v

    @hookimpl
    def on_message(self, ctx: MessageContext) -> Reject | None:
        campaign = read_id(ctx, CAMPAIGN_HEADER)
        if isinstance(campaign, Reject):
            return campaign
        letter = read_id(ctx, LETTER_HEADER)
        if isinstance(letter, Reject):
            return letter
        if campaign is None and self.config.daily_campaign:
            campaign = daily_campaign(self.config.daily_campaign, ctx.received_at)
        ctx.campaign_id = campaign
        ctx.letter_id = letter
        if not self.config.keep_headers:
            ctx.message.remove_header(CAMPAIGN_HEADER)
            ctx.message.remove_header(LETTER_HEADER)
        return None


_DAY_DIRECTIVES = frozenset("%YmdyCjuwUWGgV")
"""strftime directives whose output is the same all through a UTC day (and not locale-dependent)."""
_last_day: tuple[str, int, str] | None = None  # (format, UTC day number, its campaign)


def daily_campaign(fmt: str, received_at: float) -> str:
    """``fmt`` formatted with the UTC arrival time: remembered for the day when ``fmt`` names
    nothing finer than a day (the default ``%Y-%m-%d``), so each message costs no strftime."""
    global _last_day
    day = int(received_at // 86400)
    # (not within a millisecond of midnight: fromtimestamp rounds to the microsecond)
    mid_day = 0.001 < received_at - day * 86400 < 86399.999
    last = _last_day
    if mid_day and last is not None and last[0] == fmt and last[1] == day:
        return last[2]
    value = datetime.datetime.fromtimestamp(received_at, datetime.UTC).strftime(fmt)
    if mid_day and all(d in _DAY_DIRECTIVES for d in re.findall("%(.)", fmt, re.DOTALL)):
        _last_day = (fmt, day, value)
    return value


def read_id(ctx: MessageContext, name: str) -> str | Reject | None:
    """The header's value if present and valid; a ``550 5.6.0`` naming it otherwise.

    The raw value is checked (not the RFC 2047-decoded one): an id is a plain ASCII token, and
    an encoded word could smuggle CR/LF past a check made after decoding.
    """
    fields = fields_by_name(ctx.message).get(name.lower(), [])
    if not fields:
        return None
    if len(fields) > 1:
        return Reject(550, "5.6.0", f"Message has {len(fields)} {name}: headers")
    value = fields[0].raw_value
    if not ID_PATTERN.fullmatch(value):
        return Reject(550, "5.6.0", f"Invalid {name} header: expected 1-64 characters from A-Z a-z 0-9 _ -")
    return value
