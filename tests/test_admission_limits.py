"""[limits] bounds on one message's work, checked at DATA by admission (ingress, replay, driver alike)."""

from __future__ import annotations

import sys

import pytest
from test_hostile_clients import many_html_parts, nested_multiparts

from pipeline.chain.driver import run_chain
from pipeline.contract.message import Message


def reply(raw: bytes, **limits: int) -> str | None:
    result = run_chain(raw, [], config={"limits": limits} if limits else None, rcpt_tos=["user@local.test"])
    return None if result.verdict is None else result.verdict.reply()


def html(links: int, size: int = 0) -> bytes:
    body = "".join(f'<a href="https://example.com/{i}">x</a>' for i in range(links)) + "x" * size
    return (
        "From: app@shop.example\r\nTo: user@local.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/html; charset=utf-8\r\n\r\n<html><body>{body}</body></html>\r\n"
    ).encode()


def test_parsing_does_not_recurse_on_the_python_stack():
    levels = sys.getrecursionlimit() * 2
    message = Message(nested_multiparts(levels))
    assert max(p.depth for p in message.walk()) == levels
    copy = message.copy()
    copy.replace_text(copy.text_parts()[0], "edited")
    assert copy.as_bytes().count(b"--b0--") == 1 and b"edited" in copy.as_bytes()


def test_each_bound_has_its_own_reply_naming_the_key():
    assert reply(nested_multiparts(6), max_mime_depth=5) == (
        "554 5.6.0 Message MIME nesting exceeds 5 levels (limits.max_mime_depth)"
    )
    assert reply(many_html_parts(11), max_mime_parts=10) == (
        "552 5.3.4 Message has more than 10 MIME parts (limits.max_mime_parts)"
    )
    assert reply(many_html_parts(4), max_html_parts=3) == (
        "552 5.3.4 Message has more than 3 HTML parts (limits.max_html_parts)"
    )
    assert reply(html(6), max_links=5) == "552 5.3.4 Message has more than 5 links (limits.max_links)"
    assert reply(html(0, 2000), max_html_bytes=1000) == (
        "552 5.3.4 Message HTML exceeds 1000 bytes decoded (limits.max_html_bytes)"
    )


@pytest.mark.parametrize(
    "raw", [nested_multiparts(5), many_html_parts(10), html(5), html(0, 900)], ids=["depth", "parts", "links", "size"]
)
def test_a_message_at_the_bounds_is_accepted(raw):
    assert reply(raw, max_mime_depth=5, max_mime_parts=11, max_html_parts=10, max_links=10, max_html_bytes=1000) is None


def test_defaults_accept_every_sample_and_real_template():
    from tests.support import corpus_files, sample_files

    refused = {p.name for p in sample_files() + corpus_files() if (r := reply(p.read_bytes())) and r[:3] in ("552", "554")}
    assert refused == set()
