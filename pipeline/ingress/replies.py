"""Every SMTP reply the ingress sends, and the one place that adds enhanced status codes.

aiosmtpd's built-in replies (``250 OK``, ``500 Error: bad syntax``, ``221 Bye``...) carry no
RFC 3463 enhanced code; :func:`with_enhanced` rewrites them on the way out, so no code path can
send a bare reply. The greeting, HELO/EHLO responses and 3xx continuations are exempt, as RFC
2034 section 3 says.
"""

from __future__ import annotations

import re

_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?:\s|$)")
_CODE = re.compile(r"^([245])(\d\d)([ -])(.*)$", re.DOTALL)

# aiosmtpd's own replies (or their prefixes) -> the enhanced code they get.
_BUILTIN = {
    "500 Error: bad syntax": "5.5.2",
    "500 Command line too long": "5.5.2",
    "500 Error: strict ASCII mode": "5.5.2",
    "500 Error: command": "5.5.1",
    "554 Command refused due to lack of security": "5.7.0",
    "221 Bye": "2.0.0",
    "250 OK": "2.0.0",
    "220 Ready to start TLS": "2.0.0",
    "454 TLS not available": "4.7.0",
    "252 Cannot VRFY": "2.0.0",
    "502 Could not VRFY": "5.5.1",
    "502 EXPN not implemented": "5.5.1",
}
_BY_CODE = {500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4", 530: "5.7.0", 535: "5.7.8"}


def with_enhanced(reply: str) -> str:
    """``reply`` with an enhanced status code after the reply code (unchanged if it has one)."""
    if _HAS_ENHANCED.match(reply):
        return reply
    m = _CODE.match(reply)
    if m is None:  # 3xx continuation, or not a reply line at all
        return reply
    code = int(m.group(1) + m.group(2))
    enhanced = None
    for prefix, value in _BUILTIN.items():
        if reply.startswith(prefix):
            enhanced = value
            break
    if enhanced is None:
        enhanced = _BY_CODE.get(code, f"{m.group(1)}.0.0")
    return f"{code}{m.group(3)}{enhanced} {m.group(4)}"


# Where a vendor documents its own words for a refusal (enKod, SMTPeter), they follow the
# standard text in parentheses, so an integration that matches on them keeps working.

# -- replies of our own (tests import these, so a text lives in one place) ---------------------
OK = "250 2.0.0 Ok"
SENDER_OK = "250 2.1.0 Sender ok"
RECIPIENT_OK = "250 2.1.5 Recipient ok"
AUTH_OK = "235 2.7.0 Authentication successful"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
BYE = "221 2.0.0 Bye"

SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_CONNECTIONS_IP = "421 4.7.0 Too many connections from your address, try again later"
AUTH_THROTTLED = "421 4.7.0 Too many failed authentication attempts, try again later"
IDLE_TIMEOUT = "421 4.4.2 Idle timeout, closing connection"

AUTH_INVALID = "535 5.7.8 Authentication credentials invalid (wrong api key)"
AUTH_DISABLED = "535 5.7.8 Authentication credentials disabled: contact the administrator (client is deleted)"
AUTH_REQUIRED = "530 5.7.0 Authentication required (no username or password)"
STARTTLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first (this server does not accept unsecured connections)"
ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
TLS_NOT_AVAILABLE = "454 4.7.0 TLS not available"
TLS_ACTIVE = "503 5.5.1 TLS already active"
AUTH_MECHANISM = "504 5.5.4 Unrecognized authentication type"
AUTH_ALREADY = "503 5.5.1 Already authenticated"
AUTH_NEEDS_EHLO = "503 5.5.1 Error: AUTH requires EHLO"
AUTH_SYNTAX = "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
AUTH_ABORTED = "501 5.7.0 Authentication aborted"
AUTH_BASE64 = "501 5.5.2 Cannot decode base64"
AUTH_PLAIN_FORMAT = "501 5.5.2 Invalid AUTH PLAIN response"
AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication exchange line is too long"

NEED_HELO = "503 5.5.1 Error: send HELO/EHLO first"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
MAIL_SYNTAX = "501 5.5.4 Syntax: MAIL FROM:<address> [SP <mail-parameters>]"
RCPT_SYNTAX = "501 5.5.4 Syntax: RCPT TO:<address>"
DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
BAD_SENDER = "553 5.1.7 Invalid sender address syntax (invalid from email)"
NON_FQDN_SENDER = "553 5.1.8 Sender address rejected: domain not fully qualified (invalid from email)"
BAD_RECIPIENT = "553 5.1.3 Invalid recipient address syntax"
MAIL_PARAMS = "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
RCPT_PARAMS = "555 5.5.4 RCPT TO parameters not recognized or not implemented"
BAD_BODY = "501 5.5.4 BODY must be 7BIT or 8BITMIME"
BAD_SIZE = "501 5.5.4 SIZE must be a number of octets"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
SEPARATE_TRANSACTION = "452 4.5.3 Too many recipients: send to this domain in a separate transaction"
NOT_OWNED = "553 5.7.1 Sender address rejected: not owned by user"
RATE_LIMITED = "451 4.7.1 Message rate limit exceeded, try again later"
RELAY_DENIED = "554 5.7.1 Relay access denied"
LINE_TOO_LONG = "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6: 1000 octets including CRLF)"
SMUGGLING = "550 5.5.2 Message refused: bare CR or LF next to a lone dot (SMTP smuggling)"
NUL_CHARACTER = "550 5.6.0 Message refused: it contains a NUL character (RFC 5322 2.3)"
BARE_NEWLINE = "550 5.6.0 Message refused: bare CR or LF in the body (only CRLF ends a line; [limits] bare_newline)"
SPOOL_FAILED = "451 4.3.0 Temporary local problem: message not queued, try again later"
INBOUND_FAILED = "451 4.3.0 Temporary local problem, try again later"
INTERNAL_ERROR = "451 4.3.0 Internal error, try again later"


def queued(queue_id: str) -> str:
    return f"250 2.0.0 Ok: queued as {queue_id}"


def bare_newline_in_header(problem: str) -> str:
    """``problem`` names the octet and line, e.g. ``bare LF in header line 3``."""
    return f"550 5.6.0 Message refused: {problem} (a header line ends only with CRLF)"
