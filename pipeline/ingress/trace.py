"""The ``Received:`` trace header (RFC 5321 4.4) the ingress prepends to each accepted message.

Written in Postfix's form, so the tools that read Postfix's headers read ours::

    Received: from client.example (unknown [192.0.2.1])
    \t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))
    \tby gw.example (smtpgate) with ESMTPSA id 3f9c...
    \tfor <rcpt@example.net>; Wed, 02 Dec 2026 18:00:00 +0000

``with`` is the RFC 3848 protocol (SMTP, ESMTP, then S for TLS and A for AUTH). ``for`` names the
recipient only when there is one, as Postfix does. The authenticated credential is left out
unless ``[gateway] trace_credential`` (privacy: it tells every recipient which account sent).
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass

_CLEAN = re.compile(r"[!-'*-~]+")  # printable ASCII but space and parentheses: kept as it is


def _clean(text: str, limit: int = 255) -> str:
    """Client-supplied text as it may appear in a header: printable ASCII, no spaces or parens."""
    if len(text) <= limit and _CLEAN.fullmatch(text):
        return text  # the usual case (a host name, an address), without a look at every character
    return "".join(ch if "!" <= ch <= "~" and ch not in "()" else "?" for ch in text[:limit]) or "?"


_date: tuple[int, str] = (-1, "")
"""The last second written as a ``Received:`` date: (Unix second, RFC 5322 date)."""


def _now_date() -> str:
    """``email.utils.format_datetime`` of the current UTC time (whole seconds), formatted once per second."""
    global _date
    now = datetime.datetime.now(datetime.UTC)
    second = int(now.timestamp())
    cached = _date  # one read: another thread may replace it meanwhile
    if cached[0] != second:
        cached = _date = (second, email.utils.format_datetime(now.replace(microsecond=0)))
    return cached[1]


@dataclass(frozen=True)
class Trace:
    """What the ``Received:`` header says about one message's arrival."""

    helo: str
    peer_ip: str
    rdns: str
    hostname: str
    queue_id: str
    recipients: Sequence[str]
    esmtp: bool = True
    tls: tuple[str, str, int] | None = None  # protocol, cipher, secret bits
    authenticated: bool = False
    credential: str | None = None  # only when the config says to show it
    when: datetime.datetime | None = None

    @property
    def protocol(self) -> str:
        """RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
        if not self.esmtp:
            return "SMTP"
        return "ESMTP" + ("S" if self.tls else "") + ("A" if self.authenticated else "")

    def header(self) -> bytes:
        """The header field, folded like Postfix's, ending with CRLF."""
        lines = [f"Received: from {_clean(self.helo)} ({_clean(self.rdns)} [{self.peer_ip}])"]
        if self.tls is not None:
            version, cipher, bits = self.tls
            lines.append(f"\t(using {_clean(version)} with cipher {_clean(cipher)} ({bits}/{bits} bits))")
        if self.credential is not None:
            lines.append(f"\t(Authenticated sender: {_clean(self.credential)})")
        lines.append(f"\tby {self.hostname} (smtpgate) with {self.protocol} id {self.queue_id}")
        when = email.utils.format_datetime(self.when) if self.when is not None else _now_date()
        if len(self.recipients) == 1:
            lines.append(f"\tfor <{_clean(self.recipients[0], 998 - 16)}>; {when}")
        else:
            lines[-1] += f"; {when}"
        return ("\r\n".join(lines) + "\r\n").encode("ascii")
