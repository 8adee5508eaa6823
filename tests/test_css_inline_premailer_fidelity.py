"""css_inline gives byte for byte what it gave before it was made faster.

``tests/golden/css_inline_premailer.json`` holds the sha256 of every HTML part of every sample,
every shared-corpus template and a few premailer corner cases after the plugin's transform,
written by :mod:`tests.support.css_inline_golden` on the code before the per-part overheads were
removed (premailer's own output, the css_inline engine's, and premailer with ``keep_style_tags``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import CORPUS
from tests.support.css_inline_golden import CONFIGS, GOLDEN, digests, inputs, plugin

EXPECTED: dict[str, dict[str, Any]] = json.loads(GOLDEN.read_text())
AVAILABLE = inputs()


@pytest.fixture(scope="module")
def plugins() -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        yield {name: plugin(cfg, tmp) for name, cfg in CONFIGS.items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_html_part_is_inlined_to_exactly_the_golden_bytes(name: str, plugins: dict[str, Any]) -> None:
    # the shared corpus is part of the test inputs (as for the click-tracking corpus test): its
    # absence is a failure that says where it was looked for, not a skip that hides lost coverage
    assert name in AVAILABLE, (
        f"{name} is in the golden file but missing: samples/ changed, or the shared corpus is not at "
        f"{CORPUS.parent} (set SMTPGATE_CORPUS)")
    expected = EXPECTED[name]
    for config, instance in plugins.items():
        got = digests(AVAILABLE[name], instance)
        assert got["input"] == expected["input"], f"{name}: the input changed; regenerate the golden file"
        assert got["output"] == expected[config], f"{name}: {config} output differs from the golden bytes"


def test_every_sample_is_in_the_golden_file() -> None:
    missing = [name for name in AVAILABLE if name not in EXPECTED]
    assert not missing, f"not in {GOLDEN.name}: {missing}"


# premailer's own transform against the engine's (the per-stylesheet steps remembered): the same
# text for every golden part, and for generated documents that reuse a few stylesheets, so the
# second and later parts of a stylesheet take the remembered steps.

STYLESHEETS = [
    "p { color: #00f } .x { font-weight: bold } #y { color: green } p.x { color: black !important }"
    " a:hover { color: red } td:first-child { width: 10px } li:nth-child(2) { color: red }",
    "img.l { float: left; width: 20px } img.r { float: right; height: 30px } td { background-color: #abc;"
    " text-align: center; vertical-align: top } .t { background-color: transparent } * { margin: 0 }",
    "@import url(https://fonts.example.com/a.css); @font-face { font-family: X; src: url(x.woff) }"
    " @media (max-width: 600px) { p { color: red } .w { width: 100% } } p, h1 { font-family: X, sans-serif }"
    " div > p { margin: 0; color: unset } [data-x] { color: green } .w { width: 600px; height: 20px }",
]
ELEMENTS = [
    '<p class="x">a &amp; b</p>',
    '<p id="y" class="x w" style="margin: 1px; color: unset">c</p>',
    '<img class="l" src="a.png">',
    '<img class="r" src="b.png" style="border: 0">',
    '<img src="c.png" style="float: right">',
    '<table><tr><td class="t">x</td><td width="5">y</td></tr></table>',
    '<ul><li>1</li><li class="w">2</li></ul>',
    '<div data-x><p>q <a href="https://example.com/?a=1&amp;b=2">l</a></p></div>',
    "<h1>t</h1>",
    '<!--[if mso]><p class="x">o</p><![endif]-->',
    '<IMG SRC="d.png" STYLE="FLOAT: LEFT" CLASS="r"><svg><style>p { color: red }</style></svg>',
    '<o:p class="x">mso</o:p><v:img style="float: left"></v:img><p class="x" style="">e</p>',
]


def _premailer_engines(keep_style_tags: bool) -> tuple[Any, Any]:
    from plugins.css_inline import PremailerEngine

    fast, stock = PremailerEngine(keep_style_tags), PremailerEngine(keep_style_tags)
    assert fast._premailer._fast, "the remembered steps are not in use with this premailer"
    stock._premailer.__dict__["_fast"] = False  # premailer's own transform
    return fast, stock


def _generated_documents(seed: int, count: int) -> list[str]:
    import random

    rnd = random.Random(seed)
    docs = []
    for _ in range(count):
        sheets = "".join(
            f"<style{rnd.choice(['', ' media=screen', ' media=print'])}>{rnd.choice(STYLESHEETS)}</style>"
            for _ in range(rnd.randint(1, 2))
        )
        body = "".join(rnd.choice(ELEMENTS) for _ in range(rnd.randint(0, 6)))
        head = rnd.choice(
            [
                "<HTML><HEAD>{s}</HEAD><BODY>{b}</BODY></HTML>",
                "<html><head><title>t</title></head>{s}<body>{b}</body></html>",
            ]
            + ["<html><head>{s}</head><body>{b}</body></html>", "{s}{b}", "<html><body>{s}{b}</body></html>"]
        )
        docs.append(rnd.choice(["", "<!DOCTYPE html>"]) + head.format(s=sheets, b=body))
    return docs


@pytest.mark.parametrize("keep_style_tags", [False, True])
def test_engine_gives_what_premailers_own_transform_gives(keep_style_tags: bool) -> None:
    from pipeline import Message
    from pipeline.toolkit import has_stylesheet

    fast, stock = _premailer_engines(keep_style_tags)
    htmls = [p.text() for raw in AVAILABLE.values() for p in Message(raw).html_parts()]
    htmls = [h for h in htmls if has_stylesheet(h)] + _generated_documents(10, 400)
    for html in htmls + htmls:  # the second round takes the remembered steps everywhere
        assert fast.inline(html) == stock.inline(html), html
