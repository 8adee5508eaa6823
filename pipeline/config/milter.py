"""``[milter]``: ``serve`` also runs the chain as a Sendmail/Postfix milter (docs/milter.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from pipeline.config.base import Section

_MILTER_INET = re.compile(r"^inet6?:(?:\[(?P<h6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class MilterEndpoint:
    kind: str  # "inet" | "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"inet:{self.host}:{self.port}"


def parse_milter_listen(spec: str) -> MilterEndpoint:
    """``inet:HOST:PORT`` (``inet:[::1]:PORT``) or ``unix:/PATH``; ``ValueError`` says what is wrong."""
    if spec.startswith(("unix:", "local:")):
        path = spec.split(":", 1)[1]
        if not path:
            raise ValueError(f"{spec!r}: unix: needs a socket path")
        return MilterEndpoint("unix", path=path)
    m = _MILTER_INET.match(spec)
    if not m or int(m["port"]) > 65535:
        raise ValueError(f"{spec!r}: expected inet:HOST:PORT or unix:PATH")
    return MilterEndpoint("inet", host=m["h6"] or m["host"] or "127.0.0.1", port=int(m["port"]))


class MilterSection(Section):
    """``serve`` also runs the chain as a Sendmail/Postfix milter (docs/milter.md) when ``listen`` is set."""

    listen: list[str] = Field(default_factory=list)  # "inet:127.0.0.1:8891", "unix:/var/spool/postfix/m.sock"
    on_error: Literal["tempfail", "accept", "reject"] = "tempfail"  # a plugin raised (OpenDKIM's On-*)
    on_timeout: Literal["tempfail", "accept", "reject"] = "tempfail"  # a plugin ran past [chain] timeout
    max_packet: int = Field(default=1024 * 1024, ge=65536)  # a longer packet ends the connection
    idle_timeout: float = Field(default=300.0, gt=0)  # seconds the MTA may stay silent mid-session
    workers: int = Field(default=0, ge=0)  # processes for end of message (chain CPU work); 0: the event loop

    @field_validator("listen")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        for spec in v:
            parse_milter_listen(spec)  # a ValueError names the entry and the expected syntax
        return v
