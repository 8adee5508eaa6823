"""Audit of issues 2 and 3: tests for points the other test files left unchecked or checked weakly.

Each test names the issue point it pins down.
"""

from __future__ import annotations

import http.server
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline import Message
from pipeline.testing import run_chain


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
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
def css_url() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on 127.0.0.1 serving a stylesheet: (its URL, the paths requested)."""
    seen: list[str] = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_RecordingHandler,), {"requests": seen}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/imported.css", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- issue 3, point 3: css_inline never makes the gateway fetch a URL -----------------------------


@pytest.mark.parametrize("engine", ["premailer", "css_inline"])
def test_css_import_in_a_submitted_message_is_never_fetched(engine: str, css_url: tuple[str, list[str]]) -> None:
    """premailer's allow_network=False covers <link> only: cssutils fetched @import URLs while
    parsing (found by this audit). The rule stays for clients; the gateway fetches nothing."""
    url, seen = css_url
    body = (
        f'<!DOCTYPE html><html><head><style>@import url("{url}");\n'
        "h1 { font-size: 20px; }</style></head><body><h1>x</h1><p>y</p></body></html>"
    )
    raw = (
        "From: a@example.com\r\nTo: b@example.com\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n" + body
    ).encode()
    result = run_chain(raw, ["css_inline"], config={"plugins": {"css_inline": {"engine": engine}}})
    html = Message(result.copies[0].data).html_parts()[0].text()
    assert seen == []
    assert "@import" in html and url in html  # kept for the reader's client
    assert "font-size" in html.split("<h1", 1)[1].split(">", 1)[0]  # the local rule was inlined
    assert "color" not in html.split("<p", 1)[1].split(">", 1)[0]  # the remote rule was not applied
    # the server answers, so the empty list above is not a broken counter
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
    assert seen == ["/imported.css"]
