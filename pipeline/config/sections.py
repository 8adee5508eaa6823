"""The core config sections and :class:`Config` (the file's schema; see :mod:`pipeline.config`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from pipeline.config.api import ApiSection
from pipeline.config.base import Secret, Section
from pipeline.config.egress import (
    DnsSection,
    IpPool,
    PoolSelectionSection,
    ShapingSection,
    TlsPolicySection,
)
from pipeline.config.milter import MilterSection
from pipeline.config.storage import StorageSection
from pipeline.contract.context import Credential
from pipeline.contract.vocabulary import CredentialKind


class GatewaySection(Section):
    hostname: str = Field(default_factory=socket.getfqdn)
    # relative: to the config file's directory; a string default, as strict validation reads paths from text
    data_dir: Path = Field(default="smtpgate-data")  # type: ignore[assignment]  # validated into a Path
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    trace_header: bool = True  # a Received: header per accepted message (RFC 5321 4.4)
    trace_credential: bool = False  # name the authenticated credential in it (privacy: off)
    reverse_dns: bool = False  # look up the client's PTR name for it (else "unknown")
    log_format: Literal["text", "json"] = "text"  # json: one object per line (pipeline/toolkit/logs.py)


class ListenerSection(Section):
    name: str = ""
    address: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    require_tls: bool = True  # TLS required before AUTH and MAIL


def _default_listeners() -> list[ListenerSection]:
    return [
        ListenerSection(name="submission", address="127.0.0.1", port=2525, tls="starttls"),
        ListenerSection(name="smtps", address="127.0.0.1", port=4650, tls="implicit"),
    ]


class TLSSection(Section):
    cert_file: Path | None = None
    key_file: Path | None = None


class LimitsSection(Section):
    max_message_size: int = Field(default=25 * 1024 * 1024, gt=0)
    max_recipients: int = Field(default=100, gt=0)
    max_connections: int = Field(default=200, gt=0)
    max_connections_per_ip: int = Field(default=20, gt=0)
    idle_timeout: float = Field(default=300.0, gt=0)
    auth_failures_per_minute: int = Field(default=5, gt=0)
    shutdown_grace: float = Field(default=30.0, ge=0)
    bare_newline: Literal["normalize", "reject"] = "normalize"  # bare CR/LF in the body (Postfix's smtpd_forbid_bare_newline)
    # Bounds on the work one message may cause, checked at DATA (pipeline/chain/limits.py) so a
    # message the processing chain could not finish in time is refused, never queued then failed.
    max_mime_depth: int = Field(default=100, gt=0)  # Postfix's mime_nesting_limit
    max_mime_parts: int = Field(default=1000, gt=0)
    max_html_parts: int = Field(default=100, gt=0)
    max_links: int = Field(default=10_000, gt=0)  # <a href> tags over all HTML parts
    max_html_bytes: int = Field(default=10 * 1024 * 1024, gt=0)  # decoded HTML, all parts together


DEFAULT_ADMISSION_PLUGINS = (
    "header_validation",
    "campaign_tag",
    "sendgrid_smtpapi",
    "mailgun_headers",
    "postmark_headers",
    "ses_headers",
    "mailerq_headers",
    "suppression",
)
"""The default chain's plugins that only have admission hooks (what runs at DATA before the 250)."""


class ChainSection(Section):
    """Which plugins run, in which order (one list both enables and orders, like Haraka)."""

    plugins: list[str] = Field(
        default_factory=lambda: [
            *DEFAULT_ADMISSION_PLUGINS,
            "css_inline",
            "click_tracking",
            "open_pixel",
            "bounce_tracking",
            "list_unsubscribe",
            "dkim_sign",
        ]
    )
    timeout: float = Field(default=10.0, gt=0)
    # Header name prefixes (case-insensitive) removed from every message after admission, whether or
    # not a plugin read them: vendor control headers never leave the gateway (X-SMTPAPI would leak
    # every recipient of a batch).
    strip_header_prefixes: list[str] = Field(
        default_factory=lambda: ["x-smtpapi", "x-mailgun-", "x-pm-", "x-ses-", "x-mq-"]
    )

    @field_validator("strip_header_prefixes")
    @classmethod
    def _lower_prefixes(cls, v: list[str]) -> list[str]:
        if any(not p.strip() for p in v):
            raise ValueError("an empty prefix would strip every header")
        return [p.strip().lower() for p in v]


