"""Configuration: one TOML file (``smtpgate.toml``), validated at start-up.

Every key has a default, so no file is needed to start. Errors name the file, the key and the
problem (``smtpgate.toml: listeners[0].tls: Input should be 'none', 'starttls' or 'implicit'``).
A string value of the form ``env:NAME`` or ``file:/path`` is read from the environment or a
file, so secrets need not sit in the config file.

Each section is its own model; the part of the gateway that uses a section owns its class.

Types are strict (``trackopens = "yes"``, ``inlinecss = 1`` and ``port = "25"`` are errors: a
guessed conversion hides a typo), and every key can be overridden from the environment as
``SMTPGATE_<SECTION>__<KEY>`` (see :func:`env_overrides`).

The package: ``base`` (the section base, :class:`ConfigError`, secret references), ``sections``
(the core sections and :class:`Config`), an area's own sections (``egress``, ``milter``, ``api``),
and ``loading`` (finding the file, environment overrides, strict validation). Everything is
re-exported here, so callers import from :mod:`pipeline.config`.
"""

from __future__ import annotations

from pipeline.config.api import (
    ApiSection,
)
from pipeline.config.base import (
    ENV_PREFIX,
    SYSTEM_CONFIG,
    ConfigError,
    Secret,
    Section,
    resolve_secret,
)
from pipeline.config.egress import (
    DnsSection,
    IpPool,
    PoolAddress,
    PoolSelectionSection,
    Regexes,
    ShapingSection,
    ShapingSite,
    TlsLevel,
    TlsPolicySection,
)
from pipeline.config.loading import (
    env_overrides,
    find_config,
    format_validation_error,
    load_config,
    parse_config,
    validate_strict,
)
from pipeline.config.milter import (
    MilterEndpoint,
    MilterSection,
    parse_milter_listen,
)
from pipeline.config.sections import (
    ChainSection,
    Config,
    CredentialSection,
    EgressSection,
    GatewaySection,
    LimitsSection,
    ListenerSection,
    RelaySection,
    SpoolSection,
    SuppressionSection,
    TLSSection,
    TrackingSection,
    WebhookEndpointSection,
    WebhookEventType,
    WebhooksSection,
)
from pipeline.config.storage import StorageSection

__all__ = [
    "ApiSection",
    "ChainSection",
    "Config",
    "ConfigError",
    "CredentialSection",
    "DnsSection",
    "ENV_PREFIX",
    "EgressSection",
    "GatewaySection",
    "IpPool",
    "LimitsSection",
    "ListenerSection",
    "MilterEndpoint",
    "MilterSection",
    "PoolAddress",
    "PoolSelectionSection",
    "Regexes",
    "RelaySection",
    "SYSTEM_CONFIG",
    "Secret",
    "Section",
    "ShapingSection",
    "ShapingSite",
    "SpoolSection",
    "StorageSection",
    "SuppressionSection",
    "TLSSection",
    "TlsLevel",
    "TlsPolicySection",
    "TrackingSection",
    "WebhookEndpointSection",
    "WebhookEventType",
    "WebhooksSection",
    "env_overrides",
    "find_config",
    "format_validation_error",
    "load_config",
    "parse_config",
    "parse_milter_listen",
    "resolve_secret",
    "validate_strict",
]
