"""Bounce notices: an RFC 3464 delivery status notification to the envelope sender when
recipients of an accepted message bounce (5xx, null MX, a plugin ``Reject``), expire (still
failing temporarily after ``spool.lifetime``: ``4.4.7``) or fail (processing failed closed too
often). RFC 5321 section 6.1: once we said ``250``, a failure must be reported to the sender.

Like Postfix's ``bounce`` daemon: the notice comes from ``MAILER-DAEMON@<hostname>`` with a
null envelope sender (``<>``), so a notice that cannot be delivered never causes another one.
No notice is sent for a null sender, for a sender at our own bounce domain, when the copies
left with a VERP bounce address (``bounce_tracking``: the bounce event is the report, and a
DSN to the VERP address would only come back to us as a second event), for sandbox
credentials, or when ``[spool] bounce_notices = false``. Recipients that failed in one
delivery round share one notice.

The notice is enqueued into the spool (durable, retried, logged and evented like any message)
before the failure is recorded, so a crash can repeat a notice but never lose one. It has no
credential (it is the gateway's own mail: default egress, global webhooks only), campaign id
``bounce-notices``, and every feature switch off except the signing plugins' (``dkim``: signed
when ``dkim_sign`` has a key for the hostname's domain or a ``default_domain``). Which switches
those are comes from the loaded plugins (:func:`notice_features`), not from names written here.
"""

from __future__ import annotations

import datetime
import email.quoprimime
import email.utils
import logging
import re
import secrets
import textwrap
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.chain.accept import enqueue
from pipeline.chain.loader import LoadedPlugin
from pipeline.config import Config
from pipeline.contract.context import MessageContext
from pipeline.contract.message import Message
from pipeline.contract.vocabulary import RecipientState
from pipeline.ports import AcceptRecorder, EventSink, QueuedMessage, RecipientOutcome, SpoolWriter

log = logging.getLogger("smtpgate.notices")

CAMPAIGN = "bounce-notices"
"""Campaign id of notices (in events and statistics); they carry no credential."""

NOTICE_STATES = frozenset({RecipientState.BOUNCED, RecipientState.EXPIRED, RecipientState.FAILED})
"""Recipient results that are reported to the sender."""

SUBJECT = "Undelivered Mail Returned to Sender"

_STATUS = re.compile(r"^[45]\.\d{1,3}\.\d{1,3}$")
_SMTP_REPLY = re.compile(r"^[245]\d\d(?:[ -]|$)")
_RELAY_HOST = re.compile(r"^([^\[\]\s]+)\[")
_MAX_DIAGNOSTIC = 900  # characters: a folded field stays far below the 998-octet line limit


@dataclass(frozen=True)
class Failure:
    """One failed recipient as the report states it."""

    recipient: str
    state: str  # bounced | expired | failed
    status: str  # enhanced status code, e.g. 5.1.1 or 4.4.7
    reply: str  # what the next hop (or we) said
    relay: str  # Postfix's host[ip]:port, or "none"

    @classmethod
    def of(cls, result: RecipientOutcome) -> Failure:
        if result.state == "expired":
            status = "4.4.7"
        elif _STATUS.match(result.dsn or ""):
            status = result.dsn
        else:
            status = "5.0.0"
        return cls(result.recipient, result.state, status, " ".join((result.reply or "").split()), result.relay or "none")

    def diagnostic(self) -> str:
        """The ``Diagnostic-Code`` value: ``smtp; <reply>`` for a next hop's reply, else ``X-smtpgate; ...``."""
        if self.state == "failed":
            # Plugin and worker errors are internal details; the sender gets the fact, not the traceback.
            return "X-smtpgate; the message could not be processed for delivery"
        reply = self.reply
        if self.state == "expired":
            reply = reply.partition("; last: ")[2] or reply
        kind = "smtp" if _SMTP_REPLY.match(reply) else "X-smtpgate"
        # message/delivery-status fields are US-ASCII (RFC 3464); the text part keeps the original.
        return f"{kind}; {reply[:_MAX_DIAGNOSTIC]}".encode("ascii", "replace").decode("ascii")

    def remote_mta(self) -> str | None:
        """``dns; host`` of the next hop that answered, when there was one."""
        if self.relay in ("", "none"):
            return None
        m = _RELAY_HOST.match(self.relay)
        return f"dns; {m.group(1) if m else self.relay}"

    def explanation(self) -> str:
        """One human-readable line for the text part."""
        if self.state == "expired":
            return f"<{self.recipient}>: delivery temporarily failed until the message expired ({self.reply})"
        if self.state == "failed":
            return f"<{self.recipient}>: the message could not be processed for delivery"
        if self.relay not in ("", "none"):
            return f"<{self.recipient}>: host {self.relay} said: {self.reply}"
        return f"<{self.recipient}>: {self.reply}"


