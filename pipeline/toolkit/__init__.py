"""The public plugin toolkit: what a plugin needs beyond the contract in :mod:`pipeline`.

HTML link finding and splicing (:mod:`pipeline.toolkit.html`), signed tokens
(:mod:`pipeline.toolkit.tokens`), the tracking plugin base (:mod:`pipeline.toolkit.tracking`),
compact VERP local parts (:mod:`pipeline.toolkit.verp`) and the stoplist reply
(:mod:`pipeline.toolkit.stoplist`). Built on the contract only. Built-in plugins import nothing
but :mod:`pipeline` and this package (``tests/test_layers.py`` enforces it), so a third-party
plugin can do everything a built-in does; every name below is listed in ``docs/plugins.md``.

Every name is imported on first use (PEP 562 ``__getattr__``), so a process that needs one helper
does not load them all: the gateway's main process uses the token signer (tracking links) and the
admission plugins' dialects, never the HTML layer and its lxml (that is the workers' work).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_MODULE_OF = {  # each public name and the module of this package that defines it
    "HtmlDocument": "html",
    "HtmlScan": "html",
    "Link": "html",
    "Protected": "html",
    "body_end_offset": "html",
    "count_conditional_comments": "html",
    "find_links": "html",
    "fit_charset": "html",
    "has_stylesheet": "html",
    "href_to_url": "html",
    "insert_before_body_end": "html",
    "is_placeholder": "html",
    "protect": "html",
    "rewrite_html": "html",
    "scan_html": "html",
    "splice": "html",
    "HARD_BOUNCE_REPLY": "stoplist",
    "STOPLIST_REPLY": "stoplist",
    "TokenSigner": "tokens",
    "copy_payload": "tokens",
    "load_signer": "tokens",
    "validate_base_url": "tokens",
    "TrackingPlugin": "tracking",
    "MAX_LOCAL_PART": "verp",
    "VerpToken": "verp",
    "parse_verp": "verp",
    "recipient_hash": "verp",
    "verp_local_part": "verp",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups find it without this function
    return value


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
