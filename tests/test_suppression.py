"""``smtpgate suppression list|add|remove`` and its effect on the store the server reads (both backends)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipeline.app.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def cli_backend(backend, monkeypatch):
    backend.export_env(monkeypatch)
    return backend


def test_add_list_remove_round_trip_global_and_per_credential(cli_backend):
    r = run("suppression", "add", "Ann@Example.net", "bob@example.org")
    assert r.exit_code == 0 and "added: ann@example.net" in r.output
    assert "already suppressed: ann@example.net" in run("suppression", "add", "ann@example.net").output
    assert run("suppression", "add", "carl@example.com", "--credential", "shop", "--reason", "asked by phone").exit_code == 0
    stoplist = cli_backend.suppression_list()
    assert stoplist.contains("ann@example.net", "blog") and stoplist.contains("carl@example.com", "shop")
    assert not stoplist.contains("carl@example.com", "blog")

    listed = run("suppression", "list", "--json")
    entries = {(e["address"], e["scope"], e["reason"]) for e in json.loads(listed.stdout)}
    assert entries == {("ann@example.net", "", "manual"), ("bob@example.org", "", "manual"),
                       ("carl@example.com", "shop", "asked by phone")}
    text = run("suppression", "list", "--credential", "shop").output
    assert "carl@example.com\tshop\tasked by phone" in text and "ann@" not in text

    r = run("suppression", "remove", "ann@example.net")
    assert r.exit_code == 0 and "removed: ann@example.net" in r.output
    assert not stoplist.contains("ann@example.net")
    r = run("suppression", "remove", "nobody@example.net")
    assert r.exit_code == 1 and "not suppressed: nobody@example.net" in r.output
    stoplist.close()


def test_bad_address_is_a_one_line_error_without_traceback(cli_backend):
    r = run("suppression", "add", "not-an-address")
    assert r.exit_code == 2
    assert r.output.strip() == "smtpgate: not an email address: 'not-an-address'"
    assert not (cli_backend.data_dir / "events.db").exists()  # nothing half-written


def test_cli_sees_suppressions_made_by_events(cli_backend):
    import asyncio

    from pipeline.contract.context import Event

    store = cli_backend.event_store()
    asyncio.run(store.record(Event("bounced", recipient="gone@example.net", credential="shop",
                                   data={"status": "5.1.1"})))
    store.close()
    out = run("suppression", "list").output
    assert "gone@example.net\tshop\thard bounce" in out
