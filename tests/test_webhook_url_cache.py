"""The event recorder's webhook URLs are cached per (credential, event type) while credentials.db's
commit stamp (its WAL-index header) is unchanged, and the cached answers are the ones asking every
source gives: on generated configs, stored credentials and API endpoints changed between look-ups by
other connections, and after a change made by another process (the CLI), seen at the next event.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.accounts.store import CommitStamp, CredentialStore, StoredWebhooks
from pipeline.accounts.webhook_endpoints import WebhookEndpointStore
from pipeline.config import Config
from pipeline.contract.context import Event
from pipeline.contract.vocabulary import EventType
from pipeline.events import EventEmitter

ROOT = Path(__file__).resolve().parents[1]
CREDENTIALS = ["shop", "club", "news", None]
FORMATS = ["smtpgate", "sendgrid", "mailgun", "postmark"]
KINDS = [t.value for t in EventType]


def _config(rng: random.Random) -> Config:
    endpoints = []
    for i in range(rng.randint(0, 4)):
        endpoints.append(
            {
                "url": f"http://127.0.0.1:9/cfg-endpoint-{i}",
                "format": rng.choice(FORMATS),
                "events": rng.sample([k for k in KINDS], rng.randint(0, 3)),
                "credential": rng.choice(CREDENTIALS),
            }
        )
    credentials = [
        {
            "name": name,
            "kind": "ip",
            "networks": ["10.0.0.0/8"],
            "webhooks": [f"http://127.0.0.1:9/cfg-{name}-{j}" for j in range(rng.randint(0, 2))],
        }
        for name in ("shop", "news")
        if rng.random() < 0.5
    ]
    return Config.model_validate(
        {
            "webhooks": {
                "urls": [f"http://127.0.0.1:9/global-{i}" for i in range(rng.randint(0, 2))],
                "endpoints": endpoints,
            },
            "credentials": credentials,
        }
    )


class Counting:
    """A source wrapped to count the look-ups that reach it."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.fn(*args)


def recorder(credential_webhooks: Any, api_webhooks: Any, stamp: Any = None, config: Config | None = None) -> EventEmitter:
    """The event recorder as the gateway wires it (``stamp``: credentials.db's commit stamp, which
    turns the cache on; ``None``: every source asked for every event)."""
    return EventEmitter(None, config or Config(), collections.Counter(), credential_webhooks=credential_webhooks,
                        api_webhooks=api_webhooks, webhooks_stamp=stamp)


def _emitters(config: Config, path: Path) -> tuple[EventEmitter, EventEmitter, list[Any]]:
    """(the cached recorder, a recorder asking every source every time with readers of its own, closers)."""
    stored = StoredWebhooks(path)
    stored.STAMP_AFTER = 0.0
    endpoints = WebhookEndpointStore(path)
    cached = recorder(stored, endpoints.urls_for, stored.stamp, config)
    ref_stored = StoredWebhooks(path)
    ref_endpoints = WebhookEndpointStore(path)
    plain = recorder(ref_stored, ref_endpoints.urls_for, None, config)
    return cached, plain, [stored.close, endpoints.close, ref_stored.close, ref_endpoints.close]


def _change(rng: random.Random, creds: CredentialStore, api: WebhookEndpointStore, n: int) -> None:
    """One random change by connections other than the recorders'."""
    name = rng.choice(["shop", "club", "news", "misc"])
    what = rng.randrange(5)
    if what == 0:
        try:
            creds.add(
                name,
                "ip",
                networks=["10.0.0.0/8"],
                options={"webhooks": [f"http://127.0.0.1:9/stored-{name}-{n}"]},
            )
        except Exception:  # noqa: BLE001 - already there: change another way
            creds.remove(name)
    elif what == 1:
        try:
            creds.set_disabled(name, rng.random() < 0.5)
        except Exception:  # noqa: BLE001 - no such credential
            pass
    elif what == 2:
        try:
            api.add(
                f"http://127.0.0.1:9/api-{n}", rng.choice(CREDENTIALS), rng.sample(KINDS, rng.randint(0, 2))
            )
        except ValueError:
            pass
    elif what == 3:
        rows = api.list()
        if rows:
            api.remove(rng.choice(rows)["id"])
    else:
        rows = api.list()
        if rows:
            api.set_events(rng.choice(rows)["id"], rng.sample(KINDS, rng.randint(0, 2)))


