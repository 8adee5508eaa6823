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
import importlib.metadata
import logging
import operator
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Literal, Protocol

import css_inline as _css_inline
import cssutils
from lxml import etree
from lxml.cssselect import CSSSelector
from premailer import Premailer
from premailer import premailer as _premailer_module
from premailer.merge_style import csstext_to_pairs, merge_styles
from pydantic import Field

from pipeline import MessageContext, Plugin, PluginConfig, PluginEnv, Verdict, hookimpl
from pipeline.toolkit import HtmlDocument, Protected, fit_charset, has_stylesheet, protect

cssutils.log.setLevel(logging.CRITICAL)  # cssutils logs every unknown property (mso-*) as an error


class Engine(Protocol):
    """One CSS inliner: HTML text in, HTML text out."""

    name: str

    def inline(self, html: str) -> str: ...

    def inline_many(self, htmls: list[str]) -> list[str]:
        """``[inline(h) for h in htmls]``, each step over every part before the next step."""
        ...


_BATCH_CHARS = 1 << 20  # HTML characters (and their trees) held at once by inline_many


def _batches(htmls: list[str]) -> Iterator[list[str]]:
    """``htmls`` in consecutive runs of at most ``_BATCH_CHARS`` characters (at least one part each).

    A message of many parts is inlined step by step over a run of parts (protect them all, parse
    them all, ...) instead of part by part: each step's code and data stay in the CPU caches,
    which made 10,000 small parts a third faster; the bound keeps memory at a few trees' worth."""
    batch: list[str] = []
    size = 0
    for html in htmls:
        if batch and size + len(html) > _BATCH_CHARS:
            yield batch
            batch, size = [], 0
        batch.append(html)
        size += len(html)
    if batch:
        yield batch


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

    def _rules_entry(self, css_body: str, ruleset_index: int) -> list[Any]:
        """[rules, leftover, leftover written out (None until asked)] for one stylesheet at one position."""
        # A message with many HTML parts usually repeats one stylesheet: parsing and re-serialising
        # it with cssutils was half of premailer's time per part. premailer only reads the result
        # (it extends its own list with the rule tuples), so handing out the same lists is safe.
        cache: dict[tuple[str, int], list[Any]] = self.__dict__.setdefault("_rules", {})
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
        entry = cache[key] = [rules, leftover, None]
        return entry

    def _parse_style_rules(self, css_body: str, ruleset_index: int) -> tuple[list[Any], list[Any]]:
        rules, leftover, _ = self._rules_entry(css_body, ruleset_index)
        return rules, leftover

    def _leftover_text(self, css_body: str, ruleset_index: int) -> str:
        """``_css_rules_to_string`` of the stylesheet's leftover rules, written out once.

        premailer rewrites the same (shared, cached) rule objects for every part: it marks each
        ``@media`` declaration ``!important`` again, which changes nothing after the first time,
        and serialises them again with cssutils, the costliest step of a part with ``@media``."""
        entry = self._rules_entry(css_body, ruleset_index)
        if entry[2] is None:
            entry[2] = self._css_rules_to_string(entry[1])
        text: str = entry[2]
        return text

    def _css_rules_to_string(self, rules: list[Any]) -> str:
        kept = [r.cssText for r in rules if isinstance(r, _KEPT_AT_RULES)]
        rest = super()._css_rules_to_string([r for r in rules if not isinstance(r, _KEPT_AT_RULES)])
        return "\n".join(kept + [rest] if rest else kept)

    def transform(self, html: Any = None, pretty_print: bool = True, **kwargs: Any) -> Any:
        """premailer's ``transform`` of a tree, its per-part overheads done once per stylesheet.

        A message's parts (and a campaign's messages) share their stylesheets: what depends on
        the CSS alone (selectors compiled, rules sorted, declarations parsed, leftover rules
        written out) is remembered per distinct set of ``<style>`` texts, and what depends on a
        style string alone (merged styles, the ``bgcolor``/``width``/``align`` attributes, an
        image's float) per string. The tree itself is walked and changed exactly as premailer
        3.10 does; any other premailer version, or a call outside this engine's one shape (a
        tree, no external CSS), runs premailer's own code.
        """
        if not self._fast or self.html is not None or not hasattr(html, "getroottree") or kwargs:
            return super().transform(html, pretty_print, **kwargs)
        return _transform_tree(self, html.getroottree())

    @functools.cached_property
    def _fast(self) -> bool:
        """Whether :func:`_transform_tree` covers these settings (it mirrors premailer 3.10.0 only)."""
        return (
            _PREMAILER_3_10_0
            and self.method == "html"
            and not self.allow_network
            and not self.external_styles
            and not self.css_text
            and not (self.base_url and not self.disable_link_rewrites)
            and not self.remove_classes
            and not self.capitalize_float_margin
        )

    @functools.cached_property
    def _plans(self) -> dict[tuple[str | None, ...], _Plan]:
        return {}  # sequence of <style> texts -> what premailer derives from them

    @functools.cached_property
    def _basic_attributes(self) -> dict[str, list[tuple[str, str]]]:
        return {}  # merged style -> the HTML attributes premailer adds for it


