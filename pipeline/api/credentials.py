"""``/api/v1/credentials``: list, add, disable, enable and rotate SMTP credentials over the API.

An administrator's token manages every credential in ``credentials.db``; the config file's
``[[credentials]]`` are listed but changed only by editing the file (409). A tenant's token sees
its own credential only and may rotate its secret (an application's key leaked: the tenant fixes
it without the operator); anything else is 404, as everywhere in the API. A generated secret is in
the response body once (never in a URL or a log) and stored only as a salted hash.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from pipeline.ports import ApiPrincipalView, CredentialAdmin

NO_STORE = {"Cache-Control": "no-store"}
OPTIONS = {
    "features": dict, "locked": list, "sandbox": bool, "allowed_sender_domains": list, "max_message_size": int,
    "max_recipients": int, "messages_per_minute": int,
}
SHOWN = ("name", "kind", "username", "key_id", "disabled", "sandbox", "features", "locked",
         "allowed_sender_domains", "max_message_size", "max_recipients", "messages_per_minute")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=NO_STORE)


def _view(row: dict[str, Any], source: str) -> dict[str, Any]:
    """What the API shows of a credential: never a secret or its hash, never networks' secrets."""
    out = {k: row.get(k) for k in SHOWN}
    out["disabled"], out["sandbox"] = bool(out["disabled"]), bool(out["sandbox"])
    out["features"], out["locked"] = out["features"] or {}, list(out["locked"] or [])
    out["allowed_sender_domains"] = list(out["allowed_sender_domains"] or [])
    out["source"] = source
    return out


class CredentialHandlers:
    """The credential endpoints on the :class:`~pipeline.ports.CredentialAdmin` port."""

    def __init__(self, store: CredentialAdmin, declared: Sequence[dict[str, Any]]) -> None:
        self.store = store
        self.declared = {d["name"]: d for d in declared}  # [[credentials]] of the config file

    async def _all(self) -> list[dict[str, Any]]:
        stored = await asyncio.to_thread(self.store.list)
        rows = [_view(d, "config") for d in self.declared.values()]
        return rows + [_view(r, "store") for r in stored if r["name"] not in self.declared]

    async def list(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        rows = await self._all()
        if principal.credential is not None:
            rows = [r for r in rows if r["name"] == principal.credential]
        return web.json_response({"credentials": rows}, headers=NO_STORE)

    async def add(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        if principal.credential is not None:
            return _error(404, "not found")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body must be JSON")
        if not isinstance(body, dict) or set(body) - {"name", "kind", "username", *OPTIONS}:
            return _error(400, f"expected name, kind (apikey|password), username and options: {', '.join(OPTIONS)}")
        name, kind = body.get("name"), body.get("kind", "apikey")
        if not isinstance(name, str) or kind not in ("apikey", "password"):
            return _error(400, "name must be a string and kind apikey or password (ip: use the CLI)")
        if name in self.declared:
            return _error(409, f"credential {name!r} is declared in the config file")
        options = {}
        for key, typ in OPTIONS.items():
            if key in body and body[key] is not None:
                if not isinstance(body[key], typ) or (typ is int and isinstance(body[key], bool)):
                    return _error(400, f"{key} must be {typ.__name__}")
                options[key] = body[key]
        try:
            secret = await asyncio.to_thread(self.store.add, name, kind, username=body.get("username"),
                                             options=options)
        except ValueError as exc:
            status = 409 if "already" in str(exc) else 400
            return _error(status, str(exc))
        [row] = [r for r in await self._all() if r["name"] == name]
        return web.json_response({**row, "secret": secret}, status=201, headers=NO_STORE)

    async def _change(self, request: web.Request, principal: ApiPrincipalView, action: str) -> web.Response:
        name = request.match_info["name"]
        tenant_may = action == "rotate" and principal.credential == name
        if principal.credential is not None and not tenant_may:
            return _error(404, "no such credential")
        if name in self.declared:
            return _error(409, f"credential {name!r} is declared in the config file: change it there")
        try:
            if action == "rotate":
                secret = await asyncio.to_thread(self.store.rotate, name)
                return web.json_response({"name": name, "secret": secret}, headers=NO_STORE)
            await asyncio.to_thread(self.store.set_disabled, name, action == "disable")
        except ValueError as exc:
            return _error(404 if "no credential" in str(exc) else 409, str(exc))
        [row] = [r for r in await self._all() if r["name"] == name]
        return web.json_response(row, headers=NO_STORE)

    async def disable(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        return await self._change(request, principal, "disable")

    async def enable(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        return await self._change(request, principal, "enable")

    async def rotate(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        return await self._change(request, principal, "rotate")
