"""The only copy of a message is made without splitting its MIME tree (split on first use) and
is the same copy, byte for byte and part for part, as one cloned from the split tree.

On every message in samples/ and the shared corpus: the copies themselves (bytes, parts, header
fields, after header and body edits), and the copies the processing chain makes of a message
with one recipient, with the default chain (every feature on) and with no processing plugin.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pipeline.chain.driver import make_chain, make_config
from pipeline.chain.processing import process_message
from pipeline.config import ChainSection
from pipeline.contract.context import MessageContext
from pipeline.contract.message import Message
from tests.support import PROCESSING_FEATURES, parseable_messages

FEATURES = PROCESSING_FEATURES
ADMISSION_ONLY = ["header_validation", "campaign_tag", "suppression"]


MESSAGES = parseable_messages()


def tree(msg: Message) -> list[tuple[Any, ...]]:
    return [
        (
            p.path,
            p.depth,
            p.content_type,
            p.charset,
            p.is_multipart,
            p.body,
            p.preamble,
            p.epilogue,
            [h.raw for h in p.headers],
            p.truncated,
        )
        for p in msg.walk()
    ]


def edit(msg: Message) -> None:
    msg.add_header("X-Copy", "one")
    for part in msg.html_parts():
        msg.replace_html(part, part.text().replace("</body>", "<img src=x></body>"))
    for part in msg.text_parts():
        msg.replace_text(part, part.text() + "\nbye\n")


@pytest.mark.parametrize("name, raw", MESSAGES, ids=[name for name, _ in MESSAGES])
def test_the_copy_that_splits_on_first_use_is_the_copy_cloned_from_the_split_tree(
    name: str, raw: bytes
) -> None:
    for bounds in ({}, {"max_depth": 1, "max_parts": 2}):
        original = Message(raw, "a@example.com", ["x@example.org", "y@example.org"], **bounds)
        lazy = original.copy(["x@example.org"], split=False)
        cloned = original.copy(["x@example.org"])
        assert lazy.as_bytes() == cloned.as_bytes() == original.as_bytes()
        lazy.add_header("X-Before-Split", "1")  # a header edit before anything splits the copy
        cloned.add_header("X-Before-Split", "1")
        assert lazy.as_bytes() == cloned.as_bytes()
        assert tree(lazy) == tree(cloned)
        assert lazy.structure().truncated == cloned.structure().truncated
        edit(lazy)
        edit(cloned)
        assert lazy.as_bytes() == cloned.as_bytes()
        assert lazy.rcpt_tos == cloned.rcpt_tos == ["x@example.org"]
        assert [str(e) for e in lazy.edits] == [str(e) for e in cloned.edits]
        assert original.as_bytes() == Message(raw, **bounds).as_bytes()  # the copies' edits stay theirs


def copies_of_each(plugins: list[str], features: dict[str, bool], only: bool, tmp: Path) -> list[list[Any]]:
    """Each message's copies for one recipient, the single copy made unsplit (``only``) or not."""
    config = make_config(
        {
            "gateway": {"data_dir": str(tmp)},
            "tracking": {
                "keys": {"k1": "secret"},
                "base_url": "https://t.example.net",
                "bounce_domain": "bounces.example.net",
            },
            "features": features,
        },
        plugins,
    )
    chain = make_chain(config)
    forward = MessageContext.for_recipient

    def for_recipient(self: MessageContext, recipient: str, *, only: bool = False) -> MessageContext:
        return forward(self, recipient, only=only and single)

    single = only
    out = []
    loop = asyncio.new_event_loop()
    try:
        MessageContext.for_recipient = for_recipient  # type: ignore[method-assign]
        for i, (_, raw) in enumerate(MESSAGES):
            ctx = MessageContext(
                message=Message(raw, "app@example.com", ["one@example.org"]),
                queue_id=f"q{i}",
                features=dict(features),
            )
            copies = loop.run_until_complete(process_message(chain, ctx))
            out.append(
                [
                    (
                        c.recipient,
                        c.data,
                        repr(c.verdict),
                        [{k: v for k, v in row.items() if k != "ms"} for row in c.trace],
                    )
                    for c in copies
                ]
            )
    finally:
        MessageContext.for_recipient = forward  # type: ignore[method-assign]
        loop.close()
    return out


@pytest.mark.parametrize("chain", ["default", "no processing plugin"])
def test_a_message_with_one_recipient_gets_the_same_copy_from_the_chain(chain: str, tmp_path: Path) -> None:
    if chain == "default":
        plugins, features = ChainSection().plugins, {f: True for f in FEATURES}
    else:
        plugins, features = ADMISSION_ONLY, {}
    unsplit = copies_of_each(plugins, features, True, tmp_path / "a")
    cloned = copies_of_each(plugins, features, False, tmp_path / "b")
    assert len(unsplit) == len(MESSAGES)
    for (name, _), a, b in zip(MESSAGES, unsplit, cloned, strict=True):
        assert a == b, name
