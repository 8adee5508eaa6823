"""Shared helpers for the tracking/events tests: a gateway with the tracking services on port 0."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from pipeline.app.gateway import Gateway
from pipeline.app.harness import Dialogue
from pipeline.chain.driver import make_config
from pipeline.toolkit.tokens import TokenSigner
from pipeline.tracking import TrackingService

KEY = "test-tracking-key-one"
HUMAN_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def tracking_config(data_dir: Path, overrides: dict[str, Any] | None = None, plugins: list[str] | None = None) -> Any:
    data: dict[str, Any] = {
        "gateway": {"data_dir": str(data_dir), "hostname": "gw.test"},
        "tracking": {"listen_port": 0, "keys": {"k1": KEY}, "key_id": "k1", "base_url": "https://t.example.com"},
        "webhooks": {"secret": "whsec-test", "retry_min": 0.2, "retry_max": 1.0, "poll_interval": 0.2},
        "limits": {"shutdown_grace": 2.0},
    }
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return make_config(data, plugins or [])


def signer() -> TokenSigner:
    return TokenSigner({"k1": KEY.encode()}, "k1")


async def start_tracking(config: Any) -> tuple[Gateway, TrackingService]:
    """A gateway running only the tracking HTTP service (ephemeral port)."""
    gw = Gateway(config)
    service = gw.tracking_service(port=0)
    gw.services = [service]
    await gw.start()
    return gw, service


async def rcpt_reply(port: int, user: str, password: str, rcpt: str) -> str:
    """AUTH as ``user``, MAIL, then the reply to ``RCPT TO:<rcpt>`` (the stoplist's decision point)."""
    d = await Dialogue.connect("127.0.0.1", port)
    try:
        await d.reply()
        await d.cmd("EHLO client.test")
        auth = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        assert (await d.cmd(f"AUTH PLAIN {auth}")).code == 235
        assert (await d.cmd("MAIL FROM:<news@shop.example>")).code == 250
        r = await d.cmd(f"RCPT TO:<{rcpt}>")
        await d.cmd("QUIT")
        return f"{r.code} {r.text}"
    finally:
        await d.close()