def test_cached_webhook_urls_equal_asking_every_source_on_generated_changes(tmp_path):
    for seed in range(6):
        rng = random.Random(seed)
        path = tmp_path / f"credentials-{seed}.db"
        creds = CredentialStore(path)  # another connection: the changes
        api = WebhookEndpointStore(path)
        creds.add("seed", "ip", networks=["10.0.0.0/8"], options={"webhooks": ["http://127.0.0.1:9/seed"]})
        cached, plain, closers = _emitters(_config(rng), path)
        hits = 0
        kinds = rng.sample(KINDS, 4)  # few keys: most look-ups can be served from the cache
        try:
            for n in range(300):
                if rng.random() < 0.15:
                    _change(rng, creds, api, n)
                event = Event(
                    rng.choice(kinds),
                    queue_id="Q1",
                    recipient="a@example.net",
                    credential=rng.choice([*CREDENTIALS, "seed", "misc"]),
                )
                before = len(cached._urls)
                got = cached.webhook_urls_for(event)
                hits += before > 0 and len(cached._urls) == before
                assert got == plain.webhook_urls_for(event), (seed, n, event.credential, event.type)
        finally:
            for close in closers:
                close()
            creds.close()
            api.close()
        assert hits > 50  # the cache did serve


def test_webhook_urls_are_answered_without_asking_the_stores_until_credentials_db_changes(tmp_path):
    path = tmp_path / "credentials.db"
    creds = CredentialStore(path)
    creds.add("shop", "ip", networks=["10.0.0.0/8"], options={"webhooks": ["http://127.0.0.1:9/shop"]})
    stored = StoredWebhooks(path)
    stored.STAMP_AFTER = 0.0
    endpoints = WebhookEndpointStore(path)
    lookup, api_lookup = Counting(stored), Counting(endpoints.urls_for)
    sink = recorder(lookup, api_lookup, stored.stamp)
    event = Event(EventType.DELIVERED, queue_id="Q1", recipient="a@example.net", credential="shop")
    try:
        assert sink.webhook_urls_for(event) == ["http://127.0.0.1:9/shop"]  # opens the store: not cached yet
        assert sink.webhook_urls_for(event) == ["http://127.0.0.1:9/shop"]  # now cached
        calls = (lookup.calls, api_lookup.calls)
        for _ in range(5):
            assert sink.webhook_urls_for(event) == ["http://127.0.0.1:9/shop"]
        assert (lookup.calls, api_lookup.calls) == calls
        endpoints.add("http://127.0.0.1:9/api", "shop", [])  # the recorder's own endpoint store (the API)
        assert sink.webhook_urls_for(event) == ["http://127.0.0.1:9/shop", "http://127.0.0.1:9/api"]
        creds.set_disabled("shop")  # another connection: still its webhooks (as before)
        creds.remove("shop")
        assert sink.webhook_urls_for(event) == ["http://127.0.0.1:9/api"]
        assert lookup.calls > calls[0]
    finally:
        stored.close()
        endpoints.close()
        creds.close()


