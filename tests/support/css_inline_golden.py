"""What the css_inline plugin makes of every HTML part of the golden inputs, as sha256 digests.

Speeding up the engines must not change one output byte (email HTML is fragile, and every
template a sender has tested against today's output must come out the same). So the digests in
``tests/golden/css_inline_premailer.json`` were written once by this module on the code before
the speed-up, and ``tests/test_css_inline_premailer_fidelity.py`` recomputes them with the
current code. Regenerate only for an intended output change:

    PYTHONPATH=. python3 -m tests.support.css_inline_golden

Inputs: ``samples/*.eml``, and the shared corpus (``../shared/corpus/eml/*.eml`` and
``../shared/corpus/html/*.html``, read in place; see its LICENSES.md). Each HTML part goes
through the plugin's own ``on_transform`` (stylesheet check, engine, charset fit), once per
configuration below.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from typing import Any

from pipeline import Message, MessageContext
from pipeline.chain.driver import make_chain, make_config
from tests.support import CORPUS, ROOT, SAMPLES

GOLDEN = ROOT / "tests" / "golden" / "css_inline_premailer.json"
CORPUS_HTML = CORPUS.parent / "html"

#: name -> the css_inline plugin's settings (cache off: every part runs the engine)
CONFIGS: dict[str, dict[str, Any]] = {
    "premailer": {"engine": "premailer", "cache_size": 0},
    "premailer-keep-style-tags": {"engine": "premailer", "cache_size": 0, "keep_style_tags": True},
    "css_inline": {"engine": "css_inline", "cache_size": 0},
}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def html_as_message(html: bytes) -> bytes:
    """An HTML file as the single 8-bit UTF-8 part of a message."""
    head = (
        "From: a@example.com\r\nTo: b@example.com\r\nSubject: golden\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return head.encode("ascii") + html


#: Small documents reaching the corners of premailer's transform that the samples may not:
#: specificity order, pseudo-classes kept in <style>, !important, existing style attributes,
#: ``unset``, floated images, basic attributes (bgcolor, width, align), ``media`` and
#: ``data-premailer`` on <style>, several blocks, @media/@import/@font-face leftovers, fragments.
SYNTHETIC: list[str] = [
    '<html><head><style>p{color:red}</style></head><body><p><a href="https://example.com/p?id=1&amp;x=1">link 1</a></p></body></html>\r\n',
    "<!DOCTYPE html><html><head><style>p { color: #00f } .x { font-weight: bold } #y { color: green }"
    " p.x { color: black !important } a:hover { color: red } td:first-child { width: 10px }</style></head>"
    '<body><p class="x" id="y" style="margin: 0; color: unset">Hello &amp; welcome</p>'
    "<table><tr><td>a</td><td>b</td></tr></table></body></html>",
    "<html><head><style>img.l { float: left; width: 20px } img.r { float: right; height: 30px }"
    " td { background-color: #abc; text-align: center; vertical-align: top } .t { background-color: transparent }"
    ' * { margin: 0 } :root { color: red }</style></head><body><img class="l" src="a.png">'
    '<img class="r" src="b.png" style="border:0"><img src="c.png" style="float: left">'
    '<table><tr><td class="t">x</td><td width="5">y</td></tr></table></body></html>',
    '<html><head><style media="print">p { color: red }</style><style media="screen">p { color: blue }</style>'
    '<style data-premailer="ignore">p { color: green }</style><style>@import url("https://fonts.example.com/a.css");'
    " @font-face { font-family: X; src: url(x.woff) } @media (max-width: 600px) { p { color: red } .w { width: 100% } }"
    " p { font-family: X, sans-serif }</style><style>h1, h2 { color: #123456 } h2 { color: #654321 }</style>"
    "</head><body><h1>t</h1><h2>u</h2><p>v</p></body></html>",
    '<style>p { color: red } a { text-decoration: none }</style><p>fragment <a href="{{ url }}">x</a></p>',
    "<!--[if mso]><style>p{mso-line-height-rule:exactly}</style><![endif]--><html><body>"
    '<style>.a{color:red;-webkit-text-size-adjust:100%}</style><div class="a">\u00e9 &nbsp; &copy;</div></body></html>',
    "<html><head><style></style><style>p{}</style></head><body><p>empty</p></body></html>",
    "<html><head><style>ul li:nth-child(2) { color: red } li + li { color: blue } div > p { margin: 0 }"
    " [data-x] { color: green }</style></head><body><ul><li>1</li><li>2</li></ul><div data-x><p>q</p></div></body></html>",
]


def inputs(include_corpus: bool = True) -> dict[str, bytes]:
    """Input name (relative to the repository's parent) -> the message bytes."""
    found = {f"samples/{p.name}": p.read_bytes() for p in sorted(SAMPLES.glob("*.eml"))}
    found.update({f"synthetic/{i:02d}": html_as_message(h.encode()) for i, h in enumerate(SYNTHETIC)})
    if include_corpus and CORPUS.is_dir():
        found.update({f"corpus/eml/{p.name}": p.read_bytes() for p in sorted(CORPUS.glob("*.eml"))})
    if include_corpus and CORPUS_HTML.is_dir():
        found.update(
            {
                f"corpus/html/{p.name}": html_as_message(p.read_bytes())
                for p in sorted(CORPUS_HTML.glob("*.html"))
            }
        )
    return found


def plugin(config: dict[str, Any], data_dir: str) -> Any:
    """A css_inline plugin instance as the chain builds it."""
    cfg = make_config({"gateway": {"data_dir": data_dir}, "plugins": {"css_inline": config}}, ["css_inline"])
    return make_chain(cfg).plugins.plugins[0].instance


def digests(raw: bytes, instance: Any) -> dict[str, list[str]]:
    """sha256 of each HTML part's text, before and after the plugin's transform."""
    message = Message(raw)
    before = [sha(p.text()) for p in message.html_parts()]
    instance.on_transform(MessageContext(message=message))
    return {"input": before, "output": [sha(p.text()) for p in message.html_parts()]}


def compute(names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """{input name: {"input": [part digests], config name: [output part digests]}}."""
    msgs = inputs()
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plugins = {name: plugin(cfg, tmp) for name, cfg in CONFIGS.items()}
        for name, raw in msgs.items():
            if names is not None and name not in names:
                continue
            entry: dict[str, Any] = {}
            for cfg_name, instance in plugins.items():
                d = digests(raw, instance)
                entry["input"] = d["input"]
                entry[cfg_name] = d["output"]
            out[name] = entry
    return out


def main() -> None:
    golden = compute()
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    parts = sum(len(e["input"]) for e in golden.values())
    print(f"{GOLDEN}: {len(golden)} inputs, {parts} HTML parts", file=sys.stderr)


if __name__ == "__main__":
    main()
