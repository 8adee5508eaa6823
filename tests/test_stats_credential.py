"""Statistics per credential on both storage backends (the ``backend`` fixture: SQLite and a real
PostgreSQL): two credentials that use the same campaign id are two rows, a credential filter restricts
every part of the report, and refusals (``rejected`` events) never count as mail."""

from __future__ import annotations

from typing import Any

from pipeline.contract.context import Event
from pipeline.events.listing import EventQuery, event_page
from pipeline.events.stats import stats_report


async def test_same_campaign_of_two_credentials_stays_two_rows_and_refusals_do_not_count(
    backend: Any,
) -> None:
    store = backend.event_store()
    try:
        for cred, n, opened in (("shop", 3, 2), ("club", 2, 1)):
            for i in range(n):
                qid, rcpt = f"{cred}{i}", f"r{i}@example.net"
                await store.record(
                    Event("accepted", queue_id=qid, recipient=rcpt, credential=cred, campaign_id="spring")
                )
                await store.record(
                    Event("delivered", queue_id=qid, recipient=rcpt, credential=cred, campaign_id="spring")
                )
                if i < opened:
                    await store.record(
                        Event("opened", queue_id=qid, recipient=rcpt, credential=cred, campaign_id="spring")
                    )
        await store.record(
            Event(
                "rejected",
                recipient="x@example.net",
                credential="shop",
                data={"code": 550, "phase": "rcpt", "count": 1},
            )
        )

        report = stats_report(store, by_credential=True)
        rows = [
            (r["credential"], r["campaign"], r["sent"], r["delivered"], r["unique_opens"])
            for r in report["campaigns"]
        ]
        assert rows == [("club", "spring", 2, 2, 1), ("shop", "spring", 3, 3, 2)]
        assert report["totals"]["sent"] == 5 and {d["credential"] for d in report["days"]} == {"club", "shop"}

        shop = stats_report(store, credential="shop", by_credential=True)
        assert [(r["credential"], r["sent"]) for r in shop["campaigns"]] == [("shop", 3)]
        assert sum(shop["timeline"]["series"]["accepted"]) == 3 and shop["totals"]["open_rate"] == round(
            2 / 3, 4
        )

        page, more = event_page(store, EventQuery(type="rejected", credential="shop"), 10)
        assert more is None and [(e["type"], e["data"]["code"]) for e in page] == [("rejected", 550)]
        page, more = event_page(store, EventQuery(type="rejected", credential="club"), 10)
        assert page == []
        page, more = event_page(store, EventQuery(credential="club"), 2)
        assert len(page) == 2 and more == page[-1]["id"]
        rest, _ = event_page(store, EventQuery(credential="club", before=more), 100)
        assert len(rest) == 3 and all(e["id"] < more for e in rest)  # 2 accepted, 2 delivered, 1 opened
    finally:
        store.close()
