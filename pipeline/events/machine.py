"""Is an open or a click machine-made? Privacy proxies (Gmail, Yahoo, Apple Mail Privacy
Protection) fetch every pixel, and corporate link scanners follow every link, so counting them
as people inflates open and click rates. A hit is flagged (and still recorded) when its user
agent is a known proxy/scanner or it comes within ``machine_seconds`` of delivery.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

KNOWN_MACHINE_AGENTS: tuple[str, ...] = (
    r"^\s*$",  # no user agent at all
    r"^Mozilla/5\.0$",  # Apple Mail Privacy Protection's bare agent
    r"GoogleImageProxy",
    r"ggpht\.com",
    r"YahooMailProxy",
    r"Microsoft Office Protocol Discovery",
    r"BingPreview",
    r"Safe ?Links",
    r"Microsoft.*Defender|MSDefender",
    r"Barracuda",
    r"Proofpoint",
    r"Mimecast",
    r"Forcepoint",
    r"Trend ?Micro",
    r"Symantec|MessageLabs",
    r"Sophos",
    r"IronPort|Cisco",
    r"FireEye|Trellix",
    r"Zscaler",
    r"Fortinet|FortiGuard",
    r"SpamTitan",
    r"python-requests|python-urllib|aiohttp|httpx",
    r"^curl/|^Wget|Go-http-client|okhttp|^Java/|libwww-perl",
    r"HeadlessChrome|PhantomJS",
    r"\bbot\b|crawler|spider|Slackbot|facebookexternalhit|Twitterbot|LinkedInBot|WhatsApp|TelegramBot|Discordbot",
)


class MachineDetector:
    """Classifies one hit from its user agent and the time since delivery."""

    def __init__(self, extra_agents: Iterable[str] = (), seconds: float = 5.0) -> None:
        self._agents = re.compile("|".join(f"(?:{p})" for p in (*KNOWN_MACHINE_AGENTS, *extra_agents)), re.I)
        self.seconds = seconds

    def reason(self, user_agent: str | None, hit_at: float, delivered_at: float | None) -> str | None:
        """Why the hit is machine-made (``"user agent"``, ``"too soon"``), or ``None`` for a person."""
        if self._agents.search(user_agent or ""):
            return "user agent"
        if delivered_at is not None and 0 <= hit_at - delivered_at < self.seconds:
            return "too soon"
        return None
