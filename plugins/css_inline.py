"""css_inline: move ``<style>`` rules into ``style`` attributes, once per message (feature ``inlinecss``).

Gmail and many webmail clients ignore or strip ``<style>`` blocks, so rules are inlined before
fan-out. Two engines behind one interface: ``premailer`` (default; lxml + cssutils) and
``css_inline`` (the Rust library, much faster). Both run with the network off: a
``<link rel=stylesheet>`` in a submitted message never makes the gateway fetch a URL; the tag
is left in place for the clients that honour it, and so are ``@import`` and ``@font-face``
rules (premailer alone drops them, and with them the template's web fonts). ``@media`` rules
keep their ``!important`` (they override inlined styles on phones), and the doctype, MSO conditional comments,
``{{ }}`` placeholders, entities and URL attributes come back as written (see
:mod:`pipeline.toolkit.html`). Parts without a stylesheet are not touched at all. Each worker remembers
the last ``cache_size`` results, keyed by the exact HTML text: a campaign's template, sent as
many messages, is inlined once.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections import OrderedDict
from typing import Any, Literal, Protocol

import css_inline as _css_inline
import cssutils
from premailer import Premailer
from pydantic import Field

from pipeline import MessageContext, Plugin, PluginConfig, PluginEnv, Verdict, hookimpl
from pipeline.toolkit import HtmlDocument, fit_charset, has_stylesheet, protect

cssutils.log.setLevel(logging.CRITICAL)  # cssutils logs every unknown property (mso-*) as an error


class Engine(Protocol):
    """One CSS inliner: HTML text in, HTML text out."""

    name: str

    def inline(self, html: str) -> str: ...


# Rules that inline to nothing but change what a reader sees: the stylesheets and web fonts the
# template's text is set in. premailer keeps only @media and drops every other @-rule.
_KEPT_AT_RULES = (cssutils.css.CSSImportRule, cssutils.css.CSSFontFaceRule)


def _refuse_fetch(url: str) -> None:
    """cssutils' fetcher for ``@import``: fetch nothing (its default fetcher would GET the URL)."""
    return None


@functools.lru_cache(maxsize=1000)  # as premailer's own parse cache: a template's CSS is parsed once
def _parse_css_offline(css_body: str, validate: bool) -> Any:
    return cssutils.CSSParser(fetcher=_refuse_fetch).parseString(css_body, validate=validate)


class _Premailer(Premailer):
    """premailer that also leaves ``@import`` (first, as CSS requires) and ``@font-face`` in ``<style>``.

    Overrides premailer's two leftover hooks (3.10 API): which rules stay, and how they are written;
    and its CSS parse, so that an ``@import url(...)`` in a submitted message is never fetched
    (``allow_network=False`` covers ``<link>`` only; cssutils fetched imports while parsing).
    """

    def _parse_css_string(self, css_body: str, validate: bool = True) -> Any:
        return _parse_css_offline(css_body, validate)

    _RULES_CACHE = 256  # distinct (stylesheet, position) pairs remembered per engine

    def _parse_style_rules(self, css_body: str, ruleset_index: int) -> tuple[list[Any], list[Any]]:
        # A message with many HTML parts usually repeats one stylesheet: parsing and re-serialising
        # it with cssutils was half of premailer's time per part. premailer only reads the result
        # (it extends its own list with the rule tuples), so handing out the same lists is safe.
        cache: dict[tuple[str, int], tuple[list[Any], list[Any]]] = self.__dict__.setdefault("_rules", {})
        key = (css_body, ruleset_index)
        hit = cache.get(key)
        if hit is not None:
            return hit
        rules, leftover = super()._parse_style_rules(css_body, ruleset_index)
        if css_body:
            sheet = self._parse_css_string(css_body, validate=not self.disable_validation)  # cached
            leftover = [r for r in sheet if isinstance(r, _KEPT_AT_RULES)] + leftover
        if len(cache) >= self._RULES_CACHE:
            cache.pop(next(iter(cache)))
        cache[key] = (rules, leftover)
        return rules, leftover

    def _css_rules_to_string(self, rules: list[Any]) -> str:
        kept = [r.cssText for r in rules if isinstance(r, _KEPT_AT_RULES)]
        rest = super()._css_rules_to_string([r for r in rules if not isinstance(r, _KEPT_AT_RULES)])
        return "\n".join(kept + [rest] if rest else kept)


