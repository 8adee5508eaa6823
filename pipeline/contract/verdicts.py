"""Verdicts a hook may return, and the one place that renders them as SMTP replies.

A hook returns ``None`` to let the message continue; any verdict stops the phase.
:func:`refuses`, :func:`drops` and :func:`ends` say what a verdict means beyond its phase,
for every caller (ingress, replay, the driver, processing). The code class is checked at construction so a ``Reject`` can never carry a 4xx
(or a ``TempFail`` a 5xx): a wrong class would turn a retry into a bounce.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeGuard

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


class VerdictError(ValueError):
    """A verdict built with an inconsistent code, enhanced code or text."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Base class; use one of the subclasses."""

    def reply(self) -> str:
        """The SMTP reply line(s) this verdict sends, without the final CRLF."""
        raise VerdictError(f"{type(self).__name__} has no SMTP reply")


def _check(code: int, enhanced: str, text: str, first_digit: int, kind: str) -> None:
    if not isinstance(code, int) or isinstance(code, bool) or code // 100 != first_digit:
        raise VerdictError(f"{kind} needs a {first_digit}xx code, got {code}")
    if not _ENHANCED.match(enhanced) or int(enhanced[0]) != first_digit:
        raise VerdictError(f"{kind} needs an enhanced code {first_digit}.x.y, got {enhanced!r}")
    if "\r" in text or "\n" in text:
        raise VerdictError(f"{kind} text must be one line")


@dataclass(frozen=True, slots=True)
class Accept(Verdict):
    """Accept: skip the remaining filters of this phase only (later phases still run)."""

    def reply(self) -> str:
        return "250 2.0.0 OK"


@dataclass(frozen=True, slots=True)
class Reject(Verdict):
    """Permanent failure (5xx): the client must not retry."""

    code: int = 550
    enhanced: str = "5.7.1"
    text: str = "Rejected"

    def __post_init__(self) -> None:
        _check(self.code, self.enhanced, self.text, 5, "Reject")

    def reply(self) -> str:
        return render_reply(self.code, self.enhanced, self.text)


@dataclass(frozen=True, slots=True)
class TempFail(Verdict):
    """Temporary failure (4xx): the client (or our queue) retries later."""

    code: int = 451
    enhanced: str = "4.3.0"
    text: str = "Temporary failure, try again later"

    def __post_init__(self) -> None:
        _check(self.code, self.enhanced, self.text, 4, "TempFail")

    def reply(self) -> str:
        return render_reply(self.code, self.enhanced, self.text)


@dataclass(frozen=True, slots=True)
class Discard(Verdict):
    """Accept the message and drop it (the client sees success)."""

    reason: str = "discarded"

    def reply(self) -> str:
        return "250 2.0.0 OK"


def render_reply(code: int, enhanced: str | None, text: str) -> str:
    """Render ``code enhanced text``; multi-line text becomes a ``code-`` continuation reply."""
    lines = text.splitlines() or [""]
    prefix = f"{enhanced} " if enhanced else ""
    out = [f"{code}-{prefix}{line}" for line in lines[:-1]]
    out.append(f"{code} {prefix}{lines[-1]}")
    return "\r\n".join(out)


def refuses(verdict: Verdict | None) -> TypeGuard[Reject | TempFail]:
    """``Reject`` / ``TempFail``: the command, message or copy is refused (the client or the queue
    is told 5xx / 4xx; in processing the copy bounces or is retried)."""
    return isinstance(verdict, Reject | TempFail)


def drops(verdict: Verdict | None) -> TypeGuard[Discard]:
    """``Discard``: answered with success, then dropped (that recipient, message or copy)."""
    return isinstance(verdict, Discard)


def ends(verdict: Verdict | None) -> TypeGuard[Reject | TempFail | Discard]:
    """Whether the message (or copy) goes no further: refused or dropped. ``None`` and ``Accept``
    only end the phase they came from; later phases still run."""
    return refuses(verdict) or drops(verdict)


def verdict_name(verdict: Verdict | None) -> str:
    """Short name for traces and logs: ``continue``, ``reject 550 5.6.0``, ..."""
    if verdict is None:
        return "continue"
    if isinstance(verdict, Reject | TempFail):
        return f"{type(verdict).__name__.lower()} {verdict.code} {verdict.enhanced}"
    return type(verdict).__name__.lower()


PLUGIN_FAILURE = TempFail(451, "4.3.0", "Temporary local problem, try again later")
