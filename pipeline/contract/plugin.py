"""The plugin contract: what a plugin class looks like and what it is given.

A plugin is a class with a unique ``name``, an optional ``feature`` switch with its
``feature_default``, a ``Config`` model (validated; unknown keys are errors) and methods marked
``@hookimpl`` named after the hooks in :mod:`pipeline.contract.hookspecs`. Subclassing
:class:`Plugin` is convenient, not required.

A plugin is constructed with ``(config, env)``: its own validated config and a
:class:`PluginEnv`, the facts it may need about the gateway (never the gateway's whole
configuration, so what a plugin depends on is written down here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict


class PluginConfig(BaseModel):
    """Base for a plugin's config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class TokenSigner(Protocol):
    """Signs and verifies the opaque tokens in tracked links, pixels and VERP addresses."""

    def sign(self, payload: dict[str, Any]) -> str: ...

    def verify(self, token: str) -> dict[str, Any] | None: ...

    key_id: str  # the current key id (new tokens and VERP MACs use it)

    def mac(self, text: str, key_id: str | None = None) -> str | None:
        """HMAC of ``text`` with a key id's secret (compact signed ids such as VERP); ``None``: unknown id."""
        ...


class SuppressionList(Protocol):
    """Read-only view of the stoplist (one indexed look-up per RCPT)."""

    def contains(self, address: str, credential: str | None = None) -> bool: ...

    def reason(self, address: str, credential: str | None = None) -> str | None:
        """Why the address is suppressed (``"hard bounce"``, ``"unsubscribed"``, ...), or ``None``."""
        ...

    async def reason_async(self, address: str, credential: str | None = None) -> str | None:
        """``reason`` without blocking the event loop, bounded in time: raises (``TimeoutError``, a
        database error) when the list cannot be read, so a hook can fail closed (``451``)."""
        ...


def _unavailable(what: str) -> Callable[[], Any]:
    def opener() -> Any:
        raise RuntimeError(f"no {what} in this environment (the gateway that built the chain gave none)")

    return opener


@dataclass
class PluginEnv:
    """What the gateway gives every plugin at construction: read-only facts and typed ports.

    ``signer`` and ``suppression`` are opened on first use (a command that never tracks or
    admits mail creates no key file and opens no database); when the gateway gave no opener,
    using them raises, which the chain turns into ``451 4.3.0`` (fail closed).
    """

    hostname: str = "localhost"
    data_dir: Path = Path("smtpgate-data")
    features: Mapping[str, bool] = field(default_factory=dict)  # each switch's configured default
    tracking_base_url: str = "http://127.0.0.1:8080"  # [tracking] base_url
    bounce_domain: str | None = None  # [tracking] bounce_domain: where VERP bounces come back
    open_signer: Callable[[], TokenSigner] = field(default=_unavailable("tracking token signer"), repr=False)
    open_suppression: Callable[[], SuppressionList] = field(default=_unavailable("suppression list"), repr=False)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("smtpgate.plugin"))
    _opened: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def _once(self, what: str, opener: Callable[[], Any]) -> Any:
        if what not in self._opened:
            self._opened[what] = opener()
        return self._opened[what]

    @property
    def signer(self) -> TokenSigner:
        """The gateway's ``[tracking]`` signer: what the tracking HTTP service verifies with."""
        signer: TokenSigner = self._once("signer", self.open_signer)
        return signer

    @property
    def suppression(self) -> SuppressionList:
        """The stoplist (hard bounces, unsubscribes, complaints, ``smtpgate suppression add``)."""
        stoplist: SuppressionList = self._once("suppression", self.open_suppression)
        return stoplist


class Plugin:
    """Convenience base class: stores ``config`` and ``env``.

    ``feature`` names the switch that turns the plugin on and off per message; a plugin that
    declares one must declare ``feature_default`` too (start-up error otherwise), and says with
    ``feature_by_header`` whether an ``X-SMTPeter-<Feature>`` header may set it (``False`` for
    policy switches a sender must not turn off, such as validation or signing; undeclared means
    yes). Plugins sharing a switch must agree on what they declare; one default is enough.
    """

    name: ClassVar[str] = ""
    feature: ClassVar[str | None] = None
    feature_default: ClassVar[bool | None] = None
    feature_by_header: ClassVar[bool | None] = None
    version: ClassVar[str] = "0"
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    seals_message: ClassVar[bool] = False  # True for signers: nothing may edit after them
    # True for a plugin that gives each copy a VERP envelope sender at [tracking] bounce_domain: its
    # bounces come back to the gateway as events, so no bounce notice goes to the original sender.
    verp_sender: ClassVar[bool] = False

    def __init__(self, config: Any, env: PluginEnv) -> None:
        self.config = config
        self.env = env
        self.log = logging.getLogger(f"smtpgate.plugin.{self.name}")
