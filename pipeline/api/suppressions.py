"""``/api/v1/suppressions``: the stoplist over the API (list, add, remove, export as CSV).

Scopes: an address is suppressed for one credential (``scope`` its name) or for every
credential (``scope`` ``""``, shown as ``null``). A tenant's token works on its own credential's
scope only: it lists, adds and removes there, and anything else is 404; the global list is the
administrator's. An administrator chooses with ``credential`` (absent: the global scope).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from typing import Any

from aiohttp import web

from pipeline.ports import ApiPrincipalView, SuppressionAdmin, SuppressionEntry

GLOBAL = ""
MAX_REASON = 200


def _entry(s: SuppressionEntry) -> dict[str, Any]:
    return {"address": s.address, "credential": s.scope or None, "reason": s.reason, "time": s.time}


def _valid_address(value: Any) -> str | None:
    """A plausible mailbox (``local@domain``), normalised as the stoplist stores it; else ``None``."""
    if not isinstance(value, str):
        return None
    address = value.strip().strip("<>").strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or "." not in domain or len(address) > 254:
        return None
    if any(c.isspace() or not c.isprintable() or c in "<>,;\"" for c in address):
        return None
    return address


def _cell(value: Any) -> str:
    """A CSV cell a spreadsheet will not run as a formula (=, +, -, @ prefixes are quoted)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class SuppressionHandlers:
    """The stoplist endpoints on the :class:`~pipeline.ports.SuppressionAdmin` port."""

    def __init__(self, store: SuppressionAdmin) -> None:
        self.store = store

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status, headers={"Cache-Control": "no-store"})

    def _scope(self, principal: ApiPrincipalView, requested: Any) -> str | None:
        """The scope this request works on; ``None`` when it names a scope it may not see."""
        if principal.credential is not None:
            return principal.credential if requested in (None, "", principal.credential) else None
        if requested in (None, ""):
            return GLOBAL
        # an administrator may scope to any credential name, even one not created yet
        ok = isinstance(requested, str) and len(requested) <= 100 and requested.isprintable()
        return str(requested) if ok else None

    async def _rows(self, request: web.Request, principal: ApiPrincipalView) -> list[SuppressionEntry] | web.Response:
        q = request.query
        if set(q) - {"credential"}:
            return self._error(400, "unknown parameter (known: credential)")
        if principal.credential is None and "credential" not in q:
            return list(await asyncio.to_thread(self.store.suppressions, None))  # an administrator: every scope
        scope = self._scope(principal, q.get("credential"))
        if scope is None:
            return self._error(404, "no such credential")
        return list(await asyncio.to_thread(self.store.suppressions, scope))

    async def list(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        rows = await self._rows(request, principal)
        if isinstance(rows, web.Response):
            return rows
        return web.json_response({"suppressions": [_entry(s) for s in rows]}, headers={"Cache-Control": "no-store"})

    async def csv(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        rows = await self._rows(request, principal)
        if isinstance(rows, web.Response):
            return rows
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["address", "credential", "reason", "suppressed_at"])
        for s in rows:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.time))
            writer.writerow([_cell(s.address), _cell(s.scope), _cell(s.reason), when])
        return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8", headers={
            "Content-Disposition": 'attachment; filename="suppressions.csv"', "Cache-Control": "no-store"})

    async def add(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._error(400, "the body must be JSON: {\"address\": ..., \"reason\": ...}")
        if not isinstance(body, dict) or set(body) - {"address", "reason", "credential"}:
            return self._error(400, "expected an object with address, optional reason and credential")
        address = _valid_address(body.get("address"))
        if address is None:
            return self._error(400, "address must be a mailbox such as user@example.net")
        reason = body.get("reason", "manual")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON or not reason.isprintable():
            return self._error(400, f"reason must be 1-{MAX_REASON} printable characters")
        scope = self._scope(principal, body.get("credential"))
        if scope is None:
            return self._error(404, "no such credential")
        added = await asyncio.to_thread(self.store.suppress, address, scope, reason.strip())
        entry = {"address": address, "credential": scope or None, "reason": reason.strip(), "added": added}
        return web.json_response(entry, status=201 if added else 200, headers={"Cache-Control": "no-store"})

    async def remove(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        if set(request.query) - {"credential"}:
            return self._error(400, "unknown parameter (known: credential)")
        address = _valid_address(request.match_info["address"])
        scope = self._scope(principal, request.query.get("credential"))
        if address is None or scope is None:
            return self._error(404, "no such suppression")
        removed = await asyncio.to_thread(self.store.unsuppress, address, scope)
        if not removed:
            return self._error(404, "no such suppression")
        return web.Response(status=204, headers={"Cache-Control": "no-store"})
