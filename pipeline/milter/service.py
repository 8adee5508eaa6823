"""The milter as a gateway service: ``[milter] listen`` in the config, or ``smtpgate milter --listen``.

It needs the chain, the config and the credentials (``[[credentials]]`` and ``credentials.db``)
to map the MTA's ``{auth_authen}`` login and client address onto the credential hooks see.
"""

from __future__ import annotations

import asyncio
import logging

from pipeline.accounts.authenticator import Authenticator
from pipeline.accounts.store import CredentialStore, open_credential_store
from pipeline.chain.runner import Chain
from pipeline.config import Config, MilterEndpoint, parse_milter_listen
from pipeline.contract.context import Credential
from pipeline.contract.vocabulary import CredentialKind
from pipeline.milter.message import FailPolicy, WorkerPool
from pipeline.milter.server import MilterServer
from pipeline.milter.session import RefusalNotes

log = logging.getLogger("smtpgate.milter")


class AccountDirectory:
    """Credentials by the MTA's SASL login or by client address (the ingress's own records)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def match_ip(self, ip: str) -> Credential | None:
        return self.authenticator.match_ip(ip)

    def by_login(self, login: str) -> Credential | None:
        """A ``password`` credential with that username, else one with that name, else a bare
        credential named after the login (the MTA authenticated it; default switches apply).
        A disabled credential gives ``None``: hooks see an unauthenticated client."""
        wanted = login.lower()
        records = self.authenticator.records()
        found = next((r for r in records if (r.section.username or "").lower() == wanted), None) or next(
            (r for r in records if r.name.lower() == wanted), None
        )
        if found is None:
            return Credential(name=login, kind=CredentialKind.PASSWORD)  # the MTA checked a login and password
        if found.disabled:
            log.warning(
                "milter: login %s maps to disabled credential %s: treated as unauthenticated",
                login,
                found.name,
            )
            return None
        return found.credential()


class MilterService:
    """Starts a :class:`MilterServer` on the configured endpoints."""

    name = "milter"

    def __init__(self, config: Config, chain: Chain, listen: list[str] | None = None,
                 refusals: RefusalNotes | None = None) -> None:
        self.config = config
        self.chain = chain
        self.refusals = refusals
        self.endpoints: list[MilterEndpoint] = [
            parse_milter_listen(s) for s in (listen or config.milter.listen)
        ]
        self.server: MilterServer | None = None
        self.pool: WorkerPool | None = None
        self._store: CredentialStore | None = None

    async def start(self) -> None:
        section = self.config.milter
        self._store = open_credential_store(self.config)
        directory = AccountDirectory(Authenticator(self.config, self._store))
        policy = FailPolicy(section.on_error, section.on_timeout)
        if section.workers:
            self.pool = WorkerPool(self.config, policy, section.workers)
            await self.pool.start()
        self.server = MilterServer(
            self.chain,
            self.config,
            directory,
            policy,
            max_packet=section.max_packet,
            idle_timeout=section.idle_timeout,
            end_of_message=self.pool.run if self.pool else None,
            refusals=self.refusals,
        )
        await self.server.start(self.endpoints)

    @property
    def bound(self) -> list[MilterEndpoint]:
        return self.server.bound if self.server else []

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)
            self.pool = None
        if self._store is not None:
            self._store.close()
            self._store = None


def milter_services(config: Config, chain: Chain, refusals: RefusalNotes | None = None) -> list[MilterService]:
    """The milter service when ``[milter] listen`` names an endpoint, else nothing."""
    return [MilterService(config, chain, refusals=refusals)] if config.milter.listen else []