class CredentialSection(Section):
    """A credential declared in the config file (``smtpgate credentials add`` keeps others in the data dir)."""

    name: str
    kind: Literal["apikey", "password", "ip"] = "password"
    username: str | None = None
    secret: Secret | None = None  # plain secret (prefer env:/file:); hashed at load
    secret_hash: str | None = None
    networks: list[str] = Field(default_factory=list)  # CIDRs for kind = "ip"
    features: dict[str, bool] = Field(default_factory=dict)
    locked: list[str] = Field(default_factory=list)
    sandbox: bool = False
    disabled: bool = False
    allowed_sender_domains: list[str] = Field(default_factory=list)
    max_message_size: int | None = None
    max_recipients: int | None = None
    messages_per_minute: int | None = None
    egress: str | None = None
    webhooks: list[str] = Field(default_factory=list)

    def to_credential(self) -> Credential:
        """The :class:`~pipeline.contract.context.Credential` that hooks see for this entry."""
        return Credential(
            name=self.name,
            kind=CredentialKind(self.kind),
            features=dict(self.features),
            locked=frozenset(self.locked),
            sandbox=self.sandbox,
            allowed_sender_domains=tuple(self.allowed_sender_domains),
            max_message_size=self.max_message_size,
            max_recipients=self.max_recipients,
            messages_per_minute=self.messages_per_minute,
            egress=self.egress,
            webhooks=tuple(self.webhooks),
        )

    @field_validator("features")
    @classmethod
    def _lower_features(cls, v: dict[str, bool]) -> dict[str, bool]:
        return {k.lower(): val for k, val in v.items()}  # switch names are case-insensitive

    @field_validator("locked")
    @classmethod
    def _lower_locked(cls, v: list[str]) -> list[str]:
        return [k.lower() for k in v]


class RelaySection(Section):
    local_domains: list[str] = Field(default_factory=list)  # domains we accept mail for without AUTH
    sink_addresses: list[str] = Field(default_factory=list)  # accepted and dropped (Sendsay's test@test.ru)
    reject_non_fqdn_sender: bool = True  # MAIL FROM:<a@host> gets 553 5.1.8 (Postfix's reject_non_fqdn_sender)


class SpoolSection(Section):
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=0)  # 0: in the main process
    worker_max_idle: float = Field(default=60.0, ge=0)  # idle seconds before a worker exits (0: never)
    retry_min: float = Field(default=300.0, gt=0)  # seconds; Postfix minimal_backoff_time
    retry_max: float = Field(default=3600.0, gt=0)  # Postfix maximal_backoff_time
    lifetime: float = Field(default=5 * 86400.0, gt=0)  # Postfix maximal_queue_lifetime
    max_plugin_attempts: int = Field(default=5, ge=1)
    lease: float = Field(default=300.0, gt=0)  # seconds a claimed recipient stays "processing"
    poll_interval: float = Field(default=1.0, gt=0)  # how soon another process's queue change is seen (CLI retry/flush)
    max_in_flight: int = Field(default=64, ge=1)  # messages being processed or delivered at once
    bounce_notices: bool = True  # RFC 3464 notice to the sender on bounce/expiry (pipeline/delivery/notices.py)


class EgressSection(Section):
    type: Literal["maildir", "smtp", "mx", "null"] = "maildir"
    maildir: Path | None = None  # default: <data_dir>/maildir
    host: str = "127.0.0.1"
    port: int = 25
    tls: Literal["none", "starttls", "implicit", "opportunistic"] = "starttls"
    verify_certificates: bool = True
    username: str | None = None
    password: Secret | None = None
    timeout: float = Field(default=60.0, gt=0)
    ca_file: Path | None = None  # CA bundle for certificate verification (default: system store)
    mx_port: int = Field(default=25, ge=1, le=65535)  # port for direct (mx) delivery and verify
    helo_name: str | None = None  # default: [gateway] hostname
    connections_per_hop: int = Field(default=4, ge=1)  # reused SMTP connections per next hop


class TrackingSection(Section):
    listen_address: str = "127.0.0.1"
    listen_port: int = Field(default=8080, ge=0, le=65535)
    base_url: str = "http://127.0.0.1:8080"
    key_id: str = "k1"
    keys: dict[str, Secret] = Field(default_factory=dict)  # key id -> secret; generated when empty
    bounce_domain: str | None = None
    # Opens/clicks within this many seconds of delivery, or from a known proxy/scanner user agent,
    # are flagged as machine-made (the statistics show human and machine counts apart).
    machine_seconds: float = Field(default=5.0, ge=0)
    machine_user_agents: list[str] = Field(default_factory=list)  # extra regexes (case-insensitive)
    # /stats, /api/stats and /metrics: only from these networks, and with this bearer token if set.
    admin_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    admin_token: Secret | None = None


WebhookEventType = Literal[
    "accepted", "discarded", "delivered", "deferred", "bounced", "expired", "failed",
    "opened", "clicked", "unsubscribed", "complained", "rejected",
]


