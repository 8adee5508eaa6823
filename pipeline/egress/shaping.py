"""Traffic shaping per destination for direct delivery, as KumoMTA does it.

A *site* is what a limit applies to: a named entry matched by recipient domain or by MX host
suffix (every domain hosted at one provider shares its budget), else the domain's own MX list.
Per site and source address (a *path*): open connections, messages per connection, messages per
minute and per hour. A throttling reply (``421``, ``4.7.x``, or a provider's own text) suspends
the path for the site's backoff: copies already in hand are postponed without using up one of
their attempts, and :meth:`Shaper.held_domains` tells the scheduler which recipient domains not
to claim, so one congested destination never fills the in-flight slots the others need.

The shipped table (``BUILTIN``) takes its numbers from KumoMTA's maintained ``shaping.toml``
(assets/policy-extras/shaping.toml) and its texts from the providers' published SMTP error
references: Google (support.google.com/a/answer/3726730: ``4.7.28`` unusual rate), Yahoo
(senders.yahooinc.com/smtp-error-codes: ``[TSS04]``, ``[TS04]``), Microsoft (learn.microsoft.com
"Email non-delivery reports in Exchange Online": ``4.7.500``-``4.7.699`` server busy / rate
limited, ``S3150``, ``S775``), Comcast (``RL0000``). The providers publish their rules, not
connection numbers; override any value in ``[shaping.sites.NAME]``.
"""

from __future__ import annotations

import collections
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.config import ShapingSection, ShapingSite
from pipeline.egress.connections import SitePool
from pipeline.egress.state import EgressState, Suspension
from pipeline.ports import Metrics

log = logging.getLogger("smtpgate.egress")

BUILTIN: dict[str, dict[str, object]] = {
    "google": {
        "mx_suffixes": [".google.com", ".googlemail.com"],
        "connections": 5,
        "messages_per_connection": 50,
        "throttle_texts": [r"4\.7\.28", r"unusual rate of"],
        "backoff": 3600.0,
    },
    "yahoo": {
        "mx_suffixes": [".yahoodns.net"],
        "messages_per_connection": 20,
        "throttle_texts": [r"\[TSS?0[1-4]\]", r"temporarily deferred due to unexpected volume"],
        "backoff": 7200.0,
    },
    "microsoft": {
        "mx_suffixes": [".protection.outlook.com", ".hotmail.com", ".outlook.com"],
        "throttle_texts": [r"4\.7\.[56]\d\d", r"\bS3150\b", r"\bS775\b", r"rate limited"],
    },
    "apple": {"mx_suffixes": [".mail.icloud.com"], "throttle_texts": [r"\bCS0[0-9]\b"]},
    "comcast": {
        "domains": ["comcast.net"],
        "connections": 25,
        "messages_per_connection": 1000,
        "throttle_texts": [r"RL0000"],
    },
}
"""Built-in sites; ``[shaping] builtin = false`` drops them, ``[shaping.sites.NAME]`` overrides one."""

DEFAULT_CONNECTIONS = 10  # KumoMTA's default connection_limit (used when [egress] connections_per_hop is unset)
_GENERIC_THROTTLE = re.compile(r"^4\.7\.\d{1,3}$")
_DOMAIN_CACHE = 50_000  # learned domain -> site entries kept (LRU)
_MAX_PATHS = 10_000  # then idle paths are forgotten


@dataclass(frozen=True)
class SiteRule:
    name: str
    connections: int
    messages_per_connection: int | None
    per_minute: int | None
    per_hour: int | None
    backoff: float
    throttle: re.Pattern[str] | None
    named: bool  # a configured or built-in site (its name is a metrics label)


