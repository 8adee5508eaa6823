"""One SMTP session's commands, HELO to DATA, on top of the protocol adapter.

Where each behaviour lives: the connection plumbing (replies, shutdown, admission at connect) in
:mod:`~pipeline.ingress.session`; AUTH in :mod:`~pipeline.ingress.sasl`; who may send to whom in
:mod:`~pipeline.ingress.relay`; reading DATA and the octet checks (smuggling, NUL, bare line
ends) in :mod:`~pipeline.ingress.data`; the ``Received:`` header in :mod:`~pipeline.ingress.trace`;
and what happens to an accepted message (admission, inbound sinks, spool, ``accepted`` event) in
:mod:`pipeline.chain.accept`. This module runs the admission hooks at each phase and turns each
outcome into its reply (:mod:`~pipeline.ingress.replies`).
"""

from __future__ import annotations

import logging

from aiosmtpd.smtp import TLSSetupException

from pipeline.chain.accept import Outcome
from pipeline.contract.context import Transaction, new_queue_id
from pipeline.contract.verdicts import drops
from pipeline.ingress import data as D
from pipeline.ingress import relay
from pipeline.ingress import replies as R
from pipeline.ingress.addresses import AddressError, domain_matches, parse_path
from pipeline.ingress.sasl import SaslSession
from pipeline.ingress.session import refusal
from pipeline.ingress.trace import Trace

log = logging.getLogger("smtpgate.ingress")


