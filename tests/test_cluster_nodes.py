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


def _toml(tmp_path: Path, name: str, url: str) -> Path:
    """A node's config file: its own data dir (never created for node B), the shared database."""
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[gateway]
hostname = "{name}.test"
data_dir = "{tmp_path / name}"
[storage]
url = "{url}"
[[listeners]]
name = "plain"
port = 0
tls = "none"
require_tls = false
[chain]
plugins = ["header_validation", "campaign_tag"]
[spool]
workers = 0
[egress]
type = "maildir"
[limits]
shutdown_grace = 2.0
""")
    return path


def cli(*args: str) -> Any:
    from click.testing import CliRunner

    from pipeline.app.cli import main

    return CliRunner().invoke(main, list(args))


async def test_every_read_command_on_a_second_node_with_an_empty_data_dir_sees_the_first_node_s_data(
        tmp_path: Path, pg_url: str, monkeypatch: Any) -> None:
    import aiosmtplib

    from pipeline.app.gateway import Gateway
    from pipeline.config import load_config

    monkeypatch.delenv("SMTPGATE_STORAGE_URL", raising=False)
    conf_a, conf_b = _toml(tmp_path, "a", pg_url), _toml(tmp_path, "b", pg_url)
    key = cli("credentials", "add", "shop", "--config", str(conf_a)).stdout.strip().splitlines()[-1]
    assert cli("suppression", "add", "gone@example.net", "--config", str(conf_a)).exit_code == 0
    node_a = Gateway(load_config(str(conf_a)))
    ingress = node_a.ingress_service()
    node_a.services = [ingress]  # no delivery: the message stays queued for node B to see
    await node_a.start()
    try:
        raw = (b"From: <news@shop.example>\r\nTo: <x@example.net>\r\nSubject: Spring\r\nX-Campaign-Id: spring\r\n"
               b"\r\nHello\r\n")
        await aiosmtplib.send(raw, sender="news@shop.example", recipients=["x@example.net"], hostname="127.0.0.1",
                              port=ingress.port("plain"), username="apikey", password=key,
                              start_tls=False, use_tls=False)
    finally:
        await node_a.stop(2.0)
    b = ("--config", str(conf_b))
    results = {
        "status": cli("status", *b),
        "queue list": cli("queue", "list", *b),
        "stats": cli("stats", "--campaign", "spring", *b),
        "suppression list": cli("suppression", "list", *b),
        "credentials list": cli("credentials", "list", *b),
        "messages search": cli("messages", "search", "--recipient", "x@example.net", *b),
        "events list": cli("events", "list", *b),
        "events prune": cli("events", "prune", "--older-than", "90d", "--dry-run", *b),
        "tls-report show": cli("tls-report", "show", *b),
    }
    for name, r in results.items():
        assert r.exception is None or isinstance(r.exception, SystemExit), (name, r.output)
        assert "Traceback" not in r.output, (name, r.output)
    assert results["status"].exit_code == 3  # node B itself is not running; the queue is the cluster's
    assert "queue: 1 message(s), 1 recipient(s): queued 1" in results["status"].output
    for name in ("queue list", "messages search"):
        assert results[name].exit_code == 0 and "x@example.net" in results[name].output, name
    assert results["stats"].exit_code == 0 and "spring" in results["stats"].output
    assert "gone@example.net" in results["suppression list"].output
    assert "shop" in results["credentials list"].output
    assert " accepted " in results["events list"].output
    assert "would delete 0 event(s)" in results["events prune"].output  # the accepted event is new
    assert results["tls-report show"].exit_code == 0  # TLS-RPT sessions are per node (docs/scaling.md)
    assert not (tmp_path / "b").exists()  # node B needed nothing on its disk
