"""The look-ups the main process makes per connection and per event are cached, and a change made by
another process (the CLI, another gateway's API) is still seen at the next connection or event.

SQLite: every look-up asks ``PRAGMA data_version`` (one statement) and keeps its derived answers
(the address -> allow-list credential, credential -> webhook URLs, (credential, event type) ->
endpoints) until the rows change. These tests change the rows from a separate ``smtpgate`` process.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from pipeline.accounts.store import CredentialStore
from pipeline.app.harness import Dialogue, ingress_test_config, running_ingress
from pipeline.contract.context import Event
from pipeline.contract.vocabulary import EventType
from pipeline.ingress import replies as R

ROOT = Path(__file__).resolve().parents[1]


async def other_process(data_dir: Path, *args: str) -> str:
    """Run ``smtpgate ARGS`` (or ``python -c`` when ARGS starts with ``-c``) in a process of its own."""
    command = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "pipeline.app.cli", *args]
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SMTPGATE_DATA_DIR": str(data_dir)},
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def mail_reply(port: int) -> str:
    """The reply to MAIL FROM on a new connection (an allow-listed address may send, others may not)."""
    d = await Dialogue.connect("127.0.0.1", port)
    try:
        await d.reply()
        await d.cmd("EHLO client.test")
        r = await d.cmd("MAIL FROM:<app@example.com>")
        return f"{r.code} {r.text}"
    finally:
        await d.close()


async def test_an_allow_listed_address_disabled_by_another_process_is_refused_at_the_next_connection(data_dir):
    store = CredentialStore(data_dir / "credentials.db")
    store.add("office", "ip", networks=["127.0.0.0/8"])
    store.close()
    async with running_ingress(ingress_test_config(data_dir)) as (_, ingress):
        port = ingress.port("plain")
        assert await mail_reply(port) == R.SENDER_OK
        assert await mail_reply(port) == R.SENDER_OK  # the answer for 127.0.0.1 is now cached
        await other_process(data_dir, "credentials", "disable", "office")
        assert await mail_reply(port) == R.AUTH_REQUIRED
        await other_process(data_dir, "credentials", "enable", "office")
        assert await mail_reply(port) == R.SENDER_OK


def _event(credential: str, kind: EventType = EventType.DELIVERED) -> Event:
    return Event(kind, queue_id="Q1", recipient="a@example.net", credential=credential)


async def test_webhooks_added_by_another_process_get_the_next_event(data_dir):
    CredentialStore(data_dir / "credentials.db").close()  # the file exists, as on a gateway that ran
    async with running_ingress(ingress_test_config(data_dir)) as (gw, _):
        sink = gw.event_sink
        assert sink.webhook_urls_for(_event("shop")) == []
        assert sink.webhook_urls_for(_event("shop")) == []  # answered from the cache
        await other_process(data_dir, "credentials", "add", "shop", "--kind", "apikey",
                            "--webhook", "http://127.0.0.1:9/shop-cred")
        assert sink.webhook_urls_for(_event("shop")) == ["http://127.0.0.1:9/shop-cred"]
        await other_process(data_dir, "-c", (
            "import sys; from pathlib import Path; "
            "from pipeline.accounts.webhook_endpoints import WebhookEndpointStore; "
            f"s = WebhookEndpointStore(Path({str(data_dir / 'credentials.db')!r})); "
            "s.add('http://127.0.0.1:9/shop-api', 'shop', ['delivered']); s.close()"))
        assert sink.webhook_urls_for(_event("shop")) == ["http://127.0.0.1:9/shop-cred", "http://127.0.0.1:9/shop-api"]
        assert sink.webhook_urls_for(_event("shop", EventType.OPENED)) == ["http://127.0.0.1:9/shop-cred"]
        assert sink.webhook_urls_for(_event("club")) == []
        await other_process(data_dir, "credentials", "remove", "shop")
        assert sink.webhook_urls_for(_event("shop")) == ["http://127.0.0.1:9/shop-api"]