class GatewaySMTP(SaslSession):
    """The SMTP protocol for one connection on one listener."""

    def _client(self) -> relay.Client:
        """What the relay decision needs to know of the session now (remembered while it holds)."""
        authorized, tls = self.gw.credential is not None, self.is_tls
        client = self._relay_client
        if client is None or client.authorized is not authorized or client.tls is not tls:
            client = self._relay_client = relay.Client(authorized=authorized, tls=tls,
                                                       require_tls=self.listener.require_tls)
        return client

    _relay_client: relay.Client | None = None

    # -- HELO / EHLO / STARTTLS ------------------------------------------------------------
    async def _greet(self, verb: str, hostname: str, extended: bool) -> bool:
        """The part HELO and EHLO share: syntax, the ``on_helo`` hook, resetting the session."""
        if not hostname:
            await self.push(f"501 5.5.4 Syntax: {verb} hostname")
            return False
        reply = refusal(await self._hook("on_helo", hostname=hostname))
        if reply:
            await self.push(reply)
            return False
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = extended
        self.session.host_name = hostname
        self.gw.helo = hostname
        return True

    async def smtp_HELO(self, hostname: str) -> None:
        if await self._greet("HELO", hostname, extended=False):
            self._raw_push = True
            await self.push(f"250 {self.hostname}")

    async def smtp_EHLO(self, hostname: str) -> None:
        if not await self._greet("EHLO", hostname, extended=True):
            return
        lines = [self.hostname, "PIPELINING", f"SIZE {self.data_size_limit}", "8BITMIME"]
        if self.tls_context and not self.is_tls:
            lines.append("STARTTLS")
        if self._auth_allowed():
            lines.append("AUTH PLAIN LOGIN")
        lines.append("ENHANCEDSTATUSCODES")
        await self._push_lines(lines)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.is_tls:
            await self.push(R.TLS_ACTIVE)
        elif not self.tls_context:
            await self.push(R.TLS_NOT_AVAILABLE)
        elif arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
        else:
            await super().smtp_STARTTLS(arg)
            if not self.is_tls:
                # The connection was lost (or cut by the idle timeout) mid-handshake: asyncio then
                # wakes the waiter without an error and never calls connection_made, so the reader
                # would wait forever. aiosmtpd's TLSSetupException path closes and cleans up.
                raise TLSSetupException("connection lost during the TLS handshake")

    # -- MAIL / RCPT -----------------------------------------------------------------------
    @staticmethod
    def _strip_keyword(keyword: str, arg: str | None) -> str | None:
        if arg is None or arg[: len(keyword)].upper() != keyword:
            return None
        return arg[len(keyword):].strip()

    def _accepts_unauthorized(self) -> bool:
        """Whether any recipient could be accepted without AUTH (an inbound or local domain)."""
        return bool(self.ingress.accept.inbound) or bool(self.config.relay.local_domains)

    async def _mail_refusal(self, rest: str) -> tuple[str | None, Transaction | None]:
        """Check one MAIL command: ``(reply, None)`` to refuse it, or ``(None, transaction)``."""
        assert self.session is not None
        try:
            path = parse_path(rest, allow_null=True)
        except AddressError as exc:
            return (R.MAIL_SYNTAX if exc.kind == "syntax" else R.BAD_SENDER), None
        params = dict(path.params)
        body = params.pop("BODY", "7BIT")
        if body is None or body.upper() not in ("7BIT", "8BITMIME"):
            return R.BAD_BODY, None
        size = params.pop("SIZE", None)
        if "SIZE" in path.params:
            if size is None or not size.isdigit():
                return R.BAD_SIZE, None
            if self.data_size_limit and int(size) > self.data_size_limit:
                return R.TOO_BIG, None
        if params or (not self.session.extended_smtp and path.params):
            return R.MAIL_PARAMS, None
        reply = relay.sender_refusal(path, self.config.relay.reject_non_fqdn_sender)
        if reply is not None:
            return reply, None
        cred = self.gw.credential
        if cred is not None:
            if cred.allowed_sender_domains and path.address and not domain_matches(path.domain, cred.allowed_sender_domains):
                log.info("session=%s credential=%s sender %s rejected: domain not allowed",
                         self.gw.session_id, cred.name, path.address)
                return R.NOT_OWNED, None
            if cred.messages_per_minute and self.ingress.sent.count(cred.name) >= cred.messages_per_minute:
                log.info("session=%s credential=%s rate limit %d/min reached", self.gw.session_id, cred.name,
                         cred.messages_per_minute)
                return R.RATE_LIMITED, None
        txn = Transaction(mail_from=path.address, mail_options=[f"{k}={v}" if v else k for k, v in path.params.items()])
        return refusal(await self._hook("on_mail_from", transaction=txn, address=path.address)), txn

    async def smtp_MAIL(self, arg: str | None) -> None:
        reply = self._sequence_reply()
        if reply is not None:
            await self.push(reply)
            return
        rest = self._strip_keyword("FROM:", arg)
        if rest is None:
            await self.push(R.MAIL_SYNTAX)
            return
        if self.txn is not None:
            await self.push(R.NESTED_MAIL)
            return
        reply = relay.mail_refusal(self._client(), self._accepts_unauthorized())
        if reply is not None:
            log.info("session=%s peer=%s MAIL refused: %s", self.gw.session_id, self.gw.peer_ip, reply)
            await self.push(reply)
            return
        reply, txn = await self._mail_refusal(rest)
        if reply is not None or txn is None:
            await self.push(reply or R.INTERNAL_ERROR)
            return
        assert self.envelope is not None
        self.envelope.mail_from = txn.mail_from
        self.txn = txn
        await self.push(R.SENDER_OK)

    def _max_recipients(self) -> int:
        limit = self.config.limits.max_recipients
        cred = self.gw.credential
        if cred is not None and cred.max_recipients:
            limit = min(limit, cred.max_recipients)
        return limit

    async def smtp_RCPT(self, arg: str | None) -> None:
        reply = self._sequence_reply(mail=True)
        if reply is not None:
            await self.push(reply)
            return
        assert self.txn is not None
        rest = self._strip_keyword("TO:", arg)
        if rest is None:
            await self.push(R.RCPT_SYNTAX)
            return
        try:
            path = parse_path(rest, allow_null=False)
        except AddressError as exc:
            await self.push(R.RCPT_SYNTAX if exc.kind == "syntax" else R.BAD_RECIPIENT)
            return
        if path.params:
            await self.push(R.RCPT_PARAMS)
            return
        txn = self.txn
        if len(txn.rcpt_tos) >= self._max_recipients():
            await self.push(R.TOO_MANY_RECIPIENTS)
            return
        inbound = self.ingress.accept.inbound_handler(path.domain) is not None
        local = relay.is_local(path.domain, self.config.relay.local_domains, inbound)
        reply = relay.rcpt_refusal(self._client(), path, local)
        if reply is not None:
            trick = path.relay_trick
            log.info("session=%s peer=%s RCPT %s refused: %s%s", self.gw.session_id, self.gw.peer_ip,
                     path.address, reply, f" ({trick})" if trick else "")
            await self.push(reply)
            return
        if txn.rcpt_tos and txn.notes.get("inbound") != inbound:
            await self.push(R.SEPARATE_TRANSACTION)
            return
        verdict = await self._hook("on_rcpt_to", transaction=txn, address=path.address)
        reply = refusal(verdict)
        if reply:
            await self.push(reply)
            return
        if not drops(verdict):
            txn.notes["inbound"] = inbound
            txn.rcpt_tos.append(path.address)
            assert self.envelope is not None
            self.envelope.rcpt_tos.append(path.address)
        await self.push(R.RECIPIENT_OK)

    # -- DATA ------------------------------------------------------------------------------
    async def smtp_DATA(self, arg: str | None) -> None:
        reply = self._sequence_reply(mail=True, rcpt=True)
        if reply is not None:
            await self.push(reply)
            return
        assert self.txn is not None
        if arg:
            await self.push(R.DATA_SYNTAX)
            return
        self._raw_push = True
        await self.push(R.START_DATA)
        content = await D.read_data(self._reader, self.data_size_limit or 0, self._reset_timeout)
        if content is None:
            self._end = "lost during DATA"
            self.close()
            return
        txn = self.txn
        self._set_post_data_state()
        self._hold_idle_timer()  # from here on the client waits for us, until the reply is out
        try:
            if isinstance(content, bytes):
                content, reply = self._checked(content)
            else:
                reply = content
            if reply is not None or not isinstance(content, bytes):
                self._rejected += 1
                await self.push(reply or R.INTERNAL_ERROR)
            else:
                outcome = await self._accept(txn, content)
                reply = self._reply(outcome, txn)
                if outcome.status == "queued":  # new text each time: not worth remembering (wire_reply)
                    self._raw_push = True
                await self.push(reply)
                await self.ingress.accept.announce(outcome)  # after the reply: event plugins must not delay it
        finally:
            if self.transport is not None:  # the client's turn: its idle time starts now (also after an error)
                self._reset_timeout()

    def _checked(self, body: bytes) -> tuple[bytes, str | None]:
        """The unstuffed message and the refusal for octets that must not pass (or ``None``)."""
        reply = D.frame_checks(body)
        if reply is None:
            body = D.unstuff(body)
            reply = D.check_content(body, self.config.limits.bare_newline)
        if reply is not None and reply != R.LINE_TOO_LONG:
            log.warning("session=%s peer=%s DATA refused: %s", self.gw.session_id, self.gw.peer_ip, reply)
        return body, reply

    def _trace(self, txn: Transaction, queue_id: str) -> bytes:
        """The ``Received:`` header for this message (empty when ``[gateway] trace_header`` is off)."""
        gateway = self.config.gateway
        if not gateway.trace_header:
            return b""
        assert self.session is not None
        cred = self.gw.credential
        return Trace(
            helo=self.gw.helo or "unknown", peer_ip=self.gw.peer_ip, rdns=self.rdns, hostname=gateway.hostname,
            queue_id=queue_id, recipients=list(txn.rcpt_tos), esmtp=bool(self.session.extended_smtp),
            tls=self.tls_info if self.is_tls else None, authenticated=bool(self.session.authenticated),
            credential=cred.name if cred is not None and gateway.trace_credential else None,
        ).header()

    async def _accept(self, txn: Transaction, content: bytes) -> Outcome:
        assert txn.mail_from is not None
        if txn.notes.get("inbound"):
            return await self.ingress.accept.accept(content, txn.mail_from, txn.rcpt_tos, inbound=True)
        queue_id = new_queue_id()
        return await self.ingress.accept.accept(
            self._trace(txn, queue_id) + content, txn.mail_from, list(txn.rcpt_tos),
            session=self.gw, credential=self.gw.credential, queue_id=queue_id,
        )

    def _reply(self, outcome: Outcome, txn: Transaction) -> str:
        """The reply to DATA for the accept step's outcome (and the session's counters)."""
        if outcome.status == "refused":
            self._rejected += 1
            reply = refusal(outcome.verdict) or R.INTERNAL_ERROR
            log.info("session=%s peer=%s message from=<%s> refused: %s", self.gw.session_id, self.gw.peer_ip,
                     txn.mail_from, reply)
            return reply
        if outcome.status == "spool_failed":
            return R.SPOOL_FAILED
        if outcome.status == "inbound_failed":
            return R.INBOUND_FAILED
        if outcome.status == "discarded":
            return R.OK
        self._messages += 1
        if outcome.status == "handled":
            return R.OK
        cred = self.gw.credential
        if cred is not None and cred.messages_per_minute:
            self.ingress.sent.add(cred.name)
        ctx = outcome.ctx
        assert ctx is not None
        log.info(
            "queue_id=%s session=%s accepted from=<%s> rcpts=%d size=%d credential=%s%s%s",
            ctx.queue_id, self.gw.session_id, txn.mail_from, len(outcome.recipients), outcome.size,
            cred.name if cred else "-", " sandbox" if cred is not None and cred.sandbox else "",
            f" campaign={ctx.campaign_id}" if ctx.campaign_id else "",
        )
        return R.queued(ctx.queue_id)  # (has its enhanced code: smtp_DATA sends it as it is)
