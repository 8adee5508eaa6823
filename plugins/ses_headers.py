"""ses_headers: Amazon SES's ``X-SES-CONFIGURATION-SET`` and ``X-SES-MESSAGE-TAGS``, read at DATA.

SES documents both for its SMTP interface
(https://docs.aws.amazon.com/ses/latest/dg/event-publishing-send-email.html):
``X-SES-MESSAGE-TAGS: name1=value1, name2=value2`` (names and values from A-Z a-z 0-9 _ - and,
for values, ``.@``, up to 256 characters) become metadata, as SES puts them on every event;
``X-SES-CONFIGURATION-SET: name`` becomes metadata ``ses:configuration-set`` (SES adds that
auto-tag to every event too). A malformed value is a ``550 5.6.0`` naming the header.
"""

from __future__ import annotations

import re

from pipeline import MessageContext, Reject, hookimpl
from pipeline.toolkit import dialects as d

NAME = re.compile(r"[A-Za-z0-9_-]{1,256}")
VALUE = re.compile(r"[A-Za-z0-9_.@-]{1,256}")
CONFIG_SET = re.compile(r"[A-Za-z0-9_-]{1,64}")


class SesHeaders(d.DialectPlugin):
    """Maps the SES headers onto metadata."""

    name = "ses_headers"
    feature = "ses"

    @hookimpl
    def on_message(self, ctx: MessageContext) -> Reject | None:
        if not d.has_prefix(ctx, "X-SES-"):
            return None  # (both steps read an X-SES-* header: none to read)
        config_set = d.single(ctx, "X-SES-CONFIGURATION-SET")
        if isinstance(config_set, Reject):
            return config_set
        values: dict[str, str] = {}
        if config_set is not None:
            if not CONFIG_SET.fullmatch(config_set):
                return d.invalid("X-SES-CONFIGURATION-SET", "expected 1-64 characters from A-Z a-z 0-9 _ -")
            values["ses:configuration-set"] = config_set
        tags = d.single(ctx, "X-SES-MESSAGE-TAGS")
        if isinstance(tags, Reject):
            return tags
        if tags is not None:
            for pair in tags.split(","):
                name, eq, value = (s.strip() for s in pair.partition("="))
                if not eq or not NAME.fullmatch(name) or not VALUE.fullmatch(value) or name.startswith("ses:"):
                    return d.invalid("X-SES-MESSAGE-TAGS", "expected name=value pairs separated by commas")
                values[name] = value
        return d.add_metadata(ctx, "X-SES-MESSAGE-TAGS", values) if values else None
