"""postmark_headers: Postmark's ``X-PM-*`` SMTP headers, read at DATA.

Postmark documents them for SMTP sending (https://postmarkapp.com/developer/user-guide/send-email-with-smtp):
``X-PM-Tag`` (one tag), ``X-PM-Metadata-<key>: value`` (metadata on every event and webhook),
``X-PM-TrackOpens: true|false``, ``X-PM-TrackLinks: None|HtmlAndText|HtmlOnly|TextOnly``
and ``X-PM-Message-Stream`` (the stream id, kept in ``ctx.notes["message_stream"]``: smtpgate has
no streams, so it selects nothing here).
A malformed value is a ``550 5.6.0`` naming the header.
"""

from __future__ import annotations

import re

from pipeline import MessageContext, Reject, hookimpl
from pipeline.toolkit import dialects as d

TRACK_LINKS = {"none": False, "htmlandtext": True, "htmlonly": True, "textonly": True}
STREAM = re.compile(r"[a-z0-9-]{1,30}")  # Postmark stream ids: lower-case letters, digits, dashes
METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,20}")  # Postmark: keys up to 20 characters


class PostmarkHeaders(d.DialectPlugin):
    """Maps X-PM-* onto a tag, metadata, the open/click switches and the message stream."""

    name = "postmark_headers"
    feature = "postmark"

    @hookimpl
    def on_message(self, ctx: MessageContext) -> Reject | None:
        if not d.has_prefix(ctx, "X-PM-"):
            return None  # (every step reads an X-PM-* header: none to read)
        tag = d.single(ctx, "X-PM-Tag")
        if isinstance(tag, Reject):
            return tag
        if tag is not None:
            verdict = d.add_tags(ctx, "X-PM-Tag", [tag])
            if verdict is not None:
                return verdict
            d.campaign_from_tag(ctx, tag)
        metadata = {}
        for key, value in d.with_prefix(ctx, "X-PM-Metadata-"):
            if not METADATA_KEY.fullmatch(key):
                return d.invalid(f"X-PM-Metadata-{key}", "a metadata key is 1-20 characters A-Z a-z 0-9 _ . -")
            metadata[key] = value
        verdict = d.add_metadata(ctx, "X-PM-Metadata", metadata) if metadata else None
        if verdict is not None:
            return verdict
        verdict = d.switch_from(ctx, "X-PM-TrackOpens", ("trackopens",), true=("true",), false=("false",))
        if verdict is not None:
            return verdict
        links = d.single(ctx, "X-PM-TrackLinks")
        if isinstance(links, Reject):
            return links
        if links is not None:
            if links.strip().lower() not in TRACK_LINKS:
                return d.invalid("X-PM-TrackLinks", "expected None, HtmlAndText, HtmlOnly or TextOnly")
            d.set_switch(ctx, "trackclicks", TRACK_LINKS[links.strip().lower()], "X-PM-TrackLinks")
        stream = d.single(ctx, "X-PM-Message-Stream")
        if isinstance(stream, Reject):
            return stream
        if stream is not None:
            if not STREAM.fullmatch(stream):
                return d.invalid("X-PM-Message-Stream", "expected a stream id (a-z 0-9 -, up to 30)")
            ctx.notes["message_stream"] = stream
        return None
