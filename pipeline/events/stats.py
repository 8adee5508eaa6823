"""Campaign statistics from the event store: per campaign (and per day), with rates, and a
timeline for the chart. Human and machine opens/clicks are counted apart.

"sent" counts accepted recipient copies; rates are over delivered copies (opens, clicks,
unsubscribes) or over sent ones (delivery, bounces); unique counts are distinct copies
(queue id + recipient). The SQL runs on both event-store backends: portable ``CASE`` sums, and
the one date function that differs chosen by the store's ``dialect``.
"""

from __future__ import annotations

import calendar
import datetime
from typing import Any, Protocol

from pipeline.contract.vocabulary import EventType


class _Queryable(Protocol):
    def query(self, sql: str, args: Any = ()) -> list[tuple[Any, ...]]: ...


COUNT_COLUMNS: dict[str, str] = {
    "sent": "SUM(CASE WHEN type = 'accepted' THEN weight ELSE 0 END)",
    "delivered": "SUM(CASE WHEN type = 'delivered' THEN 1 ELSE 0 END)",
    "bounced": "SUM(CASE WHEN type = 'bounced' THEN 1 ELSE 0 END)",
    "bounced_hard": "SUM(CASE WHEN type = 'bounced' AND bounce_class = 'hard' THEN 1 ELSE 0 END)",
    "bounced_soft": "SUM(CASE WHEN type = 'bounced' AND bounce_class = 'soft' THEN 1 ELSE 0 END)",
    "deferred": "SUM(CASE WHEN type = 'deferred' THEN 1 ELSE 0 END)",
    "expired": "SUM(CASE WHEN type = 'expired' THEN 1 ELSE 0 END)",
    "failed": "SUM(CASE WHEN type = 'failed' THEN 1 ELSE 0 END)",
    "complaints": "SUM(CASE WHEN type = 'complained' THEN 1 ELSE 0 END)",
    "opens": "SUM(CASE WHEN type = 'opened' AND machine = 0 THEN 1 ELSE 0 END)",
    "unique_opens": "COUNT(DISTINCT CASE WHEN type = 'opened' AND machine = 0 THEN {copy} END)",
    "machine_opens": "SUM(CASE WHEN type = 'opened' AND machine = 1 THEN 1 ELSE 0 END)",
    "unique_machine_opens": "COUNT(DISTINCT CASE WHEN type = 'opened' AND machine = 1 THEN {copy} END)",
    "clicks": "SUM(CASE WHEN type = 'clicked' AND machine = 0 THEN 1 ELSE 0 END)",
    "unique_clicks": "COUNT(DISTINCT CASE WHEN type = 'clicked' AND machine = 0 THEN {copy} END)",
    "machine_clicks": "SUM(CASE WHEN type = 'clicked' AND machine = 1 THEN 1 ELSE 0 END)",
    "unique_machine_clicks": "COUNT(DISTINCT CASE WHEN type = 'clicked' AND machine = 1 THEN {copy} END)",
    "unsubscribes": "COUNT(DISTINCT CASE WHEN type = 'unsubscribed' THEN {copy} END)",
}
_COPY = "COALESCE(queue_id, '') || '|' || COALESCE(recipient, '')"

TIMELINE_TYPES = tuple(
    EventType(t) for t in ("accepted", "delivered", "bounced", "opened", "clicked", "unsubscribed", "complained")
)