# premailer.transform as of 3.10.0, for the settings PremailerEngine passes, with its pure steps
# memoised (see _Premailer.transform). The fidelity tests compare it with premailer's own code.
_PREMAILER_3_10_0 = importlib.metadata.version("premailer") == "3.10.0"
_MEMO_LIMIT = 4096  # entries per memo table; a full table is emptied (a new campaign's styles)
_PLAN_LIMIT = 256  # stylesheet sets per engine (as _Premailer._RULES_CACHE): a plan holds all its rules
_FILTER_PSEUDOSELECTORS = _premailer_module.FILTER_PSEUDOSELECTORS
_by_specificity = operator.itemgetter(0)


class _Plan:
    """What premailer derives from one sequence of ``<style>`` texts, independent of the tree."""

    __slots__ = ("rules", "merged")

    def __init__(self, rules: list[tuple[CSSSelector, str, str, list[Any]]]) -> None:
        # (compiled selector, pseudo-class kept for merge_styles, declarations, their pairs once parsed)
        self.rules = rules
        self.merged: dict[tuple[str, tuple[int, ...]], str] = {}  # (inline style, rules matched) -> style


_selectors: dict[str, CSSSelector] = {}  # pure functions of the string: shared by every engine
_image_floats: dict[str, str] = {}


def _memo_put(table: dict[Any, Any], key: Any, value: Any, limit: int = _MEMO_LIMIT) -> None:
    if len(table) >= limit:
        table.clear()
    table[key] = value


def _selector(selector: str) -> CSSSelector:
    compiled = _selectors.get(selector)
    if compiled is None:
        compiled = CSSSelector(selector)
        _memo_put(_selectors, selector, compiled)
    return compiled


def _plan(engine: _Premailer, bodies: tuple[str | None, ...], rules: list[tuple[Any, str, str]]) -> _Plan:
    """The rules of these stylesheets in premailer's order, each with its selector compiled."""
    plan = engine._plans.get(bodies)
    if plan is None:
        steps: list[tuple[CSSSelector, str, str, list[Any]]] = []
        for _, selector, style in sorted(rules, key=_by_specificity):
            new_selector = selector
            class_ = ""
            if ":" in selector:
                new_selector, class_ = re.split(":", selector, maxsplit=1)
                class_ = ":" + class_
            if class_ in _FILTER_PSEUDOSELECTORS or class_.startswith(":nth-child"):
                class_ = ""
            else:
                selector = new_selector
            assert selector
            steps.append((_selector(selector), class_, style, []))
        plan = _Plan(steps)
        _memo_put(engine._plans, bodies, plan, _PLAN_LIMIT)
    return plan


def _basic_html_attributes(engine: _Premailer, style_content: str) -> list[tuple[str, str]]:
    """premailer's ``_style_to_basic_html_attributes`` minus the element: which attributes a style sets."""
    found = engine._basic_attributes.get(style_content)
    if found is None:
        recorder = etree.Element("x")
        engine._style_to_basic_html_attributes(recorder, style_content, force=True)
        found = list(recorder.attrib.items())
        _memo_put(engine._basic_attributes, style_content, found)
    return found


def _image_float(style: str) -> str:
    found = _image_floats.get(style)
    if found is None:
        found = cssutils.parseStyle(style).float
        _memo_put(_image_floats, style, found)
    return found