def _date(ts: float) -> str:
    return email.utils.format_datetime(datetime.datetime.fromtimestamp(ts, datetime.UTC))


def _fold(name: str, value: str) -> str:
    """``Name: value`` folded at spaces before 78 characters (RFC 5322 2.2.3), CRLF-terminated."""
    line, out = f"{name}: ", []
    for word in value.split(" "):
        if len(line) + len(word) > 76 and line.strip() and not line.endswith(": "):
            out.append(line.rstrip(" "))
            line = " "
        line += word + " "
    out.append(line.rstrip(" "))
    return "\r\n".join(out) + "\r\n"


def _header_section(original: bytes) -> bytes:
    head, sep, _ = original.partition(b"\r\n\r\n")
    return head + b"\r\n" if sep or head else b""


def build_notice(
    *,
    hostname: str,
    sender: str,
    queue_id: str,
    arrival: float,
    failures: Sequence[Failure],
    original: bytes,
    notice_id: str,
    now: float | None = None,
) -> bytes:
    """The notice's bytes (CRLF): ``multipart/report; report-type=delivery-status`` (RFC 3462)
    with a text/plain explanation, the ``message/delivery-status`` fields (RFC 3464) and the
    original header section as ``text/rfc822-headers``."""
    now = time.time() if now is None else now
    boundary = f"=_smtpgate_{secrets.token_hex(12)}"
    headers = (
        f"From: MAILER-DAEMON@{hostname} (Mail Delivery System)\r\n"
        f"To: <{sender}>\r\n"
        f"Subject: {SUBJECT}\r\n"
        f"Date: {_date(now)}\r\n"
        f"Message-ID: <{notice_id}@{hostname}>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"\r\n'
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
        "\r\n"
    )
    lines = [
        f"This is the mail system at host {hostname}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. The headers of your",
        "message are attached below.",
        "",
        f"For further assistance, please contact the postmaster of {hostname}",
        f"and quote queue id {queue_id}.",
        "",
        "                   The mail system",
        "",
    ]
    for f in failures:
        lines += textwrap.wrap(f.explanation()[: _MAX_DIAGNOSTIC + 200], 76, subsequent_indent="    ",
                               break_on_hyphens=False)
    text = "\r\n".join(lines) + "\r\n"
    cte = "7bit"
    if not text.isascii():  # quoted-printable: no 8BITMIME needed at the next hop
        octets = text.encode("utf-8").decode("latin-1")  # body_encode takes one character per octet
        text, cte = email.quoprimime.body_encode(octets, maxlinelen=76, eol="\r\n"), "quoted-printable"
    human = (
        f"--{boundary}\r\n"
        "Content-Description: Notification\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n"
        "\r\n"
        f"{text}\r\n"
    )
    report = (
        f"--{boundary}\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        f"Reporting-MTA: dns; {hostname}\r\n"
        f"X-Smtpgate-Queue-ID: {queue_id}\r\n"
        f"Arrival-Date: {_date(arrival)}\r\n"
    )
    for f in failures:
        report += (
            "\r\n"
            f"Final-Recipient: rfc822; {f.recipient}\r\n"
            "Action: failed\r\n"
            f"Status: {f.status}\r\n"
        )
        remote = f.remote_mta()
        if remote:
            report += f"Remote-MTA: {remote}\r\n"
        report += _fold("Diagnostic-Code", f.diagnostic())
    report += "\r\n"
    head = _header_section(original)
    attached = (
        f"--{boundary}\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        f"Content-Transfer-Encoding: {'7bit' if head.isascii() else '8bit'}\r\n"
        "\r\n"
    ).encode()
    return (
        (headers + human + report).encode("utf-8")
        + attached
        + head
        + f"\r\n--{boundary}--\r\n".encode()
    )


@dataclass(frozen=True)
class NoticeFeatures:
    """Which feature switches a notice runs with, and which one sends copies with a VERP sender.

    Derived from the loaded plugins (:func:`notice_features`), so this module names no feature.
    """

    switches: frozenset[str]
    """Every switch a message can carry; a notice has each one off except ``signing``."""
    signing: frozenset[str]
    """The switches of signing plugins: a notice is signed like any mail of ours."""
    verp: str | None = None
    """The switch under which copies leave with a VERP bounce address (the bounce becomes an event)."""


