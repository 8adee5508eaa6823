"""The statistics page in a real headless browser (Debian's chromium): after its script ran, the
figures in the DOM match the event store."""

from __future__ import annotations

import asyncio
import re
import shutil
import time

import aiohttp
import pytest

from pipeline.contract.context import Event
from pipeline.events.stats import campaign_stats, tag_stats, totals
from tests.support.tracking import HUMAN_UA, signer, start_tracking, tracking_config

pytestmark = pytest.mark.browser  # drives the headless chromium

FIELDS = ("sent", "delivered", "bounced_hard", "bounced_soft", "opens", "unique_opens", "machine_opens",
          "clicks", "unique_clicks", "machine_clicks", "unsubscribes", "complaints", "open_rate", "click_rate")


async def dump_dom(url: str, profile) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed (.ci/run installs Debian's chromium)"
    proc = await asyncio.create_subprocess_exec(
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=2000", "--dump-dom", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


async def test_stats_page_figures_after_scripts_match_event_store(tmp_path):
    gw, service = await start_tracking(tracking_config(tmp_path / "data"))
    try:
        now = time.time()
        for camp, n in (("spring", 5), ("autumn-<b>x</b>", 2)):
            for i in range(n):
                q, r = f"{camp[:6]}{i}", f"r{i}@x.net"
                # tags: every spring message "receipts", the first two also a tag that is markup
                tags = ("receipts", "<i>vip</i>") if camp == "spring" and i < 2 else ("receipts",)
                await gw.emit(Event("accepted", queue_id=q, recipient=r, campaign_id=camp, time=now - 7200, tags=tags))
                if i == n - 1:
                    await gw.emit(Event("bounced", queue_id=q, recipient=r, campaign_id=camp, time=now - 7100,
                                        data={"status": "5.1.1"}, tags=tags))
                else:
                    await gw.emit(Event("delivered", queue_id=q, recipient=r, campaign_id=camp, time=now - 7100,
                                        tags=tags))
        async with aiohttp.ClientSession(headers={"User-Agent": HUMAN_UA}) as http:
            for i, ua in ((0, HUMAN_UA), (0, HUMAN_UA), (1, HUMAN_UA), (2, "GoogleImageProxy")):
                token = signer().sign({"k": "o", "q": f"spring{i}", "r": f"r{i}@x.net", "c": "spring"})
                async with http.get(f"{service.url}/o/{token}.gif", headers={"User-Agent": ua}) as resp:
                    assert resp.status == 200
            token = signer().sign({"k": "c", "u": "https://shop.example/", "q": "spring0", "r": "r0@x.net",
                                   "c": "spring"})
            async with http.get(f"{service.url}/c/{token}", allow_redirects=False) as resp:
                assert resp.status == 302
            token = signer().sign({"k": "u", "q": "spring1", "r": "r1@x.net", "c": "spring"})
            async with http.post(f"{service.url}/u/{token}") as resp:
                assert resp.status == 200

        dom = await dump_dom(f"{service.url}/stats", tmp_path / "profile")
        assert 'data-rendered="1"' in dom, dom[:2000]
        expected = {r["campaign"]: r for r in campaign_stats(gw.events)}
        expected["*"] = totals(list(expected.values()))
        cells = re.findall(r'<td data-campaign="([^"]*)" data-field="([^"]+)" data-value="([^"]*)">([^<]*)</td>', dom)
        shown: dict[tuple[str, str], str] = {(c, f): v for c, f, v, _ in cells}
        # what a reader sees is the same figure: rates as percentages with one decimal
        for _, f, v, text in cells:
            assert text == (f"{float(v) * 100:.1f}%" if f.endswith("_rate") else v), (f, v, text)
        names = {c for c, _, _, _ in cells}
        assert names == {"spring", "autumn-&lt;b&gt;x&lt;/b&gt;", "*"}  # a campaign name is text, never markup
        for camp, row in expected.items():
            dom_name = camp.replace("<", "&lt;").replace(">", "&gt;")
            for field in FIELDS:
                assert float(shown[(dom_name, field)]) == row[field], (camp, field)
        # the by-tag table: one row per tag, the figures of tag_stats, a tag name is text, never markup
        tag_cells = re.findall(r'<td data-tag="([^"]*)" data-field="([^"]+)" data-value="([^"]*)">([^<]*)</td>', dom)
        by_tag = {(t, f): v for t, f, v, _ in tag_cells}
        expected_tags = {r["tag"]: r for r in tag_stats(gw.events)}
        assert {t for t, _, _, _ in tag_cells} == {"receipts", "&lt;i&gt;vip&lt;/i&gt;"}
        assert "<i>vip</i>" not in dom and ">&lt;i&gt;vip&lt;/i&gt;</td>" in dom
        for tag, row in expected_tags.items():
            dom_tag = tag.replace("<", "&lt;").replace(">", "&gt;")
            for field in FIELDS:
                assert float(by_tag[(dom_tag, field)]) == row[field], (tag, field)
        assert (expected_tags["receipts"]["sent"], expected_tags["<i>vip</i>"]["sent"]) == (7, 2)
        assert expected["spring"]["opens"] == 3 and expected["spring"]["machine_opens"] == 1
        assert expected["spring"]["unsubscribes"] == 1 and expected["*"]["bounced_hard"] == 2
        # the chart was drawn: one point per time bucket for each series, and totals in the legend
        assert re.search(r'<span [^>]*data-series="opened" data-total="4"', dom)
        assert re.search(r'<span [^>]*data-series="delivered" data-total="5"', dom)
        assert dom.count("<circle") >= 5 and "<svg" in dom
    finally:
        await gw.stop()
