"""One milter connection: the state machine from SMFIC_OPTNEG to SMFIC_QUIT.

The MTA's events become the hooks the SMTP ingress runs: connect -> ``on_connect`` (and the IP
allow-list), HELO -> ``on_helo``, MAIL -> ``on_auth`` for the ``{auth_authen}`` login and
``on_mail_from``, RCPT -> ``on_rcpt_to``, end of message -> ``on_message`` and then the processing
chain on the whole message (:func:`pipeline.chain.processing.process_as_one`), whose edits go back
as milter actions (:mod:`pipeline.milter.edits`). Verdicts become the same SMTP replies.

Steps no hook uses are negotiated away: the MTA sends no DATA, end-of-header or unknown-command
events, expects no reply per header or body chunk, and no reply to connect, HELO, MAIL or RCPT
when no plugin has that hook (the event and its macros still arrive, so the session stays whole).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from pipeline.chain.runner import Chain, Trace
from pipeline.config import Config
from pipeline.contract.context import Credential, Session, Transaction, new_queue_id
from pipeline.contract.verdicts import PLUGIN_FAILURE, Discard, Reject, TempFail, Verdict
from pipeline.milter import protocol as P
from pipeline.milter.message import Delivery, EndOfMessage, FailPolicy, fallback

log = logging.getLogger("smtpgate.milter")

WANTED_ACTIONS = (
    P.F_ADDHDRS | P.F_CHGHDRS | P.F_CHGBODY | P.F_ADDRCPT | P.F_DELRCPT | P.F_CHGFROM | P.F_SETSYMLIST
)
MACROS = {  # what each stage must carry (SMFIR_SETSYMLIST replaces the MTA's own lists)
    P.M_CONNECT: "j _ {client_addr} {client_port} {client_name} {daemon_name}",
    P.M_HELO: "{tls_version} {cipher} {cipher_bits} {cert_subject}",
    P.M_ENVFROM: "i {auth_type} {auth_authen} {mail_addr}",
    P.M_ENVRCPT: "i {rcpt_addr}",
    P.M_EOM: "i",
}
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"


class Credentials(Protocol):
    """How a milter session finds the credential of a client the MTA authenticated or knows by address."""

    def match_ip(self, ip: str) -> Credential | None: ...

    def by_login(self, login: str) -> Credential | None: ...


class RefusalNotes(Protocol):
    """Where refusals are noted (:class:`pipeline.events.refusals.RefusalEvents`)."""

    def note(self, *, reply: str, phase: str, client_ip: str, credential: str | None = None,
             sender: str | None = None, recipient: str | None = None, listener: str | None = None) -> None: ...


_PHASES = {P.CONNECT: "connect", P.HELO: "helo", P.MAIL: "mail", P.RCPT: "rcpt", P.EOB: "data"}


class MilterSession:
    """Feed it packets with :meth:`handle`; it returns the reply packets (possibly none)."""

    def __init__(
        self,
        chain: Chain,
        config: Config,
        credentials: Credentials,
        policy: FailPolicy,
        peer: str = "-",
        end_of_message: Callable[[Delivery], Awaitable[list[bytes]]] | None = None,
        refusals: RefusalNotes | None = None,
    ) -> None:
        self.end_of_message = end_of_message or EndOfMessage(chain, config, policy).run
        self.refusals = refusals  # each reply code the MTA is told to send: an aggregated rejected event
        self.chain = chain
        self.config = config
        self.credentials = credentials
        self.policy = policy
        self.peer = peer
        self.protocol = 0
        self.granted = 0
        self.closed = False
        self._new_connection()

    # -- state ---------------------------------------------------------------------------
    def _new_connection(self) -> None:
        self.macros: dict[str, str] = {}
        self.session = Session(peer=("", 0), listener="milter")
        self._login: str | None = None
        self._new_message()

    def _new_message(self) -> None:
        self.txn: Transaction | None = None
        self.discarded: list[str] = []  # recipients a hook discarded at RCPT: deleted at end of message
        self.fields: list[bytes] = []
        self.body: list[bytes] = []
        self.size = 0
        self.too_big = False

    @property
    def in_body(self) -> bool:
        return self.txn is not None and (bool(self.fields) or bool(self.body))

    # -- dispatch -------------------------------------------------------------------------
    async def handle(self, packet: P.Packet) -> list[bytes]:
        """The reply packets for one MTA packet; :class:`~.protocol.ProtocolError` if malformed.
        A refusal among them (a reply code for the MTA to send) is noted as a ``rejected`` event."""
        sender = self.txn.mail_from if self.txn is not None else None  # EOB resets the transaction
        replies = await self._dispatch(packet)
        if self.refusals is not None:
            for reply in replies:
                if reply[4:5] == P.R_REPLYCODE:
                    self._note(packet, sender, P.text(reply[5:-1]).replace("%%", "%"))
        return replies

    def _note(self, packet: P.Packet, sender: str | None, reply: str) -> None:
        phase = _PHASES.get(packet.command, "command")
        recipient = None
        if packet.command in (P.MAIL, P.RCPT):
            address = P.strip_brackets(P.parse_args(packet.data, "SMFIC_" + phase.upper())[0])
            sender, recipient = (address, None) if packet.command == P.MAIL else (sender, address)
        cred = self.session.credential
        assert self.refusals is not None
        self.refusals.note(reply=reply, phase=phase, client_ip=self.session.peer[0] or self.peer,
                           credential=cred.name if cred is not None else None, sender=sender,
                           recipient=recipient, listener="milter")

    async def _dispatch(self, packet: P.Packet) -> list[bytes]:
        cmd, data = packet.command, packet.data
        if cmd == P.OPTNEG:
            return [self._negotiate(P.parse_optneg(data))]
        if not self.protocol:
            raise P.ProtocolError(f"{packet.name} before SMFIC_OPTNEG")
        if cmd == P.MACRO:
            self.macros.update(P.parse_macros(data)[1])
            return []
        if cmd == P.CONNECT:
            return await self._connect(P.parse_connect(data))
        if cmd == P.HELO:
            (hostname,) = P.split_strings(data, "SMFIC_HELO", 1)
            return await self._helo(P.text(hostname))
        if cmd == P.MAIL:
            return await self._mail(P.parse_args(data, "SMFIC_MAIL"))
        if cmd == P.RCPT:
            return await self._rcpt(P.parse_args(data, "SMFIC_RCPT"))
        if cmd == P.HEADER:
            self._header(*P.parse_header(data))
            return self._reply(P.P_NR_HDR)
        if cmd == P.BODY:
            self._add_body(data)
            return self._reply(P.P_NR_BODY)
        if cmd == P.EOB:
            if data:
                self._add_body(data)
            try:
                return await self._end_of_message()
            finally:
                self._new_message()
        if cmd == P.ABORT:
            self._new_message()
            return []
        if cmd == P.QUIT:
            self.closed = True
            return []
        if cmd == P.QUIT_NC:
            self._new_connection()
            return []
        if cmd in (P.DATA, P.EOH):
            return self._reply(P.P_NR_DATA if cmd == P.DATA else P.P_NR_EOH)
        if cmd == P.UNKNOWN:
            return self._reply(P.P_NR_UNKN)
        raise P.ProtocolError(f"unknown command {cmd!r}")

    def _reply(self, no_reply_flag: int, packet: bytes = P.CONTINUE) -> list[bytes]:
        return [] if self.protocol & no_reply_flag else [packet]

    def _negotiate(self, offer: P.Negotiation) -> bytes:
        has = {
            phase: bool(self.chain.calls(phase))
            for phase in ("on_connect", "on_helo", "on_mail_from", "on_rcpt_to", "on_auth")
        }
        wanted = P.P_NODATA | P.P_NOEOH | P.P_NOUNKNOWN | P.P_NR_HDR | P.P_NR_BODY | P.P_HDR_LEADSPC
        if not has["on_connect"] and not has["on_auth"]:
            wanted |= P.P_NR_CONN
        if not has["on_helo"]:
            wanted |= P.P_NR_HELO
        if not has["on_mail_from"] and not has["on_auth"]:
            wanted |= P.P_NR_MAIL
        if not has["on_rcpt_to"]:
            wanted |= P.P_NR_RCPT
        self.protocol = wanted & offer.protocol  # only what the MTA offers
        self.granted = WANTED_ACTIONS & offer.actions
        version = min(offer.version, P.VERSION)
        macros = MACROS if self.granted & P.F_SETSYMLIST else None
        log.debug(
            "milter peer=%s negotiated version %d actions=0x%x protocol=0x%x",
            self.peer,
            version,
            self.granted,
            self.protocol,
        )
        return P.optneg_reply(version, self.granted, self.protocol, macros)

    # -- verdicts -------------------------------------------------------------------------
    def _apply_policy(self, verdict: Verdict | None, trace: Trace, where: str) -> Verdict | None:
        """A plugin failure (error or timeout) answers what the fail policy says ("accept": as if the
        plugin had said nothing); other verdicts pass."""
        if verdict is not PLUGIN_FAILURE:
            return verdict
        action, what = self.policy.action(trace)
        log.error("milter peer=%s %s: %s: %s per the fail policy", self.peer, where, what, action)
        return self.policy.verdict(action)

    def _answer(self, verdict: Verdict | None, no_reply_flag: int) -> list[bytes]:
        if isinstance(verdict, Reject | TempFail):
            return [P.replycode(verdict.reply())]  # a refusal is always sent
        return self._reply(no_reply_flag)

    async def _run(self, phase: str, where: str, **kwargs: object) -> Verdict | None:
        trace = Trace()
        verdict = await self.chain.run(
            phase,
            features=self.chain.features.session(self.session.credential),
            trace=trace,
            session=self.session,
            **kwargs,
        )
        return self._apply_policy(verdict, trace, where)

    # -- envelope -------------------------------------------------------------------------
    async def _connect(self, connect: P.Connect) -> list[bytes]:
        macros = self.macros  # the connect macros arrive just before the event
        self._new_connection()
        self.macros = macros
        address = self.macros.get("client_addr") or connect.address
        try:
            port = int(self.macros.get("client_port") or connect.port)
        except ValueError:
            port = connect.port
        self.session.peer = (address, port)
        self.session.notes["client_name"] = self.macros.get("client_name") or connect.hostname
        verdict = await self._run("on_connect", "connect")
        if isinstance(verdict, Reject | TempFail):  # the MTA refuses the rest of the connection itself
            return [P.replycode(verdict.reply())]
        cred = self.credentials.match_ip(address) if address else None
        if cred is not None and await self._authorise(cred, "connect") is None:
            self.session.credential = cred
        return self._reply(P.P_NR_CONN)

    async def _authorise(self, cred: Credential, where: str) -> Verdict | None:
        """``on_auth`` for a credential: the refusal, or ``None``."""
        trace = Trace()
        verdict = await self.chain.run(
            "on_auth",
            features=self.chain.features.session(cred),
            trace=trace,
            session=self.session,
            credential=cred,
        )
        verdict = self._apply_policy(verdict, trace, where)
        return verdict if isinstance(verdict, Reject | TempFail) else None

    async def _helo(self, hostname: str) -> list[bytes]:
        self.session.helo = hostname
        tls = self.macros.get("tls_version")
        if tls:
            self.session.tls = True
            self.session.notes.update(tls_version=tls, cipher=self.macros.get("cipher", ""))
        return self._answer(await self._run("on_helo", "helo", hostname=hostname), P.P_NR_HELO)

    async def _mail(self, args: list[str]) -> list[bytes]:
        self._new_message()
        login = self.macros.get("auth_authen")
        if login and login != self._login:
            self._login = login
            cred = self.credentials.by_login(login)
            refusal = await self._authorise(cred, "mail") if cred is not None else None
            if refusal is not None:
                return [P.replycode(refusal.reply())]
            self.session.credential = cred
        address = P.strip_brackets(args[0])
        self.txn = Transaction(mail_from=address, mail_options=args[1:])
        if self.macros.get("i"):
            self.txn.notes["mta_queue_id"] = self.macros["i"]
        verdict = await self._run("on_mail_from", "mail", transaction=self.txn, address=address)
        if isinstance(verdict, Discard):
            return [P.DISCARD]
        if isinstance(verdict, Reject | TempFail):
            self.txn = None
        return self._answer(verdict, P.P_NR_MAIL)

    async def _rcpt(self, args: list[str]) -> list[bytes]:
        if self.txn is None:
            raise P.ProtocolError("SMFIC_RCPT before SMFIC_MAIL")
        address = P.strip_brackets(args[0])
        verdict = await self._run("on_rcpt_to", "rcpt", transaction=self.txn, address=address)
        if isinstance(verdict, Reject | TempFail):
            return [P.replycode(verdict.reply())]
        if isinstance(verdict, Discard):  # that recipient only: removed at the end of the message
            self.discarded.append(address)
        else:
            self.txn.rcpt_tos.append(address)
        return self._reply(P.P_NR_RCPT)

    # -- content --------------------------------------------------------------------------
    def _count(self, n: int) -> bool:
        self.size += n
        if self.size > self.config.limits.max_message_size:
            self.too_big = True
            self.fields, self.body = [], []
        return not self.too_big

    def _header(self, name: str, value: str) -> None:
        if self.txn is None:
            raise P.ProtocolError("SMFIC_HEADER before SMFIC_MAIL")
        if not self.protocol & P.P_HDR_LEADSPC:
            value = " " + value  # the MTA ate the space after the colon
        raw = P.wire(f"{name}:{value}".replace("\r\n", "\n").replace("\n", "\r\n"))
        if self._count(len(raw) + 2):
            self.fields.append(raw)

    def _add_body(self, data: bytes) -> None:
        if self.txn is None:
            raise P.ProtocolError("SMFIC_BODY before SMFIC_MAIL")
        if self._count(len(data)):
            self.body.append(data)

    async def _end_of_message(self) -> list[bytes]:
        txn = self.txn
        if txn is None or txn.mail_from is None:
            raise P.ProtocolError("SMFIC_BODYEOB before SMFIC_MAIL")
        mta_id = self.macros.get("i") or txn.notes.get("mta_queue_id") or "-"
        if self.too_big:
            log.info(
                "milter mta_queue_id=%s refused: larger than %d bytes",
                mta_id,
                self.config.limits.max_message_size,
            )
            return [P.replycode(TOO_BIG)]
        delivery = Delivery(
            new_queue_id(),
            mta_id,
            self.fields,
            b"".join(self.body),
            txn.mail_from,
            list(txn.rcpt_tos),
            list(self.discarded),
            self.session,
            bool(self.protocol & P.P_HDR_LEADSPC),
            self.granted,
        )
        try:
            return await self.end_of_message(delivery)
        except Exception as exc:  # e.g. the worker pool went away: never "continue" unsigned
            log.exception(
                "milter queue_id=%s mta_queue_id=%s end of message failed: %s", delivery.queue_id, mta_id, exc
            )
            return fallback(self.policy, delivery)
