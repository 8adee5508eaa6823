"""SMTP AUTH (RFC 4954): the PLAIN and LOGIN mechanisms, their prompts, failures and throttling.

What the seeds pin down and aiosmtpd gets wrong or lacks:

* AUTH works on an implicit-TLS listener (aiosmtpd issues #274/#281 only know about STARTTLS);
* mechanism names are case-insensitive (enKod sends ``auth plain``);
* the LOGIN prompts are ``334 VXNlcm5hbWU6`` / ``334 UGFzc3dvcmQ6`` as every seed shows;
* after ``[limits] auth_failures_per_minute`` failures from one address, the client gets
  ``421 4.7.0`` and is disconnected; a login that looks like a secret is never logged.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from base64 import b64decode

from pipeline.ingress import replies as R
from pipeline.ingress.session import SessionBase, refusal

log = logging.getLogger("smtpgate.ingress")

USERNAME_PROMPT = "334 VXNlcm5hbWU6"  # base64("Username:")
PASSWORD_PROMPT = "334 UGFzc3dvcmQ6"  # base64("Password:")


def safe_login(login: str) -> str:
    """A login as it may appear in a log line: never something that looks like a secret."""
    if login.startswith("sg_") or len(login) > 64:
        return "<redacted>"
    return "".join(ch if ch.isprintable() else "?" for ch in login)


class SaslSession(SessionBase):
    """The AUTH command of a session."""

    def _auth_allowed(self) -> bool:
        return self.is_tls or not self.listener.require_tls

    async def _challenge(self, prompt: str) -> bytes | None:
        """Send a 334 prompt and read the client's base64 answer (``None``: reply already sent)."""
        self._raw_push = True
        await self.push(prompt)
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:  # connection closed
            self.close()
            return None
        except asyncio.LimitOverrunError as exc:  # longer than the stream limit
            # read the over-long line to its end: its tail must not be taken for commands
            await self._reader.read(exc.consumed)
            while True:
                try:
                    await self._reader.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as more:
                    await self._reader.read(more.consumed)
                except asyncio.IncompleteReadError:
                    self.close()
                    return None
            await self.push(R.AUTH_LINE_TOO_LONG)
            return None
        return await self._decode(line.strip())

    async def _decode(self, blob: bytes) -> bytes | None:
        if blob == b"*":
            await self.push(R.AUTH_ABORTED)
            return None
        if blob == b"=":
            return b""
        try:
            return b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            await self.push(R.AUTH_BASE64)
            return None

    async def _auth_refusal(self, arg: str | None) -> str | None:
        """The reply refusing AUTH before any exchange (sequence, TLS, syntax), or ``None``."""
        assert self.session is not None
        args = (arg or "").split()
        if not self.session.extended_smtp:
            return R.AUTH_NEEDS_EHLO
        if not self._auth_allowed():
            return R.ENCRYPTION_REQUIRED
        if self.session.authenticated:
            return R.AUTH_ALREADY
        if self.txn is not None:
            return "503 5.5.1 AUTH not allowed during a mail transaction"
        if not 1 <= len(args) <= 2:
            return R.AUTH_SYNTAX
        if args[0].upper() not in ("PLAIN", "LOGIN"):
            return R.AUTH_MECHANISM
        return None

    async def _login_and_password(self, mechanism: str, args: list[str]) -> tuple[bytes, bytes] | None:
        """Run the mechanism's exchange; ``None`` when it was aborted (the reply is already sent)."""
        initial = await self._decode(args[1].encode()) if len(args) == 2 else b""
        if initial is None:
            return None
        if mechanism == "PLAIN":
            response = initial if len(args) == 2 else await self._challenge("334 ")
            if response is None:
                return None
            parts = response.split(b"\0")
            if len(parts) != 3:
                await self.push(R.AUTH_PLAIN_FORMAT)
                return None
            return parts[1], parts[2]
        login = initial if len(args) == 2 else await self._challenge(USERNAME_PROMPT)
        if login is None:
            return None
        password = await self._challenge(PASSWORD_PROMPT)
        if password is None:
            return None
        return login, password

    async def _throttle(self) -> None:
        self._end = "auth throttled"
        await self.push(R.AUTH_THROTTLED)
        self.close()

    async def smtp_AUTH(self, arg: str | None) -> None:
        assert self.session is not None
        if await self._out_of_sequence():
            return
        reply = await self._auth_refusal(arg)
        if reply is not None:
            await self.push(reply)
            return
        args = (arg or "").split()
        mechanism = args[0].upper()
        ip = self.gw.peer_ip
        limit = self.config.limits.auth_failures_per_minute
        if self.ingress.auth_failures.count(ip) >= limit:
            log.warning("session=%s peer=%s AUTH refused: throttled after repeated failures", self.gw.session_id, ip)
            await self._throttle()
            return
        secrets = await self._login_and_password(mechanism, args)
        if secrets is None:
            return
        login = secrets[0].decode("utf-8", "surrogateescape")
        password = secrets[1].decode("utf-8", "surrogateescape")
        outcome = await self.ingress.authenticator.authenticate(login, password)
        cred = outcome.credential
        if cred is None:
            failures = self.ingress.auth_failures.add(ip)
            if self.ingress.metrics is not None:
                self.ingress.metrics["smtp_auth_failures_total"] += 1
            log.warning(
                "session=%s peer=%s AUTH %s failed: login=%r reason=%s credential=%s failures=%d/min",
                self.gw.session_id, ip, mechanism, safe_login(login), outcome.reason, outcome.name or "-", failures,
            )
            if failures >= limit:
                await self._throttle()
            else:
                await self.push(R.AUTH_DISABLED if outcome.reason == "disabled" else R.AUTH_INVALID)
            return
        reply = refusal(await self._run_phase("on_auth", cred, session=self.gw, credential=cred))
        if reply:
            await self.push(reply)
            return
        self.session.authenticated = True
        self.gw.credential = cred
        if cred.max_message_size:
            self.data_size_limit = min(self.config.limits.max_message_size, cred.max_message_size)
        log.info("session=%s peer=%s AUTH %s ok: credential=%s%s", self.gw.session_id, ip, mechanism, cred.name,
                 " sandbox" if cred.sandbox else "")
        await self.push(R.AUTH_OK)