def _transform_tree(engine: _Premailer, tree: Any) -> Any:
    """premailer 3.10's ``Premailer.transform`` on a tree (``html.getroottree()``), step for step.

    The settings are PremailerEngine's: no base URL, no external styles or CSS text, network
    off (``<style>`` only), ``strip_important`` and ``remove_classes`` off, images aligned.
    premailer's fixed queries are element iterations here: ``CSSSelector("head")`` is the XPath
    ``descendant-or-self::head`` from the root element, which is what ``tree.iter("head")``
    yields (the same elements, in document order) at a third of the cost for a small part."""
    page = tree
    if not engine.disable_leftover_css:  # get_or_create_head: it adds a <head> when there is none
        if next(tree.iter("head"), None) is None:
            head = etree.Element("head")
            body = list(tree.iter("body"))[0]
            body.getparent().insert(0, head)
    rules: list[Any] = []
    bodies: list[str | None] = []
    index = 0
    for element in list(page.iter("style")):
        media = element.attrib.get("media")
        if media and media not in ("all", "screen"):
            continue
        data_attribute = element.attrib.get(engine.attribute_name)
        if data_attribute:
            if data_attribute == "ignore":
                del element.attrib[engine.attribute_name]
                continue
            warnings.warn(
                f"Unrecognized {engine.attribute_name} attribute ({data_attribute!r})", stacklevel=2
            )
        css_body = element.text
        these_rules, these_leftover = engine._parse_style_rules(css_body, index)
        bodies.append(css_body)
        index += 1
        rules.extend(these_rules)
        parent_of_element = element.getparent()
        if these_leftover or engine.keep_style_tags:
            if engine.keep_style_tags:
                element.text = css_body
            else:
                element.text = engine._leftover_text(css_body, index - 1)
            if engine.strip_important:
                element.text = _premailer_module._importants.sub("", element.text)
        else:
            parent_of_element.remove(element)
    plan = _plan(engine, tuple(bodies), rules)
    elements: dict[int, tuple[Any, list[int]]] = {}
    for i, (sel, _, _, _) in enumerate(plan.rules):
        for item in sel(page):
            entry = elements.get(id(item))
            if entry is None:
                elements[id(item)] = (item, [i])
            else:
                entry[1].append(i)
    validate = not engine.disable_validation
    for item, matched in elements.values():
        inline_style = item.attrib.get("style", "")
        key = (inline_style, tuple(matched))
        final_style = plan.merged.get(key)
        if final_style is None:
            styles = []
            for i in matched:
                step = plan.rules[i]
                if not step[3]:
                    step[3].append(csstext_to_pairs(step[2], validate=validate))
                styles.append(step[3][0])
            final_style = merge_styles(
                inline_style,
                styles,
                [plan.rules[i][1] for i in matched],
                remove_unset_properties=engine.remove_unset_properties,
            )
            _memo_put(plan.merged, key, final_style)
        if final_style:
            item.attrib["style"] = final_style
        for name, value in _basic_html_attributes(engine, final_style):
            item.attrib[name] = value
    if engine.align_floating_images:
        for item in [img for img in page.iter("img") if "style" in img.attrib]:  # //img[@style]
            image_float = _image_float(item.attrib["style"])
            if image_float == "right":
                item.attrib["align"] = "right"
            elif image_float == "left":
                item.attrib["align"] = "left"
    return tree


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
        doc.apply(self._premailer.transform)
        return doc.serialise()

    def inline_many(self, htmls: list[str]) -> list[str]:
        out: list[str] = []
        transform = self._premailer.transform
        for batch in _batches(htmls):
            docs = [HtmlDocument(html) for html in batch]
            for doc in docs:
                doc.apply(transform)
            out.extend(doc.serialise() for doc in docs)
        return out


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
        return self._restore(prot, self._inliner.inline(prot.text))

    def inline_many(self, htmls: list[str]) -> list[str]:
        out: list[str] = []
        inline = self._inliner.inline
        for batch in _batches(htmls):
            prots = [protect(html) for html in batch]
            inlined = [inline(prot.text) for prot in prots]
            out.extend(self._restore(prot, text) for prot, text in zip(prots, inlined, strict=True))
        return out

    @staticmethod
    def _restore(prot: Protected, out: str) -> str:
        """The inliner's output as the part's text: wrapping dropped, protection undone."""
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

    def inline_many(self, htmls: list[str]) -> list[str]:
        """:meth:`inline` of each text; the texts not remembered go to the engine together."""
        size = self.config.cache_size
        if not size:
            return self.engine.inline_many(htmls)
        out: list[str | None] = [None] * len(htmls)
        todo: dict[str, list[int]] = {}  # text not remembered -> where it occurs (once inlined)
        with self._cache_lock:
            for i, html in enumerate(htmls):
                hit = self._cache.get(html)
                if hit is not None:
                    self._cache.move_to_end(html)
                    out[i] = hit
                else:
                    todo.setdefault(html, []).append(i)
        if todo:
            done = self.engine.inline_many(list(todo))
            with self._cache_lock:
                for (html, where), result in zip(todo.items(), done, strict=True):
                    for i in where:
                        out[i] = result
                    self._cache[html] = result
                    while len(self._cache) > size:
                        self._cache.popitem(last=False)
        return [text for text in out if text is not None]

    @hookimpl
    def on_transform(self, ctx: MessageContext) -> Verdict | None:
        message = ctx.message
        parts = []
        texts = []
        for part in message.html_parts():
            text = part.text()
            if has_stylesheet(text):
                parts.append(part)
                texts.append(text)
        for part, text, out in zip(parts, texts, self.inline_many(texts), strict=True):
            out = fit_charset(out, part.codec)
            if out != text:
                message.replace_html(part, out)
        return None