def notice_features(config: Config, plugins: Sequence[LoadedPlugin]) -> NoticeFeatures:
    """The feature facts a notice needs, from the loaded plugins: their switches (the feature
    registry's), the signers' switches, and the switch of a plugin that declares ``verp_sender``
    (only when a bounce domain receives the bounces)."""
    switches = {p.feature for p in plugins if p.feature}
    signing = {p.feature for p in plugins if p.feature and p.seals_message}
    verp = next((p.feature for p in plugins if p.feature and p.verp_sender), None)
    return NoticeFeatures(frozenset(switches), frozenset(signing), verp if config.tracking.bounce_domain else None)


def notice_context(message: Message, features: NoticeFeatures, original_queue_id: str) -> MessageContext:
    """A context that runs the notice through the chain with every switch off but signing."""
    return MessageContext(
        message=message,
        credential=None,
        features={name: name in features.signing for name in sorted(features.switches)},
        campaign_id=CAMPAIGN,
        notes={"bounce_notice_for": original_queue_id},
    )


class BounceNotices:
    """Sends the sender's non-delivery notification for the failed recipients of a delivery round.

    Gets its ports from the composition root: the spool the notice is enqueued into, the event
    sink its ``accepted`` event goes to, and the domains the gateway receives mail for itself;
    with ``recorder`` (spool and events in one PostgreSQL) the event commits with the notice.
    """

    def __init__(
        self,
        config: Config,
        spool: SpoolWriter,
        events: EventSink,
        features: NoticeFeatures,
        own_domains: Collection[str] = (),
        recorder: AcceptRecorder | None = None,
    ) -> None:
        self.enabled = config.spool.bounce_notices
        self.recorder = recorder
        self.hostname = config.gateway.hostname
        self.spool = spool
        self.events = events
        self.features = features
        self.own_domains = frozenset(d.lower().rstrip(".") for d in own_domains)

    def skip_reason(self, mail_from: str, context: dict[str, Any]) -> str | None:
        """Why no notice goes to this message's sender, or ``None`` when one should."""
        if not self.enabled:
            return "bounce_notices = false"
        if not mail_from:
            return "null sender"
        domain = mail_from.rpartition("@")[2].lower().rstrip(".")
        if domain in self.own_domains:
            return "sender is our bounce domain"
        credential = context.get("credential") or {}
        if credential.get("sandbox"):
            return "sandbox credential"
        features = context.get("features") or {}
        if self.features.verp and features.get(self.features.verp):
            return "VERP bounce address (the bounce is tracked as an event)"
        return None

    async def send(self, msg: QueuedMessage, results: Sequence[RecipientOutcome]) -> str | None:
        """Enqueue one notice for the failed recipients among ``results``; its queue id, or ``None``.

        Building the notice never raises (a bug here is logged, not allowed to hold up the
        results); a spool error does, like the results' own commit would.
        """
        failed = [r for r in results if r.state in NOTICE_STATES]
        if not failed:
            return None
        try:
            reason = self.skip_reason(msg.mail_from, msg.context)
            if reason is not None:
                log.info("%s: no sender non-delivery notification (%s)", msg.queue_id, reason)
                return None
            failures = [Failure.of(r) for r in failed]
            placeholder = Message(b"Subject: x\r\n\r\n", "", [msg.mail_from])
            ctx = notice_context(placeholder, self.features, msg.queue_id)
            data = build_notice(
                hostname=self.hostname,
                sender=msg.mail_from,
                queue_id=msg.queue_id,
                arrival=float(msg.context.get("received_at") or msg.created_at),
                failures=failures,
                original=msg.data,
                notice_id=ctx.queue_id,
            )
            ctx.message = Message(data, "", [msg.mail_from])
        except Exception:
            log.exception("%s: building the sender non-delivery notification failed", msg.queue_id)
            return None
        accepted = await enqueue(self.spool, ctx, data, [msg.mail_from], event_data={
            "notice_for": msg.queue_id, "failed_recipients": [f.recipient for f in failures]},
            recorder=self.recorder)
        log.info("%s: sender non-delivery notification: %s", msg.queue_id, ctx.queue_id)
        try:
            for event in accepted:
                if self.recorder is not None:  # stored with the notice: count, wake webhooks, on_event
                    await self.recorder.committed(event)
                else:
                    await self.events.emit(event)
        except Exception:  # the notice is queued; a failing event sink must not undo it
            log.exception("%s: emitting the accepted event of notice %s failed", msg.queue_id, ctx.queue_id)
        return ctx.queue_id