def parse_date(text: str, *, end: bool = False) -> float:
    """``YYYY-MM-DD`` (UTC; the end of that day when ``end``) or an ISO date-time, as a timestamp."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = datetime.date.fromisoformat(text)
            ts = float(calendar.timegm(day.timetuple()))
            return ts + 86400 if end else ts
        dt = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid date {text!r}: expected YYYY-MM-DD or an ISO date-time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return dt.timestamp()


def _ratio(num: int, den: int) -> float:
    return round(num / den, 4) if den else 0.0


def add_rates(row: dict[str, Any]) -> dict[str, Any]:
    sent, delivered = row["sent"], row["delivered"]
    row["delivery_rate"] = _ratio(delivered, sent)
    row["bounce_rate"] = _ratio(row["bounced"], sent)
    row["open_rate"] = _ratio(row["unique_opens"], delivered)
    row["click_rate"] = _ratio(row["unique_clicks"], delivered)
    row["click_to_open_rate"] = _ratio(row["unique_clicks"], row["unique_opens"])
    row["unsubscribe_rate"] = _ratio(row["unsubscribes"], delivered)
    row["complaint_rate"] = _ratio(row["complaints"], delivered)
    return row


def _where(
    campaign: str | None, since: float | None, until: float | None, credential: str | None = None
) -> tuple[str, list[Any]]:
    clauses: list[str] = ["type <> 'rejected'"]  # refusals are not mail: no row, no bucket of their own
    args: list[Any] = []
    if credential is not None:
        clauses.append("credential = ?")
        args.append(credential)
    if campaign is not None:
        clauses.append("COALESCE(campaign_id, '') = ?")
        args.append(campaign)
    if since is not None:
        clauses.append("time >= ?")
        args.append(since)
    if until is not None:
        clauses.append("time < ?")
        args.append(until)
    return " WHERE " + " AND ".join(clauses), args


def campaign_stats(
    store: _Queryable,
    *,
    campaign: str | None = None,
    since: float | None = None,
    until: float | None = None,
    by_day: bool = False,
    credential: str | None = None,
    by_credential: bool = False,
) -> list[dict[str, Any]]:
    """One row per campaign (``""`` for mail without one), or per campaign and UTC day;
    ``by_credential``: per credential first, so two credentials' same campaign id stay apart."""
    cols = ", ".join(f"{expr.format(copy=_COPY)} AS {name}" for name, expr in COUNT_COLUMNS.items())
    where, args = _where(campaign, since, until, credential)
    key_cols = (["COALESCE(credential, '')"] if by_credential else []) + ["COALESCE(campaign_id, '')"]
    key_cols += ["day"] if by_day else []
    keys = ", ".join(key_cols)
    sql = f"SELECT {keys}, {cols} FROM events{where} GROUP BY {keys} ORDER BY {keys}"
    out = []
    for row in store.query(sql, args):
        head: dict[str, Any] = {}
        if by_credential:
            head["credential"], row = row[0], row[1:]
        head["campaign"] = row[0]
        rest = row[1:]
        if by_day:
            head["day"] = row[1]
            rest = row[2:]
        counts = {name: int(v or 0) for name, v in zip(COUNT_COLUMNS, rest, strict=True)}
        out.append(add_rates({**head, **counts}))
    return out


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum of per-campaign rows (unique counts add up: a copy belongs to one campaign)."""
    total = {name: sum(int(r[name]) for r in rows) for name in COUNT_COLUMNS}
    return add_rates(total)


def timeline(
    store: _Queryable, *, campaign: str | None = None, since: float | None = None, until: float | None = None,
    credential: str | None = None,
) -> dict[str, Any]:
    """Event counts per time bucket (hours when the data spans two days or less, else days)."""
    where, args = _where(campaign, since, until, credential)
    span = store.query(f"SELECT MIN(time), MAX(time) FROM events{where}", args)
    lo, hi = span[0] if span else (None, None)
    if lo is None:
        return {"bucket": "day", "labels": [], "series": {t: [] for t in TIMELINE_TYPES}}
    hourly = hi - lo <= 2 * 86400
    fmt = "%Y-%m-%d %H:00" if hourly else "%Y-%m-%d"
    if getattr(store, "dialect", "sqlite") == "postgres":
        pg_fmt = "YYYY-MM-DD HH24:00" if hourly else "YYYY-MM-DD"
        bucket = f"to_char(to_timestamp(time) AT TIME ZONE 'UTC', '{pg_fmt}')"
    else:
        bucket = f"strftime('{fmt}', time, 'unixepoch')"
    rows = store.query(f"SELECT {bucket} AS b, type, COUNT(*) FROM events{where} GROUP BY b, type", args)
    labels = sorted({r[0] for r in rows})
    index = {label: i for i, label in enumerate(labels)}
    series = {t: [0] * len(labels) for t in TIMELINE_TYPES}
    for b, type_, n in rows:
        if type_ in series:
            series[type_][index[b]] = int(n)
    return {"bucket": "hour" if hourly else "day", "labels": labels, "series": series}


def stats_report(
    store: _Queryable, *, campaign: str | None = None, since: float | None = None, until: float | None = None,
    credential: str | None = None, by_credential: bool = False,
) -> dict[str, Any]:
    """What ``GET /api/stats`` returns: campaigns, days, totals, the timeline and the rows per tag.
    ``credential`` restricts every part to one credential's events; ``by_credential`` splits rows per
    credential (``GET /api/v1/stats``)."""
    campaigns = campaign_stats(store, campaign=campaign, since=since, until=until, credential=credential,
                               by_credential=by_credential)
    days = campaign_stats(store, campaign=campaign, since=since, until=until, credential=credential,
                          by_credential=by_credential, by_day=True)
    return {
        "campaigns": campaigns,
        "days": days,
        "totals": totals(campaigns),
        "timeline": timeline(store, campaign=campaign, since=since, until=until, credential=credential),
        "tags": tag_stats(store, campaign=campaign, since=since, until=until, credential=credential),
    }


def tag_stats(
    store: _Queryable, *, campaign: str | None = None, since: float | None = None, until: float | None = None,
    credential: str | None = None,
) -> list[dict[str, Any]]:
    """One row per tag (vendor dialects' categories and tags): the campaign columns and rates.

    A message with two tags counts under both, so the rows do not add up to the totals.
    """
    from pipeline.events.metadata import TAGGED_EVENTS, TAGGED_EVENTS_PG

    tagged = TAGGED_EVENTS_PG if getattr(store, "dialect", "sqlite") == "postgres" else TAGGED_EVENTS
    cols = ", ".join(f"{expr.format(copy=_COPY)} AS {name}" for name, expr in COUNT_COLUMNS.items())
    where, args = _where(campaign, since, until, credential)
    sql = f"SELECT tag, {cols} FROM {tagged}{where} GROUP BY tag ORDER BY tag"
    out = []
    for row in store.query(sql, args):
        counts = {name: int(v or 0) for name, v in zip(COUNT_COLUMNS, row[1:], strict=True)}
        out.append(add_rates({"tag": row[0], **counts}))
    return out
