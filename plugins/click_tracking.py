"""click_tracking: rewrite links to signed redirect URLs, once per recipient copy (feature ``trackclicks``).

Every ``http``/``https`` ``<a href>`` in an HTML part becomes ``{base_url}/c/{token}``; the
token (:mod:`pipeline.toolkit.tokens`) carries the original URL, queue id, recipient, campaign, letter
id and credential, so the redirect needs no database. The URL signed is what a browser would
request: entities decoded (``&amp;`` -> ``&``), percent escapes untouched.

Only the ``href`` values are replaced, by offset, in the original text (:func:`pipeline.toolkit.html.rewrite_html`):
every other byte of the part stays as it was, which is the only safe way with email HTML. The
tokenising pass is shared: every copy of one template reuses one scan, and the open pixel
inserted after this plugin reuses the scan of this plugin's result.

Never rewritten: other schemes (``mailto:``, ``tel:``, ...), ``#anchors`` and relative links,
template placeholders (``{{ url }}``), links already on the tracking base, links carrying an
opt-out attribute (``data-no-track``, ``clicktracking="off"``, ``data-track-disabled``,
``ses:no-track``; the attribute is left in place), links inside MSO conditional comments, and,
with ``skip_visible_urls`` (default on), links whose visible text is itself a URL: showing one
address and going through another is what phishing filters flag (SMTPeter's "preventscam").
"""

from __future__ import annotations

import re
from typing import Any

from pipeline import MessageContext, Verdict, hookimpl
from pipeline.toolkit import Link, TrackingPlugin, copy_payload, is_placeholder, rewrite_html, scan_html

_HTTP = ("http://", "https://")
_VISIBLE_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|www\.)\S+$", re.IGNORECASE)
_TEXT_URL = re.compile(r"https?://[^\s<>\"'`{}|\\^\[\]]+", re.IGNORECASE)
_TRAILING = ".,;:!?)'\""
_PRESENCE_OPT_OUTS = ("data-no-track", "data-track-disabled", "ses:no-track")
_OFF_VALUES = {"off", "false", "0", "no"}
_NEGATIVE = {"false", "0", "no"}  # data-no-track="false" does not opt out
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # raw bytes the part's charset could not decode


def skip_reason(link: Link, base_url: str, skip_visible_urls: bool) -> str | None:
    """Why a link is left alone (``None``: track it)."""
    url = link.url
    if is_placeholder(link.raw_href):
        return "placeholder"
    if not url.lower().startswith(_HTTP):
        return "not http(s)"
    if _UNDECODABLE.search(url):
        return "undecodable bytes in the URL"  # cannot be signed as text; leave it as sent
    if url.startswith(base_url + "/"):
        return "already tracked"
    for name in _PRESENCE_OPT_OUTS:
        if name in link.attrs and (link.attrs[name] or "").strip().lower() not in _NEGATIVE:
            return f"opt-out ({name})"
    ct = link.attrs.get("clicktracking")
    if ct is not None and ct.strip().lower() in _OFF_VALUES:
        return "opt-out (clicktracking)"
    if skip_visible_urls and _VISIBLE_URL.match(link.text):
        return "visible text is a URL"
    return None


class ClickTracking(TrackingPlugin):
    """Per recipient: every trackable link becomes a signed redirect through the tracking service."""

    name = "click_tracking"
    feature = "trackclicks"
    feature_default = True
    version = "1.0"

    class Config(TrackingPlugin.Config):
        text_parts: bool = False  # also rewrite bare URLs in text/plain parts
        skip_visible_urls: bool = True  # SMTPeter's preventscam rule

    _last_skips: tuple[tuple[Link, ...], dict[int, bool]] | None = None

    def _payload(self, ctx: MessageContext) -> dict[str, Any]:
        return {**copy_payload("c", ctx), "u": None}

    def _skips(self, links: tuple[Link, ...]) -> dict[int, bool]:
        """Whether each link (by id) is left alone: a pure function of the link and the config,
        so worked out once per scan, and every recipient copy of the same text (one scan, the
        same link objects) reuses it. The links are kept with it, so their ids stay theirs."""
        last = self._last_skips
        if last is not None and last[0] is links:
            return last[1]
        visible = self.config.skip_visible_urls
        skips = {id(link): skip_reason(link, self.base_url, visible) is not None for link in links}
        self._last_skips = (links, skips)
        return skips

    def tracking_url(self, url: str, base: dict[str, Any]) -> str:
        return f"{self.base_url}/c/{self.signer.sign({**base, 'u': url})}"

    @hookimpl
    def on_personalize(self, ctx: MessageContext) -> Verdict | None:
        message = ctx.message
        base = self._payload(ctx)
        skip_visible_urls = self.config.skip_visible_urls

        def tracked(link: Link) -> str | None:
            skip = skips.get(id(link))  # (a text too short to be remembered is scanned anew)
            if skip is None:
                skip = skip_reason(link, self.base_url, skip_visible_urls) is not None
            return None if skip else self.tracking_url(link.url, base)

        for part in message.html_parts():
            text = part.text()
            skips = self._skips(scan_html(text).links)
            out = rewrite_html(text, href=tracked)
            if out is not text:
                message.replace_html(part, out)
        if self.config.text_parts:
            for part in message.text_parts():
                text = part.text()
                out = _TEXT_URL.sub(lambda m: self._text_url(m, base), text)
                if out != text:
                    message.replace_text(part, out)
        return None

    def _text_url(self, m: re.Match[str], base: dict[str, Any]) -> str:
        found = m.group(0)
        if m.string.startswith(("{{", "{%"), m.end()):  # https://x/?u={{ id }}: merged later
            return found
        url = found.rstrip(_TRAILING)
        if found.endswith(")") and url.count("(") > url.count(")"):
            url += ")"  # https://en.wikipedia.org/wiki/Foo_(bar)
        rest = found[len(url) :]
        if url.startswith(self.base_url + "/") or len(url) <= len("https://") or _UNDECODABLE.search(url):
            return found
        return self.tracking_url(url, base) + rest
