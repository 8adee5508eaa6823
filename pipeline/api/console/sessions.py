"""Console sessions and CSRF tokens.

A session id is 256 random bits, sent only in a ``Secure; HttpOnly; SameSite=Strict`` cookie and
kept server-side as its SHA-256, so a copy of the process memory or a debug dump cannot be replayed
as a cookie. A session remembers the API token's id, never the token: every request looks the
token up again, so revoking it (``smtpgate api-tokens revoke``) ends its sessions at once.
Sessions expire after ``IDLE`` seconds without a request and ``LIFETIME`` seconds after sign-in.

CSRF (OWASP "synchronizer token pattern"): each session has its own random token, put in every
form and compared in constant time on every POST. The sign-in form, before any session exists,
carries an HMAC of a random pre-session cookie (a signed double-submit value with an expiry), so
a third-party page cannot sign a browser in with the attacker's token (login CSRF).

Sessions live in memory: the API runs in the gateway's main process, and a restart signs people
out, which is the safe failure.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

IDLE = 30 * 60.0
LIFETIME = 8 * 3600.0
PRESESSION_MAX_AGE = 3600.0
MAX_SESSIONS = 10000  # bounded: the oldest session is dropped first


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii", "replace")).hexdigest()


@dataclass
class Session:
    """One signed-in browser: whose token, its CSRF token, and a message to show once."""

    token_id: str
    csrf: str
    created_at: float
    last_seen: float
    flash: list[str] = field(default_factory=list)


class SessionStore:
    """Sessions by the hash of their id (insertion order: oldest first, for the bound)."""

    def __init__(
        self, idle: float = IDLE, lifetime: float = LIFETIME, max_sessions: int = MAX_SESSIONS
    ) -> None:
        self.idle, self.lifetime, self.max_sessions = idle, lifetime, max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, token_id: str, now: float | None = None) -> tuple[str, Session]:
        """A new session for ``token_id``: its id (for the cookie, returned once) and the session."""
        now = time.time() if now is None else now
        self._prune(now)
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        session = Session(token_id, secrets.token_urlsafe(32), now, now)
        self._sessions[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str, now: float | None = None) -> Session | None:
        """The live session of this cookie value (and it counts as activity), else ``None``."""
        now = time.time() if now is None else now
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        if now - session.last_seen > self.idle or now - session.created_at > self.lifetime:
            del self._sessions[key]
            return None
        session.last_seen = now
        return session

    def end(self, session_id: str) -> bool:
        """Sign-out: the session is forgotten; whether there was one."""
        return self._sessions.pop(_digest(session_id), None) is not None

    def end_token(self, token_id: str) -> int:
        """Every session of a token (it was revoked); how many."""
        keys = [k for k, s in self._sessions.items() if s.token_id == token_id]
        for k in keys:
            del self._sessions[k]
        return len(keys)

    def _prune(self, now: float) -> None:
        stale = [
            k
            for k, s in self._sessions.items()
            if now - s.last_seen > self.idle or now - s.created_at > self.lifetime
        ]
        for k in stale:
            del self._sessions[k]

    def __len__(self) -> int:
        return len(self._sessions)


def csrf_ok(expected: str, given: str | None) -> bool:
    """The form's token is the session's (constant-time; missing is wrong)."""
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode("utf-8", "replace"))


class PresessionSigner:
    """The sign-in form's CSRF value: ``expiry.HMAC(key, nonce|expiry)`` for the nonce in the
    pre-session cookie. The key is random per process: a form from before a restart is refused."""

    def __init__(self, key: bytes | None = None, max_age: float = PRESESSION_MAX_AGE) -> None:
        self._key = key or secrets.token_bytes(32)
        self.max_age = max_age

    def _mac(self, nonce: str, expiry: int) -> str:
        return hmac.new(self._key, f"{nonce}|{expiry}".encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None) -> tuple[str, str]:
        """(nonce for the cookie, value for the form)."""
        expiry = int((time.time() if now is None else now) + self.max_age)
        nonce = secrets.token_urlsafe(24)
        return nonce, f"{expiry}.{self._mac(nonce, expiry)}"

    def check(self, nonce: str | None, value: str | None, now: float | None = None) -> bool:
        if not nonce or not value:
            return False
        expiry_text, _, mac = value.partition(".")
        if not expiry_text.isdigit() or len(expiry_text) > 12:
            return False
        expiry = int(expiry_text)
        if expiry < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self._mac(nonce, expiry).encode(), mac.encode("utf-8", "replace"))