class PremailerEngine:
    """premailer on a tree parsed once by :class:`pipeline.toolkit.html.HtmlDocument`."""

    name = "premailer"

    def __init__(self, keep_style_tags: bool) -> None:
        self._premailer = _Premailer(
            base_url=None,
            disable_link_rewrites=True,
            keep_style_tags=keep_style_tags,
            strip_important=False,
            allow_network=False,
            allow_loading_external_files=False,
            cssutils_logging_level=logging.CRITICAL,
            disable_validation=True,  # keep properties cssutils does not know (mso-*, -webkit-*)
        )

    def inline(self, html: str) -> str:
        doc = HtmlDocument(html)
        doc.apply(lambda root: self._premailer.transform(root))
        return doc.serialise()


_SECTION = re.compile(r"<(head|body)\b[^>]*>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL)


class CssInlineEngine:
    """The ``css_inline`` library (html5ever + Servo's selectors), on protected text."""

    name = "css_inline"

    def __init__(self, keep_style_tags: bool) -> None:
        self._inliner = _css_inline.CSSInliner(
            inline_style_tags=True,
            keep_style_tags=keep_style_tags,
            keep_link_tags=True,
            keep_at_rules=True,
            load_remote_stylesheets=False,
            base_url=None,
        )

    def inline(self, html: str) -> str:
        prot = protect(html)
        out = self._inliner.inline(prot.text)
        if prot.fragment:  # html5ever wrapped the fragment: keep only what was inside
            out = "".join(m.group(2) for m in _SECTION.finditer(out))
        elif out.lstrip()[:9].lower() == "<!doctype":  # the original doctype is in prot.prefix
            out = out.lstrip()
            out = out[out.index(">") + 1 :]
        return prot.restore(out)


class CssInline(Plugin):
    """Inline CSS in every HTML part; charset and transfer encoding kept (via ``Message.replace_html``)."""

    name = "css_inline"
    feature = "inlinecss"
    feature_default = True
    version = "1.0"

    class Config(PluginConfig):
        engine: Literal["premailer", "css_inline"] = "premailer"
        keep_style_tags: bool = False  # True: leave the original <style> blocks too (rules also inlined)
        cache_size: int = Field(default=32, ge=0)  # inlined HTML remembered per worker (0: off)

    def __init__(self, config: Any, env: PluginEnv) -> None:
        super().__init__(config, env)
        engines: dict[str, type[PremailerEngine] | type[CssInlineEngine]] = {
            "premailer": PremailerEngine,
            "css_inline": CssInlineEngine,
        }
        self.engine: Engine = engines[config.engine](config.keep_style_tags)
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_lock = threading.Lock()

    def inline(self, html: str) -> str:
        """The engine's output for ``html``, remembered for the next identical part.

        A campaign sends the same template as many messages (one per recipient, personalised
        later by click tracking and the pixel): inlining is a pure function of the HTML text and
        this plugin's settings, so an identical text gets the identical result without running
        the engine again. Keyed by the whole text (no hash collisions); least recently used first out.
        """
        size = self.config.cache_size
        if size:
            with self._cache_lock:
                hit = self._cache.get(html)
                if hit is not None:
                    self._cache.move_to_end(html)
                    return hit
        out = self.engine.inline(html)
        if size:
            with self._cache_lock:
                self._cache[html] = out
                while len(self._cache) > size:
                    self._cache.popitem(last=False)
        return out

    @hookimpl
    def on_transform(self, ctx: MessageContext) -> Verdict | None:
        message = ctx.message
        for part in message.html_parts():
            text = part.text()
            if not has_stylesheet(text):
                continue
            out = fit_charset(self.inline(text), part.codec)
            if out != text:
                message.replace_html(part, out)
        return None
