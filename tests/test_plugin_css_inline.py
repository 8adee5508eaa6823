"""css_inline, with both engines: rules inlined, the network never used, and what email clients
rely on (doctype, conditional comments, @media with !important, placeholders, entities, charset)
kept."""

from __future__ import annotations

import http.server
import logging
import re
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from pipeline import Message
from pipeline.chain.driver import make_chain, make_config, run_chain
from pipeline.config import ConfigError
from plugins.css_inline import CssInline
from tests.support import SAMPLES, corpus_files, sample_files

FILES = sample_files() + corpus_files()  # every golden input: samples/ and the shared corpus

ENGINES = ["premailer", "css_inline"]
COND_BLOCK = re.compile(r"<!--\[if.*?-->|<!--<!\[endif\]-->", re.DOTALL)  # each comment on its own


def inline(raw: bytes, engine: str, tmp_path: Path, **cfg: Any) -> Message:
    config = {
        "gateway": {"data_dir": str(tmp_path / "data")},
        "plugins": {"css_inline": {"engine": engine, **cfg}},
    }
    result = run_chain(raw, ["css_inline"], config=config)
    assert result.verdict is None
    (copy,) = result.copies
    assert copy.deliverable, copy.verdict
    return Message(copy.data)


def html_message(body: str, charset: str = "utf-8", cte: str = "8bit") -> bytes:
    head = (
        "From: a@example.com\r\nTo: b@example.com\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/html; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    )
    return head.encode("ascii") + body.encode(charset)


def style_of(html: str, xpath: str) -> str:
    el = etree.fromstring(html, etree.HTMLParser()).find(xpath)
    assert el is not None, xpath
    return (el.get("style") or "").replace(" ", "")


class CountingHandler(http.server.BaseHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.requests.append(self.path)
        body = b"p { color: #ff0000; }"
        self.send_response(200)
        self.send_header("Content-Type", "text/css")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def css_server() -> Iterator[tuple[int, list[str]]]:
    """A real HTTP server on 127.0.0.1 serving a stylesheet and recording every request."""
    seen: list[str] = []
    handler = type("Handler", (CountingHandler,), {"requests": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("engine", ENGINES)
def test_css_import_in_a_submitted_message_is_never_fetched(
    engine: str, css_server: tuple[int, list[str]]
) -> None:
    """premailer's allow_network=False covers <link> only: cssutils fetched @import URLs while
    parsing. The rule stays for the reader's client; the gateway fetches nothing."""
    port, seen = css_server
    url = f"http://127.0.0.1:{port}/imported.css"
    body = (
        f'<!DOCTYPE html><html><head><style>@import url("{url}");\n'
        "h1 { font-size: 20px; }</style></head><body><h1>x</h1><p>y</p></body></html>"
    )
    result = run_chain(
        html_message(body), ["css_inline"], config={"plugins": {"css_inline": {"engine": engine}}}
    )
    html = Message(result.copies[0].data).html_parts()[0].text()
    assert seen == []
    assert "@import" in html and url in html  # kept for the reader's client
    assert "font-size" in html.split("<h1", 1)[1].split(">", 1)[0]  # the local rule was inlined
    assert "color" not in html.split("<p", 1)[1].split(">", 1)[0]  # the remote rule was not applied
    with urllib.request.urlopen(url, timeout=5) as resp:  # the server answers: the counter works
        assert resp.status == 200
    assert seen == ["/imported.css"]


@pytest.mark.parametrize("engine", ENGINES)
def test_link_stylesheet_is_never_fetched(
    engine: str, css_server: tuple[int, list[str]], tmp_path: Path
) -> None:
    port, seen = css_server
    url = f"http://127.0.0.1:{port}/x.css"
    body = (
        f'<!DOCTYPE html><html><head><link rel="stylesheet" href="{url}">'
        "<style>h1 { font-size: 20px; }</style></head><body><h1>Hi</h1><p>text</p></body></html>"
    )
    html = inline(html_message(body), engine, tmp_path).html_parts()[0].text()
    assert seen == []
    assert "font-size:20px" in style_of(html, ".//h1")
    assert "color" not in style_of(html, ".//p")  # the remote rule was not applied
    assert f'href="{url}"' in html  # the tag is left for clients that honour it
    # the server does answer: the zero above is not a broken counter
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
    assert seen == ["/x.css"]


@pytest.mark.parametrize("engine", ENGINES)
def test_rules_inlined_and_media_queries_kept_with_important(engine: str, tmp_path: Path) -> None:
    raw = (SAMPLES / "03-mso-conditional.eml").read_bytes()
    html = inline(raw, engine, tmp_path).html_parts()[0].text()
    assert "max-width:600px" in style_of(html, ".//table[@class='card']")
    assert "font-size:26px" in style_of(html, ".//h1")
    outside_comments = re.sub(r"<!--.*?-->", "", html, flags=re.DOTALL)
    media = re.search(r"<style[^>]*>(.*?)</style>", outside_comments, re.DOTALL | re.IGNORECASE)
    assert media is not None and "@media" in media.group(1)
    assert re.search(r"width:\s*100%\s*!important", media.group(1))
    assert re.search(r"font-size:\s*22px\s*!important", media.group(1))


@pytest.mark.parametrize("engine", ENGINES)
def test_lowercase_doctype_and_conditional_comments_survive_byte_for_byte(
    engine: str, tmp_path: Path
) -> None:
    raw = (SAMPLES / "03-mso-conditional.eml").read_bytes()
    before = Message(raw).html_parts()[0].text()
    after = inline(raw, engine, tmp_path).html_parts()[0].text()
    assert after != before  # something was inlined
    assert after.startswith("<!doctype html>\r\n<html lang=")
    assert COND_BLOCK.findall(after) == COND_BLOCK.findall(before)
    assert after.count("<!--[if !mso]><!-->") == before.count("<!--[if !mso]><!-->") == 1
    assert after.count("<!--<![endif]-->") == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_placeholders_entities_and_urls_come_back_as_written(engine: str, tmp_path: Path) -> None:
    body = (
        "<html><head><style>p { color: #333333; }</style></head><body>"
        "<p>Hi {{ first_name }},&nbsp;caf&eacute; &copy; &#8217; &amp; &lt;tag&gt;</p>"
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> '
        "<a href='https://example.com/a b/caf\u00e9?x=1&amp;y=%2F'>Shop</a> "
        '<img src="https://img.example.com/{% raw %}x{% endraw %}.png" alt="&quot;logo&quot;"></p>'
        "</body></html>"
    )
    html = inline(html_message(body), engine, tmp_path).html_parts()[0].text()
    assert "color:#333" in style_of(html, ".//p")
    for kept in (
        "Hi {{ first_name }},&nbsp;caf&eacute; &copy; &#8217; &amp; &lt;tag&gt;",
        'href="{{ unsubscribe_url }}"',
        "href='https://example.com/a b/caf\u00e9?x=1&amp;y=%2F'",
        'src="https://img.example.com/{% raw %}x{% endraw %}.png"',
        'alt="&quot;logo&quot;"',
    ):
        assert kept in html, kept


@pytest.mark.parametrize("engine", ENGINES)
def test_eight_bit_windows_1251_part_stays_in_its_charset(engine: str, tmp_path: Path) -> None:
    body = (
        '<html><head><meta charset="windows-1251"><style>.t { color: #111111; }</style></head>'
        '<body><p class="t">Привет, мир &#9731;</p></body></html>'
    )
    part = inline(html_message(body, "windows-1251"), engine, tmp_path).html_parts()[0]
    assert (part.charset, part.cte) == ("windows-1251", "8bit")
    assert "Привет, мир &#9731;" in part.text()
    assert "color:#111" in style_of(part.text(), ".//p")


@pytest.mark.parametrize("engine", ENGINES)
def test_quoted_printable_part_is_reencoded_quoted_printable(engine: str, tmp_path: Path) -> None:
    raw = (SAMPLES / "11-smtpeter-control-headers.eml").read_bytes()
    part = inline(raw, engine, tmp_path).html_parts()[0]
    assert part.cte == "quoted-printable"
    assert all(len(line) <= 76 for line in part.body.split(b"\r\n"))
    assert "background-color" in style_of(part.text(), ".//a[@class='button']")


@pytest.mark.parametrize("engine", ENGINES)
def test_fragment_with_style_is_not_wrapped_in_html_body(engine: str, tmp_path: Path) -> None:
    body = "<style>p { color: #ff0000; }</style><p>Hi</p>\r\n<p>There</p>\r\n"
    html = inline(html_message(body), engine, tmp_path).html_parts()[0].text()
    assert "<html" not in html and "<body" not in html and "<head" not in html
    assert html.count('<p style="color') == 2


@pytest.mark.parametrize("engine", ENGINES)
def test_parts_without_a_stylesheet_and_other_parts_are_byte_identical(engine: str, tmp_path: Path) -> None:
    raw = (SAMPLES / "13-tricky-links.eml").read_bytes()  # no <style>: nothing to inline
    assert inline(raw, engine, tmp_path).as_bytes() == Message(raw).as_bytes()
    raw = (SAMPLES / "07-attachment-pdf.eml").read_bytes()
    before, after = Message(raw), inline(raw, engine, tmp_path)
    changed = [
        (a.path, a.content_type)
        for a, b in zip(after.walk(), before.walk(), strict=True)
        if not a.is_multipart and a.as_bytes() != b.as_bytes()
    ]
    assert changed == [("1.1.2", "text/html")]


def test_cssutils_warnings_are_silenced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Old-IE hacks and unknown @-rules are common in email CSS; cssutils would log each as an ERROR."""
    body = (
        "<html><head><style>p { *zoom: 1; color: red;; } @-ms-viewport { width: device-width; }</style>"
        "</head><body><p>x</p></body></html>"
    )
    with caplog.at_level(logging.DEBUG):
        html = inline(html_message(body), "premailer", tmp_path).html_parts()[0].text()
    assert "color:red" in style_of(html, ".//p")
    assert [r for r in caplog.records if r.name.upper().startswith("CSSUTILS")] == []


def test_keep_style_tags_keeps_the_original_block(tmp_path: Path) -> None:
    body = "<html><head><style>p { color: #ff0000; }</style></head><body><p>x</p></body></html>"
    html = inline(html_message(body), "premailer", tmp_path, keep_style_tags=True).html_parts()[0].text()
    assert "<style>p { color: #ff0000; }</style>" in html and "color:#f00" in style_of(html, ".//p")


def test_unknown_engine_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    cfg = make_config({"plugins": {"css_inline": {"engine": "juice"}}}, ["css_inline"])
    with pytest.raises(
        ConfigError, match=r"plugins\.css_inline\.engine: Input should be 'premailer' or 'css_inline'"
    ):
        make_chain(cfg)


def test_inlinecss_off_leaves_the_message_alone(tmp_path: Path) -> None:
    raw = (SAMPLES / "03-mso-conditional.eml").read_bytes()
    result = run_chain(raw, ["css_inline"], config={"features": {"inlinecss": False}})
    assert result.copies[0].data == Message(raw).as_bytes()


@pytest.mark.parametrize("engine", ENGINES)
def test_bytes_invalid_in_the_declared_charset_survive_inlining(engine: str, tmp_path: Path) -> None:
    """A part labelled utf-8 holding a latin-1 byte (common) is inlined, not failed, and the byte kept."""
    raw = html_message("") + (
        b"<!-- <html> in a comment --><!DOCTYPE html><html><head><style>p { color: #ff0000; }</style></head>"
        b"<body><p>caf\xe9</p></body></html>"
    )
    part = inline(raw, engine, tmp_path).html_parts()[0]
    assert b'<p style="color' in part.body and b"caf\xe9</p>" in part.body
    assert part.body.startswith(b"<!-- <html> in a comment --><!DOCTYPE html><html>")


@pytest.mark.parametrize("engine", ENGINES)
def test_document_without_html_tag_keeps_head_and_body(engine: str, tmp_path: Path) -> None:
    body = "<!doctype html>\r\n<head><title>T</title><style>p { color: #ff0000; }</style></head><body><p>x</p></body>\r\n"
    html = inline(html_message(body), engine, tmp_path).html_parts()[0].text()
    assert html.startswith("<!doctype html>\r\n<html><head><title>T</title>")
    assert '<body><p style="color' in html


@pytest.mark.parametrize("engine", ENGINES)
def test_web_font_import_and_font_face_kept_so_the_text_keeps_its_font(engine: str, tmp_path: Path) -> None:
    """premailer drops every @-rule but @media; the Postmark templates load their font with @import.

    Found by tests/test_visual_fidelity.py: the delivered page no longer asked for the font's CSS.
    """
    font_css = "https://fonts.googleapis.com/css?family=Nunito+Sans:400,700&display=swap"
    body = (
        f'<!DOCTYPE html><html><head><style>@import url("{font_css}");\n'
        '@font-face { font-family: "Brand"; src: url(https://cdn.example.com/brand.woff2) format("woff2"); }\n'
        'p { font-family: "Nunito Sans", Brand, Arial, sans-serif; }\n'
        "@media (max-width: 600px) { p { font-size: 18px; } }</style></head><body><p>x</p></body></html>"
    )
    html = inline(html_message(body), engine, tmp_path).html_parts()[0].text()
    assert "NunitoSans" in style_of(html, ".//p")  # the normal rule is still inlined
    styles = re.findall(r"<style[^>]*>(.*?)</style>", html, re.DOTALL)
    kept = "\n".join(styles)
    assert f'@import url("{font_css}");' in kept  # "&" came back as written
    assert styles[0].lstrip().startswith("@import")  # an @import after another rule is ignored
    assert re.search(r'@font-face\s*\{[^}]*font-family:\s*"Brand";[^}]*brand\.woff2', kept)
    assert "@media" in kept


# -- css_inline cache -------------------------------------------------------------------------


def _css_plugin(tmp_path: Path, engine: str, cache_size: int) -> CssInline:
    config = make_config(
        {
            "gateway": {"data_dir": str(tmp_path / "data")},
            "plugins": {"css_inline": {"engine": engine, "cache_size": cache_size}},
        },
        plugins=["css_inline"],
    )
    instance = make_chain(config).plugins.plugins[0].instance
    assert isinstance(instance, CssInline)
    return instance


def _template(n: int) -> str:
    return (
        "<!DOCTYPE html><html><head><style>p { color: #00f } .x { font-weight: bold }</style></head>"
        f'<body><p class="x">Hello {n} &amp; welcome</p><a href="https://example.com/?a=1&b={n}">go</a></body></html>'
    )


@pytest.mark.parametrize("engine", ["css_inline", "premailer"])
def test_cached_inlining_gives_what_a_fresh_engine_run_gives(tmp_path: Path, engine: str) -> None:
    cached = _css_plugin(tmp_path, engine, 4)
    fresh = _css_plugin(tmp_path, engine, 0)
    htmls = [_template(i % 3) for i in range(9)]
    for path in FILES:
        htmls += [p.text() for p in Message(path.read_bytes()).html_parts()]
    for html in htmls + htmls:
        assert cached.inline(html) == fresh.engine.inline(html)
    assert "color" in cached.inline(_template(1)) and "Hello 1" in cached.inline(_template(1))
    assert "Hello 2" in cached.inline(_template(2))


def test_inlining_cache_keeps_at_most_cache_size_results_and_zero_turns_it_off(tmp_path: Path) -> None:
    plugin = _css_plugin(tmp_path, "css_inline", 2)
    for i in range(5):
        plugin.inline(_template(i))
    assert list(plugin._cache) == [_template(3), _template(4)]
    plugin.inline(_template(3))  # a hit moves to the back: 4 is now the oldest
    plugin.inline(_template(5))
    assert list(plugin._cache) == [_template(3), _template(5)]
    off = _css_plugin(tmp_path, "css_inline", 0)
    off.inline(_template(1))
    assert not off._cache


def test_negative_cache_size_is_a_config_error(tmp_path: Path) -> None:
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="cache_size"):
        _css_plugin(tmp_path, "css_inline", -1)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("cache_size", [0, 4])
def test_many_parts_inlined_together_equal_each_part_inlined_alone(
    tmp_path: Path, engine: str, cache_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plugins.css_inline as module

    monkeypatch.setattr(module, "_BATCH_CHARS", 2000)  # several runs of parts, and parts larger than a run
    htmls = [_template(i % 5) for i in range(40)] + ["<p>no stylesheet</p>"]
    for path in FILES:
        htmls += [p.text() for p in Message(path.read_bytes()).html_parts()]
    together = _css_plugin(tmp_path, engine, cache_size).inline_many(htmls)
    alone = _css_plugin(tmp_path, engine, 0)
    assert together == [alone.engine.inline(html) for html in htmls]