class WebhookEndpointSection(Section):
    """One receiver with its payload format (``smtpgate`` or a vendor's) and the events it wants."""

    url: str
    format: Literal["smtpgate", "sendgrid", "mailgun", "postmark"] = "smtpgate"
    events: list[WebhookEventType] = Field(default_factory=list)  # empty: every event the format has
    credential: str | None = None  # only this credential's events
    # mailgun: the HMAC signing key (default: [webhooks] secret); sendgrid: a PEM P-256 private key
    # (default: generated into <data_dir>/webhook-sendgrid.pem). smtpgate uses [webhooks] secret.
    signing_key: Secret | None = None
    username: str | None = None  # HTTP basic auth (how Postmark's receivers authenticate)
    password: Secret | None = None
    message_stream: str = "outbound"  # postmark: MessageStream
    batch_size: int = Field(default=100, ge=1, le=1000)  # sendgrid: events per POST (a JSON array)


class WebhooksSection(Section):
    """Global webhook URLs (credentials add their own) and the outbox's retry policy."""

    urls: list[str] = Field(default_factory=list)
    endpoints: list[WebhookEndpointSection] = Field(default_factory=list)  # each with a format and events
    secret: Secret | None = None  # HMAC key; generated into <data_dir>/webhook.key when unset
    timeout: float = Field(default=10.0, gt=0)
    retry_min: float = Field(default=30.0, gt=0)  # first retry delay; doubles per attempt
    retry_max: float = Field(default=3600.0, gt=0)
    max_attempts: int = Field(default=20, ge=1)  # then the delivery is marked dead
    poll_interval: float = Field(default=5.0, gt=0)  # also picks up rows written by other processes
    concurrency: int = Field(default=4, ge=1)

    @field_validator("endpoints")
    @classmethod
    def _one_format_per_url(cls, v: list[WebhookEndpointSection]) -> list[WebhookEndpointSection]:
        seen: set[str] = set()
        for endpoint in v:
            if endpoint.url in seen:  # the outbox keys deliveries by URL: one URL, one format
                raise ValueError(f"{endpoint.url} is listed twice")
            seen.add(endpoint.url)
        return v

    def endpoint(self, url: str) -> WebhookEndpointSection | None:
        """The endpoint entry for a URL (``None``: a plain ``urls`` entry, smtpgate's format)."""
        return next((e for e in self.endpoints if e.url == url), None)


class SuppressionSection(Section):
    """Which events add an address to the stoplist, and whether it is per credential or global."""

    scope: Literal["credential", "global"] = "credential"
    hard_bounces: bool = True
    unsubscribes: bool = True
    complaints: bool = True


class Config(Section):
    """The whole configuration; ``Config()`` is the embedded default."""

    gateway: GatewaySection = Field(default_factory=GatewaySection)
    listeners: list[ListenerSection] = Field(default_factory=_default_listeners)
    tls: TLSSection = Field(default_factory=TLSSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    # Overrides of the plugins' own switch defaults; which names exist is known once the chain is
    # loaded (pipeline.chain.features.FeatureRegistry), where an unknown switch is a start-up error.
    features: dict[str, bool] = Field(default_factory=dict)
    chain: ChainSection = Field(default_factory=ChainSection)
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)
    credentials: list[CredentialSection] = Field(default_factory=list)
    relay: RelaySection = Field(default_factory=RelaySection)
    spool: SpoolSection = Field(default_factory=SpoolSection)
    egress: EgressSection = Field(default_factory=EgressSection)
    egresses: dict[str, EgressSection] = Field(default_factory=dict)  # named, for per-credential egress
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    webhooks: WebhooksSection = Field(default_factory=WebhooksSection)
    suppression: SuppressionSection = Field(default_factory=SuppressionSection)
    milter: MilterSection = Field(default_factory=MilterSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    dns: DnsSection = Field(default_factory=DnsSection)
    tls_policy: TlsPolicySection = Field(default_factory=TlsPolicySection)
    shaping: ShapingSection = Field(default_factory=ShapingSection)
    pools: dict[str, IpPool] = Field(default_factory=dict)  # source IP pools for direct delivery
    pool_selection: PoolSelectionSection = Field(default_factory=PoolSelectionSection)
    api: ApiSection = Field(default_factory=ApiSection)

    source: str = Field(default="<defaults>", exclude=True)
    # key -> the SMTPGATE_<SECTION>__<KEY> variable that set it (check-config shows them)
    overrides: dict[str, str] = Field(default_factory=dict, exclude=True)

    @field_validator("features")
    @classmethod
    def _lower_features(cls, v: dict[str, bool]) -> dict[str, bool]:
        # Key by key over the plugins' defaults: naming one switch leaves the others alone.
        return {k.lower(): val for k, val in v.items()}  # switch names are case-insensitive

    @model_validator(mode="after")
    def _pools_exist(self) -> Config:
        sel = self.pool_selection
        named = [("default", sel.default)] if sel.default else []
        named += [(f"credentials.{k}", v) for k, v in sel.credentials.items()]
        named += [(f"campaigns.{k}", v) for k, v in sel.campaigns.items()]
        for key, pool in named:
            if pool not in self.pools:
                raise ValueError(f"pool_selection.{key}: no [pools.{pool}] is configured")
        return self

    @property
    def data_dir(self) -> Path:
        return self.gateway.data_dir