async def _other_process(data_dir: Path, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline.app.cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SMTPGATE_DATA_DIR": str(data_dir)},
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()


async def test_a_credential_webhook_changed_by_another_process_is_seen_at_the_next_cached_event(tmp_path):
    path = tmp_path / "credentials.db"
    CredentialStore(path).close()
    stored = StoredWebhooks(path)
    stored.STAMP_AFTER = 0.0
    endpoints = WebhookEndpointStore(path)
    sink = recorder(stored, endpoints.urls_for, stored.stamp)
    event = Event(EventType.DELIVERED, queue_id="Q1", recipient="a@example.net", credential="shop")
    try:
        assert sink.webhook_urls_for(event) == []
        assert sink.webhook_urls_for(event) == []
        assert sink._urls  # answered from the cache from now on
        await _other_process(
            tmp_path,
            "credentials",
            "add",
            "shop",
            "--kind",
            "apikey",
            "--webhook",
            "http://127.0.0.1:9/shop-cred",
        )
        assert sink.webhook_urls_for(event) == ["http://127.0.0.1:9/shop-cred"]
        await _other_process(tmp_path, "credentials", "remove", "shop")
        assert sink.webhook_urls_for(event) == []
    finally:
        stored.close()
        endpoints.close()


def test_the_commit_stamp_moves_with_every_commit_and_is_none_without_a_shm_file(tmp_path):
    path = tmp_path / "credentials.db"
    assert CommitStamp(path).stamp() is None  # nothing to read
    reader = CredentialStore(path)
    writer = CredentialStore(path)
    reader.records()  # the reader's connection holds the -shm file from now on
    probe = CommitStamp(path)
    try:
        seen = {probe.stamp()}
        assert None not in seen
        assert probe.stamp() in seen  # nothing committed: the same stamp
        for i in range(20):
            writer.add(f"c{i}", "ip", networks=["10.0.0.0/8"])
            stamp = probe.stamp()
            assert stamp is not None and stamp not in seen
            seen.add(stamp)
    finally:
        probe.close()
        writer.close()
        reader.close()


def test_endpoints_of_a_file_created_while_running_are_in_the_first_cached_answers(tmp_path):
    """The endpoint store looks for a missing file every RECHECK seconds: nothing is cached until
    it must have looked again (STAMP_AFTER past the file's appearance), so no answer without them."""
    path = tmp_path / "credentials.db"
    stored = StoredWebhooks(path)
    stored.STAMP_AFTER = 0.3
    stored.RECHECK = 0.0
    endpoints = WebhookEndpointStore(path)
    endpoints.RECHECK = 0.3
    sink = recorder(stored, endpoints.urls_for, stored.stamp)
    event = Event(EventType.DELIVERED, queue_id="Q1", recipient="a@example.net", credential="shop")
    other = WebhookEndpointStore(path)
    try:
        assert sink.webhook_urls_for(event) == []  # no file: both stores answer nothing
        other.add("http://127.0.0.1:9/api", "shop", [])  # creates the file (another connection)
        cached: list[list[str]] = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            urls = sink.webhook_urls_for(event)
            if sink._urls:
                cached.append(urls)
            time.sleep(0.01)
        assert cached and all(urls == ["http://127.0.0.1:9/api"] for urls in cached)
    finally:
        other.close()
        stored.close()
        endpoints.close()


def test_no_stamp_before_the_endpoint_store_may_have_opened_the_file(tmp_path):
    path = tmp_path / "credentials.db"
    CredentialStore(path).close()
    stored = StoredWebhooks(path)  # STAMP_AFTER as configured (5 s)
    try:
        assert stored.stamp() is None  # not opened yet
        stored("shop")
        assert stored.stamp() is None  # opened just now
        stored._stamp_from = 0.0  # as STAMP_AFTER seconds later
        assert stored.stamp() is not None
    finally:
        stored.close()
    assert StoredWebhooks(path, url="postgresql://unused/").stamp() is None  # shared database: no stamp


def test_events_without_a_credential_are_cached_too_and_see_a_new_global_endpoint(tmp_path):
    path = tmp_path / "credentials.db"
    CredentialStore(path).close()
    stored = StoredWebhooks(path)
    stored.STAMP_AFTER = 0.0
    endpoints = WebhookEndpointStore(path)
    api_lookup = Counting(endpoints.urls_for)
    sink = recorder(stored, api_lookup, stored.stamp)
    event = Event(EventType.REJECTED, queue_id=None, recipient=None, credential=None)
    other = WebhookEndpointStore(path)
    try:
        assert sink.webhook_urls_for(event) == []  # the stamp opens credentials.db: not cached yet
        assert sink.webhook_urls_for(event) == []
        calls = api_lookup.calls
        for _ in range(5):
            assert sink.webhook_urls_for(event) == []
        assert api_lookup.calls == calls
        other.add("http://127.0.0.1:9/all", None, ["rejected"])
        assert sink.webhook_urls_for(event) == ["http://127.0.0.1:9/all"]
    finally:
        other.close()
        stored.close()
        endpoints.close()
