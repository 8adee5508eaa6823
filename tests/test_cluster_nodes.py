"""Two nodes on one PostgreSQL, each with an empty data directory of its own: what one node made
(generated keys, links, mail, credentials, suppressions) the other sees and accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from pipeline.chain.loader import plugin_env
from pipeline.config import Config, parse_config
from pipeline.events.webhooks import load_webhook_secret
from pipeline.toolkit.tokens import load_signer
from tests.support.tracking import start_tracking


def node(tmp_path: Path, name: str, url: str, **sections: Any) -> Config:
    """A node's config: its own data dir, the shared database, no keys or secrets configured."""
    data: dict[str, Any] = {"gateway": {"data_dir": str(tmp_path / name), "hostname": f"{name}.test"},
                            "storage": {"url": url}, "tracking": {"listen_port": 0},
                            "limits": {"shutdown_grace": 2.0}, **sections}
    return parse_config(data)


async def test_a_click_link_signed_by_one_node_redirects_on_another_without_configured_keys(
        tmp_path: Path, pg_url: str) -> None:
    a, b = node(tmp_path, "a", pg_url), node(tmp_path, "b", pg_url)
    assert not a.tracking.keys and not b.tracking.keys and a.webhooks.secret is None
    signer_a = plugin_env(a).open_signer()  # what node A's click_tracking plugin signs with
    payload = {"k": "c", "u": "https://shop.example/spring?x=1", "q": "Q1", "r": "dana@example.net", "s": None}
    token = signer_a.sign(payload)
    gw_b, tracking_b = await start_tracking(b)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{tracking_b.url}/c/{token}", allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "https://shop.example/spring?x=1"
    finally:
        await gw_b.stop(2.0)
    # one key and one webhook secret for the cluster, in the database, not on either node's disk
    assert load_signer({}, "k1", tmp_path / "b", pg_url).verify(token) == signer_a.verify(token)
    assert load_webhook_secret(a) == load_webhook_secret(b)
    assert not (tmp_path / "a" / "tracking.key").exists() and not (tmp_path / "b" / "webhook.key").exists()


def test_the_first_node_s_existing_key_file_becomes_the_shared_key_and_configured_keys_win(
        tmp_path: Path, pg_url: str) -> None:
    old = tmp_path / "old"  # a node that ran on SQLite before: links it sent must keep working
    old.mkdir()
    (old / "tracking.key").write_text("key-from-the-sqlite-days\n")
    token = load_signer({}, "k1", old).sign({"k": "c", "u": "https://x.example/"})
    assert load_signer({}, "k1", old, pg_url).verify(token) is not None
    assert load_signer({}, "k1", tmp_path / "new", pg_url).verify(token) is not None  # the others adopt it
    assert load_signer({"k1": "configured-key"}, "k1", tmp_path / "new", pg_url).verify(token) is None
