"""``smtpgate stats``: a table (or JSON) of the same figures as /api/stats."""

from __future__ import annotations

import asyncio
import calendar
import json

from click.testing import CliRunner

from pipeline.app.cli import main
from pipeline.config import Config
from pipeline.contract.context import Event
from pipeline.events import open_event_store

D1 = calendar.timegm((2026, 3, 1, 9, 0, 0))
D2 = calendar.timegm((2026, 3, 2, 9, 0, 0))


def seed(data_dir) -> None:
    store = open_event_store(Config.model_validate({"gateway": {"data_dir": str(data_dir)}}))

    async def go() -> None:
        for camp, t, n in (("spring", D1, 3), ("autumn", D2, 2)):
            for i in range(n):
                await store.record(Event("accepted", queue_id=f"{camp}{i}", recipient=f"r{i}@x.net", campaign_id=camp, time=t))
                await store.record(Event("delivered", queue_id=f"{camp}{i}", recipient=f"r{i}@x.net", campaign_id=camp, time=t))
        await store.record(Event("opened", queue_id="spring0", recipient="r0@x.net", campaign_id="spring", time=D1 + 60))
        await store.record(Event("opened", queue_id="spring0", recipient="r0@x.net", campaign_id="spring", time=D1 + 1,
                                 data={"machine": True}))
        await store.record(Event("bounced", queue_id="spring2", recipient="r2@x.net", campaign_id="spring", time=D1,
                                 data={"status": "4.2.2"}))

    asyncio.run(go())
    store.close()


def run(*args: str):
    return CliRunner().invoke(main, ["stats", *args])


def test_stats_table_lists_campaigns_with_figures_and_total(data_dir):
    seed(data_dir)
    r = run()
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["campaign", "sent", "deliv", "hard", "soft"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["spring"][1:8] == ["3", "3", "0", "1", "1", "1", "1"]  # sent deliv hard soft opens u.opens m.opens
    assert rows["autumn"][1:3] == ["2", "2"]
    assert rows["TOTAL"][1] == "5"
    assert rows["spring"][13] == "33.3"  # open rate %


def test_stats_filters_by_campaign_and_since_and_prints_json(data_dir):
    seed(data_dir)
    out = json.loads(run("--since", "2026-03-02", "--json").stdout)
    assert [row["campaign"] for row in out["rows"]] == ["autumn"]
    out = json.loads(run("--campaign", "spring", "--json").stdout)
    assert out["totals"]["machine_opens"] == 1 and out["totals"]["opens"] == 1
    daily = run("--daily").stdout.splitlines()
    assert daily[0].split()[:2] == ["campaign", "day"] and any("2026-03-01" in line for line in daily)
    assert "no events for campaign 'nope'" in run("--campaign", "nope").stdout


def test_bad_date_is_a_one_line_error(data_dir):
    r = run("--since", "last week")
    assert r.exit_code == 2
    assert r.output.strip() == "smtpgate: --since/--until: invalid date 'last week': expected YYYY-MM-DD or an ISO date-time"


def test_stats_per_credential_keeps_two_credentials_same_campaign_apart(data_dir):
    store = open_event_store(Config.model_validate({"gateway": {"data_dir": str(data_dir)}}))

    async def go() -> None:
        for cred, n in (("shop", 3), ("club", 1)):
            for i in range(n):
                await store.record(Event("accepted", queue_id=f"{cred}{i}", recipient=f"r{i}@x.net", credential=cred,
                                         campaign_id="spring", time=D1))

    asyncio.run(go())
    store.close()
    out = json.loads(run("--credential", "club", "--json").stdout)
    assert [(r["campaign"], r["sent"]) for r in out["rows"]] == [("spring", 1)]
    out = json.loads(run("--by-credential", "--json").stdout)
    assert [(r["credential"], r["campaign"], r["sent"]) for r in out["rows"]] == [("club", "spring", 1),
                                                                                  ("shop", "spring", 3)]
    table = run("--by-credential").stdout.splitlines()
    assert table[0].split()[:2] == ["credential/campaign", "sent"]
    assert [line.split()[:2] for line in table[1:]] == [["club/spring", "1"], ["shop/spring", "3"], ["TOTAL", "4"]]
    assert "of credential 'nobody'" in run("--credential", "nobody").stdout
