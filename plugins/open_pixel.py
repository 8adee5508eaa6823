"""open_pixel: one signed 1x1 transparent GIF per HTML part, per recipient copy (feature ``trackopens``).

The ``<img>`` goes just before the last ``</body>`` (outside comments), so it is never before
the preheader (the first thing in ``<body>``, which inbox previews show); without ``</body>``
it goes before ``</html>``, and without either at the end of the part (a bare fragment is not
wrapped). It is spliced into the original text: nothing else in the part changes.

``alt=""`` keeps screen readers and "images off" views quiet; ``width``/``height`` attributes
and the inline style make it take no visible space (``display:block`` avoids the line box an
inline image would open at the end of the body).

The pixel goes in through :func:`pipeline.toolkit.html.rewrite_html`, the same tokenising pass
click tracking uses: after click tracking, the scan of its result is reused, not redone.
"""

from __future__ import annotations

import html as _html

from pipeline import MessageContext, Verdict, hookimpl
from pipeline.toolkit import TrackingPlugin, copy_payload, rewrite_html

PIXEL_STYLE = (
    "display:block;width:1px;height:1px;max-width:1px;max-height:1px;"
    "border:0;margin:0;padding:0;overflow:hidden;opacity:0;"
)


class OpenPixel(TrackingPlugin):
    """Per recipient: a tracking pixel whose token names the queue id, recipient, campaign and letter."""

    name = "open_pixel"
    feature = "trackopens"
    feature_default = True
    version = "1.0"

    Config = TrackingPlugin.Config

    def pixel(self, ctx: MessageContext) -> str:
        """The ``<img>`` tag for one recipient copy."""
        token = self.signer.sign(copy_payload("o", ctx))
        src = _html.escape(f"{self.base_url}/o/{token}.gif")
        return f'<img src="{src}" width="1" height="1" alt="" border="0" style="{PIXEL_STYLE}" />'

    @hookimpl
    def on_personalize(self, ctx: MessageContext) -> Verdict | None:
        message = ctx.message
        parts = message.html_parts()
        if not parts:
            return None
        tag = self.pixel(ctx)
        for part in parts:
            message.replace_html(part, rewrite_html(part.text(), snippet=tag))
        return None
