"""Reading bounces and complaints: RFC 3464 delivery status notifications and RFC 5965 (ARF)
feedback reports with the standard library, anything else with ``flufl.bounce``'s heuristics.

Classification (RFC 3463 classes): ``hard`` when the address itself is bad: 5.1.x (no such
mailbox, bad domain), 5.2.1 (mailbox disabled), 5.4.4 (no route to the domain), the generic
5.0.0, or a permanent failure without a code. Everything else is ``soft``: 4.x.x, a full mailbox
(5.2.2), size (5.2.3), system and protocol trouble (5.3.x, 5.5.x), content (5.6.x) and policy
or reputation refusals (5.7.x), where the address is fine and the message or sender was
refused. Only hard bounces suppress the address, so a spam block never erases a list.
"""

from __future__ import annotations

import email
import email.message
import email.parser
import email.policy
import email.utils
import logging
import re
from dataclasses import dataclass, field

log = logging.getLogger("smtpgate.bounces")

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class BouncedRecipient:
    """One recipient line of a report."""

    address: str | None
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str | None  # enhanced status code, e.g. 5.1.1
    diagnostic: str | None = None

    @property
    def bounce_class(self) -> str | None:
        """``hard``, ``soft``, or ``None`` when this line is not a failure (delivered, relayed)."""
        if self.action not in ("failed", "delayed"):
            return None
        return classify_status(self.status, permanent=self.action == "failed")


@dataclass
class BounceReport:
    """What a message sent to the bounce domain says."""

    kind: str  # "dsn" | "arf" | "heuristic" | "none"
    recipients: list[BouncedRecipient] = field(default_factory=list)
    feedback: dict[str, str] = field(default_factory=dict)  # ARF fields, lower-case names

    def for_recipient(self, address: str | None) -> BouncedRecipient | None:
        """The line about ``address`` if the report names it, else its first failure."""
        failures = [r for r in self.recipients if r.bounce_class is not None]
        if address:
            want = address.lower()
            for r in failures:
                if r.address and r.address.lower() == want:
                    return r
        return failures[0] if failures else None


_HARD = re.compile(r"^5\.(1\.\d+|2\.1|4\.4|0\.0)$")


def classify_status(status: str | None, *, permanent: bool = True) -> str:
    """``hard`` (the address is bad: suppress it) or ``soft`` (see the module docstring)."""
    if not status:
        return "hard" if permanent else "soft"
    return "hard" if _HARD.match(status.strip()) else "soft"


def _address(value: str | None) -> str | None:
    """``rfc822; user@example.com`` -> ``user@example.com``."""
    if not value:
        return None
    _, _, addr = value.partition(";") if ";" in value else ("", "", value)
    addr = email.utils.parseaddr(addr.strip())[1] or addr.strip().strip("<>")
    return addr or None


def _parse_dsn(part: email.message.Message) -> list[BouncedRecipient]:
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = [b for b in payload if isinstance(b, email.message.Message)]
    else:  # some parsers leave it as text: parse the field blocks ourselves
        text = str(payload).replace("\r\n", "\n")
        blocks = [email.parser.HeaderParser().parsestr(b.strip() + "\n") for b in re.split(r"\n\s*\n", text) if b.strip()]
    out = []
    for block in blocks[1:] if len(blocks) > 1 else blocks:
        if block.get("Action") is None and block.get("Final-Recipient") is None:
            continue
        status_field = str(block.get("Status") or "")
        m = _STATUS.search(status_field)
        diagnostic = block.get("Diagnostic-Code")
        if not m and diagnostic:
            m = _STATUS.search(str(diagnostic))
        out.append(
            BouncedRecipient(
                address=_address(str(block.get("Original-Recipient") or "") or None)
                or _address(str(block.get("Final-Recipient") or "") or None),
                action=str(block.get("Action") or "failed").strip().lower(),
                status=m.group(0) if m else None,
                diagnostic=" ".join(str(diagnostic).split()) if diagnostic else None,
            )
        )
    return out


def _parse_arf(part: email.message.Message) -> dict[str, str]:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
        fields = payload[0]
    else:
        fields = email.parser.HeaderParser().parsestr(str(payload).replace("\r\n", "\n").strip() + "\n")
    return {k.lower(): " ".join(str(v).split()) for k, v in fields.items()}


def parse_report(data: bytes) -> BounceReport:
    """Read a bounce or complaint; never raises (unreadable mail is ``kind="none"``)."""
    try:
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
    except Exception as exc:  # the parser is lenient; this is defence against the unexpected
        log.warning("unparseable bounce: %s", exc)
        return BounceReport("none")
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/feedback-report":
            return BounceReport("arf", feedback=_parse_arf(part))
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            recipients = _parse_dsn(part)
            if recipients:
                return BounceReport("dsn", recipients)
    try:
        from flufl.bounce import all_failures

        temporary, permanent = all_failures(msg)
    except Exception as exc:  # third-party heuristics on hostile input
        log.warning("flufl.bounce failed: %s", exc)
        return BounceReport("none")
    recipients = [
        BouncedRecipient(_decode(a), "failed", None) for a in sorted(permanent)
    ] + [BouncedRecipient(_decode(a), "delayed", None) for a in sorted(temporary)]
    return BounceReport("heuristic" if recipients else "none", recipients)


def _decode(addr: bytes | str) -> str:
    return addr.decode("utf-8", "replace") if isinstance(addr, bytes) else addr
