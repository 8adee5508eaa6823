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
from typing import Any

from aiohttp import web

from pipeline.events.listing import TYPES, EventQuery, event_page
from pipeline.events.stats import parse_date
from pipeline.ports import ApiPrincipalView, EventStore

NO_STORE = {"Cache-Control": "no-store"}
PARAMS = ("type", "credential", "since", "until", "limit", "cursor")


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

    async def list(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        q = request.query
        if principal.credential and q.get("credential") not in (None, "", principal.credential):
            return _error(404, "no such credential")
        unknown = sorted(set(q) - set(PARAMS))
        if unknown:
            return _error(400, f"unknown parameter {unknown[0]!r} (known: {', '.join(PARAMS)})")
        try:
            limit = int(q.get("limit", "50"))
            if not 1 <= limit <= 200:
                raise ValueError
        except ValueError:
            return _error(400, "limit must be an integer between 1 and 200")
        try:
            query = EventQuery(
                type=q.get("type") or None,
                credential=principal.credential or q.get("credential") or None,  # a tenant: always its own
                since=parse_date(q["since"]) if q.get("since") else None,
                until=parse_date(q["until"], end=True) if q.get("until") else None,
                before=_uncursor(q["cursor"]) if q.get("cursor") else None,
            )
            events, next_id = await asyncio.to_thread(event_page, self.store, query, limit)
        except ValueError as exc:
            return _error(400, str(exc))
        return web.json_response(
            {"events": events, "next": _cursor(next_id) if next_id is not None else None}, headers=NO_STORE
        )


def add_events_operation(doc: dict[str, Any]) -> None:
    """``GET /api/v1/events`` and its schemas, added to the OpenAPI document."""

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    def answer(description: str, schema: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}

    def param(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": description,
            "schema": schema or {"type": "string"},
        }

    nullable = {"type": ["string", "null"]}
    doc["paths"]["/api/v1/events"] = {
        "get": {
            "operationId": "listEvents",
            "summary": "The event log, newest first (refusals: type=rejected).",
            "parameters": [
                param("type", "Only this event type.", {"type": "string", "enum": list(TYPES)}),
                param(
                    "credential", "An administrator's choice; a tenant sees its own credential's events only."
                ),
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
        }
    }
    doc["components"]["schemas"]["LoggedEvent"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "type", "time", "queue_id", "recipient", "credential", "data"],
        "properties": {
            "id": {"type": "integer"},
            "type": {"type": "string", "enum": list(TYPES)},
            "time": {"type": "number", "description": "Unix time"},
            "queue_id": nullable,
            "recipient": nullable,
            "credential": nullable,
            "campaign_id": nullable,
            "letter_id": nullable,
            "data": {
                "type": "object",
                "description": "For rejected: code, enhanced, text, phase, client_ip, "
                "sender, listener, count (repeated, since: an aggregate).",
            },
        },
    }
    doc["components"]["schemas"]["EventPage"] = {
        "type": "object",
        "required": ["events", "next"],
        "additionalProperties": False,
        "properties": {"events": {"type": "array", "items": ref("LoggedEvent")}, "next": nullable},
    }