@dataclass
class Path:
    """Shaping state of one (site, source address)."""

    rule: SiteRule
    source: str
    pool: SitePool
    suspended_until: float = 0.0
    reason: str = ""
    sent_minute: collections.deque[float] = field(default_factory=collections.deque)
    sent_hour: collections.deque[float] = field(default_factory=collections.deque)
    in_flight: int = 0

    def rate_wait(self, now: float) -> float:
        """Seconds until the per-minute and per-hour budgets allow one more message (0: now)."""
        wait = 0.0
        for window, limit, span in ((self.sent_minute, self.rule.per_minute, 60.0),
                                    (self.sent_hour, self.rule.per_hour, 3600.0)):
            while window and window[0] <= now - span:
                window.popleft()
            if limit is not None and len(window) >= limit:
                wait = max(wait, window[0] + span - now)
        return wait

    def saturated(self) -> bool:
        """Enough copies in hand to keep every allowed connection busy twice over."""
        return self.in_flight >= 2 * self.rule.connections


class Shaper:
    """Sites, their limits and their suspensions; one per gateway process, shared by ``mx`` egresses."""

    def __init__(
        self,
        settings: ShapingSection,
        default_connections: int = DEFAULT_CONNECTIONS,
        state: EgressState | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics if metrics is not None else collections.Counter()
        self.clock = clock
        self.default_connections = default_connections
        self.enabled = settings.enabled
        self._listeners: list[Callable[[], None]] = []
        self._generic_extra = _compile(settings.throttle_texts)
        merged: dict[str, ShapingSite] = {}
        if not settings.enabled:  # one connection budget per MX list, no rates, no suspensions
            settings = ShapingSection(builtin=False, sites={})
            self.settings = settings
        if settings.builtin:
            merged = {name: ShapingSite.model_validate(v) for name, v in BUILTIN.items()}
        for name, site in settings.sites.items():
            base = merged.get(name)
            merged[name] = base.model_copy(update=site.model_dump(exclude_unset=True)) if base else site
        self._domains: dict[str, SiteRule] = {}
        self._suffixes: list[tuple[str, SiteRule]] = []
        for name, site in merged.items():
            rule = self._rule(name, site, named=True)
            for d in site.domains:
                self._domains[d.lower().rstrip(".")] = rule
            for suffix in site.mx_suffixes:
                suffix = suffix.lower().rstrip(".")
                self._suffixes.append((suffix if suffix.startswith(".") else "." + suffix, rule))
        self._paths: dict[tuple[str, str], Path] = {}
        self._learned: collections.OrderedDict[str, str] = collections.OrderedDict()  # domain -> site name
        self._site_domains: dict[str, set[str]] = {}  # site name -> its learned domains
        self._pending_restore: dict[tuple[str, str], Suspension] = {}
        self._restore()

    def _rule(self, name: str, site: ShapingSite, named: bool) -> SiteRule:
        texts = list(site.throttle_texts)
        return SiteRule(
            name=name,
            connections=site.connections or self.default_connections,
            messages_per_connection=site.messages_per_connection,
            per_minute=site.per_minute,
            per_hour=site.per_hour,
            backoff=site.backoff or self.settings.backoff,
            throttle=_compile(texts),
            named=named,
        )

    def _restore(self) -> None:
        """Suspensions survive a restart: a receiver that said "slow down" still means it."""
        if self.state is None:
            return
        for s in self.state.suspensions(self.clock()):
            self._pending_restore[(s.site, s.source)] = s

    # -- which site ----------------------------------------------------------------------

    def site_for(self, domain: str, mx_hosts: list[str]) -> SiteRule:
        """The recipient domain's entry, else the first MX suffix match, else the MX list itself."""
        domain = domain.lower().rstrip(".")
        rule = self._domains.get(domain)
        if rule is None:
            for host in mx_hosts:
                h = "." + host.lower().rstrip(".")
                rule = next((r for suffix, r in self._suffixes if h.endswith(suffix)), None)
                if rule is not None:
                    break
        if rule is None:
            name = ",".join(sorted(h.lower() for h in mx_hosts)) or domain
            rule = self._rule(name, ShapingSite(), named=False)
        previous = self._learned.get(domain)
        if previous != rule.name:
            if previous is not None:
                self._site_domains.get(previous, set()).discard(domain)
            self._site_domains.setdefault(rule.name, set()).add(domain)
        self._learned[domain] = rule.name
        self._learned.move_to_end(domain)
        while len(self._learned) > _DOMAIN_CACHE:
            old, site = self._learned.popitem(last=False)
            self._site_domains.get(site, set()).discard(old)
        return rule

    def label(self, rule: SiteRule) -> str:
        """Metrics label: a configured or built-in site's name, anything else ``other``."""
        return rule.name if rule.named else "other"

    def path(self, rule: SiteRule, source: str) -> Path:
        key = (rule.name, source)
        path = self._paths.get(key)
        if path is None:
            if len(self._paths) >= _MAX_PATHS:
                self._forget_idle()
            path = self._paths[key] = Path(rule, source, SitePool(rule.connections, rule.messages_per_connection))
            restored = self._pending_restore.pop(key, None)
            if restored is not None:
                path.suspended_until, path.reason = restored.until, restored.reason
        return path

    def _forget_idle(self) -> None:
        """Drop paths with nothing to remember (no copies, connections, suspension or recent sends)."""
        now = self.clock()
        for key, p in list(self._paths.items()):
            if (p.in_flight == 0 and p.pool.open_connections == 0 and p.suspended_until <= now
                    and p.rate_wait(now) == 0 and not p.sent_hour):
                del self._paths[key]

    # -- throttling -----------------------------------------------------------------------

    def is_throttle(self, rule: SiteRule, code: int, dsn: str, text: str) -> bool:
        """A reply that speaks about the sender or the connection, not about one recipient."""
        if not 400 <= code < 500 or not self.enabled:
            return False
        if code == 421 or _GENERIC_THROTTLE.match(dsn):
            return True
        return any(p is not None and p.search(text) for p in (rule.throttle, self._generic_extra))

    def suspend(self, path: Path, reason: str) -> float:
        """Suspend ``path`` for its site's backoff; returns when it ends."""
        now = self.clock()
        until = now + path.rule.backoff
        if path.suspended_until < until:
            path.suspended_until, path.reason = until, reason
            self.metrics[f"egress_suspensions_total:{self.label(path.rule)}"] += 1
            log.warning("destination %s suspended for %.0f s (source %s): %s", path.rule.name, path.rule.backoff,
                        path.source or "default", reason)
            if self.state is not None:
                try:
                    self.state.suspend(Suspension(path.rule.name, path.source, until, reason, now))
                except Exception:  # the suspension still acts in memory; only queue list misses it
                    log.exception("recording the suspension of %s failed", path.rule.name)
        return path.suspended_until

    def held_until(self, path: Path, now: float) -> tuple[float, str] | None:
        """``(until, why)`` when ``path`` must not send now (suspended or over its rate)."""
        if path.suspended_until > now:
            return path.suspended_until, f"destination {path.rule.name} suspended: {path.reason}"
        wait = path.rate_wait(now)
        if wait > 0:
            return now + wait, f"destination {path.rule.name} rate limit reached"
        return None

    def record_send(self, path: Path, now: float) -> None:
        path.sent_minute.append(now)
        path.sent_hour.append(now)

    # -- fair claiming --------------------------------------------------------------------

    def held_domains(self) -> frozenset[str]:
        """Recipient domains whose every path is suspended, over its rate or saturated: not worth claiming."""
        now = self.clock()
        held_sites: dict[str, bool] = {}
        for (site, _), path in self._paths.items():
            held = path.saturated() or self.held_until(path, now) is not None
            held_sites[site] = held_sites.get(site, True) and held
        return frozenset(d for s, held in held_sites.items() if held for d in self._site_domains.get(s, ()))

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback`` runs when a held site may take more work (the scheduler's wake-up)."""
        self._listeners.append(callback)

    def begin(self, path: Path) -> None:
        path.in_flight += 1

    def end(self, path: Path) -> None:
        was = path.saturated()
        path.in_flight -= 1
        if was and not path.saturated():
            for callback in self._listeners:
                callback()

    def suspensions(self) -> list[tuple[str, str, float, str]]:
        """(site, source, until, reason) in force now: for logs and tests."""
        now = self.clock()
        return [(p.rule.name, p.source, p.suspended_until, p.reason) for p in self._paths.values()
                if p.suspended_until > now]

    async def close(self) -> None:
        for path in self._paths.values():
            await path.pool.close()


def _compile(texts: list[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{t})" for t in texts), re.IGNORECASE) if texts else None
