"""The public plugin toolkit: what a plugin needs beyond the contract in :mod:`pipeline`.

HTML link finding and splicing (:mod:`pipeline.toolkit.html`), signed tokens
(:mod:`pipeline.toolkit.tokens`), the tracking plugin base (:mod:`pipeline.toolkit.tracking`),
compact VERP local parts (:mod:`pipeline.toolkit.verp`) and the stoplist reply
(:mod:`pipeline.toolkit.stoplist`). Built on the contract only. Built-in plugins import nothing
but :mod:`pipeline` and this package (``tests/test_layers.py`` enforces it), so a third-party
plugin can do everything a built-in does; every name below is listed in ``docs/plugins.md``.
"""

from pipeline.toolkit.html import (
    HtmlDocument,
    HtmlScan,
    Link,
    Protected,
    body_end_offset,
    count_conditional_comments,
    find_links,
    fit_charset,
    has_stylesheet,
    href_to_url,
    insert_before_body_end,
    is_placeholder,
    protect,
    rewrite_html,
    scan_html,
    splice,
)
from pipeline.toolkit.stoplist import HARD_BOUNCE_REPLY, STOPLIST_REPLY
from pipeline.toolkit.tokens import TokenSigner, copy_payload, load_signer, validate_base_url
from pipeline.toolkit.tracking import TrackingPlugin
from pipeline.toolkit.verp import MAX_LOCAL_PART, VerpToken, parse_verp, recipient_hash, verp_local_part

__all__ = [
    "MAX_LOCAL_PART",
    "HARD_BOUNCE_REPLY",
    "STOPLIST_REPLY",
    "HtmlDocument",
    "HtmlScan",
    "Link",
    "Protected",
    "TokenSigner",
    "TrackingPlugin",
    "VerpToken",
    "body_end_offset",
    "copy_payload",
    "count_conditional_comments",
    "find_links",
    "fit_charset",
    "has_stylesheet",
    "href_to_url",
    "insert_before_body_end",
    "is_placeholder",
    "load_signer",
    "parse_verp",
    "protect",
    "recipient_hash",
    "rewrite_html",
    "scan_html",
    "splice",
    "validate_base_url",
    "verp_local_part",
]
