"""Config sections of direct delivery: ``[dns]``, ``[tls_policy]``, ``[shaping]``, ``[pools.<name>]``,
``[pool_selection]`` (pipeline/egress/; docs/delivery.md#direct-delivery-like-a-real-mta).

Re-exported by :mod:`pipeline.config`, whose :class:`~pipeline.config.Config` holds them.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from pipeline.config.base import Section


class DnsSection(Section):
    """The DNS servers direct delivery asks (default: the system's) and whether they validate DNSSEC."""

    nameservers: list[str] = Field(default_factory=list)  # addresses; empty: /etc/resolv.conf
    port: int = Field(default=53, ge=1, le=65535)
    validating: bool = False  # trust their AD bit (needed for DANE); only for a resolver you run
    timeout: float = Field(default=10.0, gt=0)


TlsLevel = Literal["none", "may", "encrypt", "verify"]


def _regexes(texts: list[str]) -> list[str]:
    for text in texts:
        try:
            re.compile(text)
        except re.error as exc:
            raise ValueError(f"invalid regex {text!r}: {exc}") from None
    return texts


def _ip_address(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address") from None


Regexes = Annotated[list[str], AfterValidator(_regexes)]


class TlsPolicySection(Section):
    """Outbound TLS for direct (``mx``) delivery: levels as Postfix's ``smtp_tls_policy_maps`` names them."""

    default: TlsLevel | None = None  # None: "none" when [egress] tls = "none", else "may" (opportunistic)
    domains: dict[str, TlsLevel] = Field(default_factory=dict)  # "example.com", ".example.com" (subdomains)
    mta_sts: bool = True  # RFC 8461 for domains without a configured level
    dane: bool = True  # RFC 7672; acts only with [dns] validating = true
    ca_file: Path | None = None  # trust anchors for "verify" and MTA-STS (default: the system store)
    mta_sts_port: int = Field(default=443, ge=1, le=65535)  # for tests and closed networks
    mta_sts_recheck: float = Field(default=300.0, ge=0)  # seconds before a cached policy's TXT id is re-checked
    mta_sts_timeout: float = Field(default=10.0, gt=0)


class ShapingSite(Section):
    """One destination's limits; matched by recipient domain or by MX host suffix (a provider)."""

    domains: list[str] = Field(default_factory=list)
    mx_suffixes: list[str] = Field(default_factory=list)  # ".google.com": every domain whose MX ends so
    connections: int | None = Field(default=None, ge=1)
    messages_per_connection: int | None = Field(default=None, ge=1)
    per_minute: int | None = Field(default=None, ge=1)
    per_hour: int | None = Field(default=None, ge=1)
    backoff: float | None = Field(default=None, gt=0)  # seconds a throttling reply suspends the site
    throttle_texts: Regexes = Field(default_factory=list)  # extra regexes that mean "slow down"


class ShapingSection(Section):
    """Per-destination traffic shaping for direct delivery (pipeline/egress/shaping.py)."""

    enabled: bool = True
    builtin: bool = True  # the shipped table for the largest providers (docs/delivery.md)
    backoff: float = Field(default=900.0, gt=0)  # default suspension after a throttling reply
    throttle_texts: Regexes = Field(default_factory=list)  # extra regexes for every site
    sites: dict[str, ShapingSite] = Field(default_factory=dict)  # same name as a built-in site: overrides it


class PoolAddress(Section):
    """One local source address of an IP pool, with the HELO name its PTR points at."""

    address: Annotated[str, AfterValidator(_ip_address)]
    helo: str | None = None  # default: [egress] helo_name / [gateway] hostname
    daily_cap: int | None = Field(default=None, ge=1)  # messages per day from this address
    warmup: list[int] = Field(default_factory=list)  # daily caps from warmup_start on; the last one holds
    warmup_start: datetime.date | None = None


class IpPool(Section):
    addresses: list[PoolAddress] = Field(min_length=1)  # taken in turns


class PoolSelectionSection(Section):
    """Which pool a copy leaves from: the campaign's, else the credential's, else ``default``."""

    default: str | None = None
    credentials: dict[str, str] = Field(default_factory=dict)  # credential name -> pool
    campaigns: dict[str, str] = Field(default_factory=dict)  # campaign id -> pool
