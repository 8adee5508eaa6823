"""Which egress a copy takes: the credential's named egress, else ``[egress]``; sandbox never leaves."""

from __future__ import annotations

from typing import Any

from pipeline.config import Config, EgressSection
from pipeline.egress.base import Egress
from pipeline.egress.maildir import MaildirEgress
from pipeline.egress.mx import MxEgress
from pipeline.egress.null import NullEgress
from pipeline.egress.resolver import Resolver
from pipeline.egress.smtp import SmtpEgress


class UnknownEgress(LookupError):
    """A credential names an egress that is not in ``[egresses]``."""


def build_egress(settings: EgressSection, config: Config, name: str, resolver: Resolver | None = None) -> Egress:
    """One egress instance from its config section."""
    helo = config.gateway.hostname
    if settings.type == "smtp":
        return SmtpEgress(settings, helo, name=name)
    if settings.type == "mx":
        return MxEgress(settings, helo, resolver=resolver, name=name)
    if settings.type == "null":
        return NullEgress(name=name)
    return MaildirEgress(settings.maildir or config.data_dir / "maildir", name=name)


class EgressRouter:
    """Builds each egress once (so connection pools are shared) and picks one per credential."""

    SANDBOX = "sandbox"

    def __init__(self, config: Config, resolver: Resolver | None = None) -> None:
        self.config = config
        self.resolver = resolver
        self._egresses: dict[str, Egress] = {}

    def get(self, name: str) -> Egress:
        egress = self._egresses.get(name)
        if egress is None:
            if name == self.SANDBOX:
                egress = MaildirEgress(self.config.data_dir / "sandbox", name=self.SANDBOX)
            elif name == "default":
                egress = build_egress(self.config.egress, self.config, "default", self.resolver)
            elif name in self.config.egresses:
                egress = build_egress(self.config.egresses[name], self.config, name, self.resolver)
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
