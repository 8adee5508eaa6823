"""Which egress a copy takes: the credential's named egress, else ``[egress]``; sandbox never leaves."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from pipeline.config import Config, EgressSection
from pipeline.egress.base import Egress
from pipeline.egress.maildir import MaildirEgress
from pipeline.egress.mx import MxEgress, MxShared, build_mx_shared, dns_resolver
from pipeline.egress.null import NullEgress
from pipeline.egress.resolver import Resolver
from pipeline.egress.smtp import SmtpEgress
from pipeline.egress.state import EgressState
from pipeline.ports import Metrics


class UnknownEgress(LookupError):
    """A credential names an egress that is not in ``[egresses]``."""


def build_egress(
    settings: EgressSection, config: Config, name: str, resolver: Resolver | None = None, shared: MxShared | None = None
) -> Egress:
    """One egress instance from its config section."""
    helo = config.gateway.hostname
    if settings.type == "smtp":
        return SmtpEgress(settings, helo, name=name)
    if settings.type == "mx":
        return MxEgress(settings, helo, resolver=resolver or dns_resolver(config, settings.timeout), name=name,
                        shared=shared)
    if settings.type == "null":
        return NullEgress(name=name)
    return MaildirEgress(settings.maildir or config.data_dir / "maildir", name=name)


class EgressRouter:
    """Builds each egress once (so connection pools are shared) and picks one per credential."""

    SANDBOX = "sandbox"

    def __init__(
        self, config: Config, resolver: Resolver | None = None, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.metrics: Metrics = metrics if metrics is not None else collections.Counter()
        self._egresses: dict[str, Egress] = {}
        self._shared: MxShared | None = None
        self._state: EgressState | None = None
        self._listeners: list[Callable[[], None]] = []

    def _mx_shared(self, settings: EgressSection) -> MxShared:
        """Shaping, TLS policies and pools shared by every ``mx`` egress (built with the first one)."""
        if self._shared is None:
            self._state = EgressState(self.config.data_dir / "egress.db")
            resolver = self.resolver or dns_resolver(self.config, settings.timeout)
            self.resolver = resolver
            self._shared = build_mx_shared(self.config, resolver, self.metrics, self._state)  # type: ignore[arg-type]
            for callback in self._listeners:
                self._shared.shaper.add_listener(callback)
        return self._shared

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback`` runs when a destination held back by shaping may take work again."""
        self._listeners.append(callback)
        if self._shared is not None:
            self._shared.shaper.add_listener(callback)

    def held_domains(self) -> frozenset[str]:
        """Recipient domains not worth claiming now (every path suspended, over its rate or saturated)."""
        return self._shared.shaper.held_domains() if self._shared is not None else frozenset()

    def _build(self, settings: EgressSection, name: str) -> Egress:
        shared = self._mx_shared(settings) if settings.type == "mx" else None
        return build_egress(settings, self.config, name, self.resolver, shared)

    def get(self, name: str) -> Egress:
        egress = self._egresses.get(name)
        if egress is None:
            if name == self.SANDBOX:
                egress = MaildirEgress(self.config.data_dir / "sandbox", name=self.SANDBOX)
            elif name == "default":
                egress = self._build(self.config.egress, "default")
            elif name in self.config.egresses:
                egress = self._build(self.config.egresses[name], name)
            else:
                raise UnknownEgress(f"egress {name!r} is not configured (no [egresses.{name}] in {self.config.source})")
            self._egresses[name] = egress
        return egress

    @staticmethod
    def name_for(credential: dict[str, Any] | None) -> str:
        """The egress name for a credential record (``MessageContext.to_record()['credential']``)."""
        if credential:
            if credential.get("sandbox"):
                return EgressRouter.SANDBOX
            if credential.get("egress"):
                return str(credential["egress"])
        return "default"

    async def close(self) -> None:
        for egress in self._egresses.values():
            await egress.close()
        self._egresses.clear()
        if self._shared is not None:
            await self._shared.close()
            self._shared = None
        if self._state is not None:
            self._state.close()
            self._state = None
