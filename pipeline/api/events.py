"""``GET /api/v1/events``: the event log, newest first, filtered by type, credential and time.

What it is for: events that belong to no message of the log, above all ``rejected`` (refusals at
connect, HELO, AUTH, MAIL, RCPT or DATA, and refused HTTP sends; aggregated, see
:mod:`pipeline.events.refusals`). A tenant's token sees its own credential's events only (asking for
another credential is a 404); an administrator's sees all, refusals before AUTH included (they have
no credential). Pages are keyset pagination on the event id, like the message search.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from aiohttp import web

from pipeline.contract.vocabulary import EventType
from pipeline.events.stats import parse_date
from pipeline.ports import ApiPrincipalView, EventStore

NO_STORE = {"Cache-Control": "no-store"}
PARAMS = ("type", "credential", "since", "until", "limit", "cursor")
TYPES = tuple(str(t) for t in EventType)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=NO_STORE)


def _cursor(event_id: int) -> str:
    return base64.urlsafe_b64encode(f"e{event_id}".encode()).decode().rstrip("=")


def _uncursor(text: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise ValueError("invalid cursor") from None
    if not raw.startswith("e") or not raw[1:].isdigit() or len(raw) > 20:
        raise ValueError("invalid cursor")
    return int(raw[1:])


class EventHandlers:
    """The event log on the :class:`~pipeline.ports.EventStore` port (its read-only ``query``)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def _where(self, q: Any, principal: ApiPrincipalView) -> tuple[str, list[Any], int]:
        unknown = sorted(set(q) - set(PARAMS))
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r} (known: {', '.join(PARAMS)})")
        clauses, args = [], []
        if q.get("type"):
            if q["type"] not in TYPES:
                raise ValueError(f"type must be one of {', '.join(TYPES)}")
            clauses.append(f"type = '{q['type']}'")  # from the whitelist; a literal lets partial indexes match
        credential = principal.credential or q.get("credential") or None
        if credential is not None:
            clauses.append("credential = ?")
            args.append(credential)
        if q.get("since"):
            clauses.append("time >= ?")
            args.append(parse_date(q["since"]))
        if q.get("until"):
            clauses.append("time < ?")
            args.append(parse_date(q["until"], end=True))
        if q.get("cursor"):
            clauses.append("id < ?")
            args.append(_uncursor(q["cursor"]))
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            raise ValueError("limit must be an integer") from None
        if not 1 <= limit <= 200:
            raise ValueError("limit must be between 1 and 200")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args, limit

    async def list(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        q = request.query
        if principal.credential and q.get("credential") not in (None, "", principal.credential):
            return _error(404, "no such credential")
        try:
            where, args, limit = self._where(q, principal)
        except ValueError as exc:
            return _error(400, str(exc))
        sql = ("SELECT id, type, time, queue_id, recipient, credential, campaign_id, letter_id, data FROM events"
               f"{where} ORDER BY id DESC LIMIT ?")
        rows = await asyncio.to_thread(self.store.query, sql, (*args, limit + 1))
        events = []
        for id_, type_, t, qid, rcpt, cred, camp, letter, data in rows[:limit]:
            events.append({"id": int(id_), "type": type_, "time": float(t), "queue_id": qid, "recipient": rcpt,
                           "credential": cred, "campaign_id": camp, "letter_id": letter,
                           "data": json.loads(data) if data else {}})
        more = len(rows) > limit
        return web.json_response({"events": events, "next": _cursor(events[-1]["id"]) if more else None},
                                 headers=NO_STORE)


def add_events_operation(doc: dict[str, Any]) -> None:
    """``GET /api/v1/events`` and its schemas, added to the OpenAPI document."""

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    def answer(description: str, schema: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}

    def param(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": description,
                "schema": schema or {"type": "string"}}

    nullable = {"type": ["string", "null"]}
    doc["paths"]["/api/v1/events"] = {"get": {
        "operationId": "listEvents",
        "summary": "The event log, newest first (refusals: type=rejected).",
        "parameters": [
            param("type", "Only this event type.", {"type": "string", "enum": list(TYPES)}),
            param("credential", "An administrator's choice; a tenant sees its own credential's events only."),
            param("since", "YYYY-MM-DD (UTC) or an ISO date-time."),
            param("until", "YYYY-MM-DD (inclusive) or an ISO date-time."),
            param("limit", "1-200, default 50.", {"type": "integer", "minimum": 1, "maximum": 200}),
            param("cursor", "The `next` of the previous page."),
        ],
        "responses": {
            "200": answer("A page of events", "EventPage"),
            "400": answer("A parameter is invalid or unknown.", "Error"),
            "401": answer("No valid bearer token.", "Error"),
            "404": answer("Not this token's credential.", "Error"),
            "429": answer("Too many failed tokens from this address; see Retry-After.", "Error"),
        },
    }}
    doc["components"]["schemas"]["LoggedEvent"] = {
        "type": "object", "additionalProperties": False,
        "required": ["id", "type", "time", "queue_id", "recipient", "credential", "data"],
        "properties": {
            "id": {"type": "integer"}, "type": {"type": "string", "enum": list(TYPES)},
            "time": {"type": "number", "description": "Unix time"}, "queue_id": nullable, "recipient": nullable,
            "credential": nullable, "campaign_id": nullable, "letter_id": nullable,
            "data": {"type": "object", "description": "For rejected: code, enhanced, text, phase, client_ip, "
                                                      "sender, listener, count (repeated, since: an aggregate)."},
        },
    }
    doc["components"]["schemas"]["EventPage"] = {
        "type": "object", "required": ["events", "next"], "additionalProperties": False,
        "properties": {"events": {"type": "array", "items": ref("LoggedEvent")}, "next": nullable},
    }
