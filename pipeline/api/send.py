"""``POST /api/v1/messages``: send over HTTP, through the same admission chain and spool as SMTP.

Two request shapes (docs/api.md): a raw RFC 5322 message (``mail_from``, ``rcpt_to``, ``data`` in
base64) or a composed one (``from``, ``to``, ``cc``, ``bcc``, ``subject``, ``text``, ``html``,
``attachments``, ``headers``, ``campaign_id``, ``letter_id``, ``features``) that the standard
library's ``email`` package turns into MIME. Either way the message goes through what an SMTP
client's message goes through after AUTH: the credential's sender domains, rate and size limits,
``on_auth``, ``on_mail_from``, one ``on_rcpt_to`` per recipient, then the one accept step
(:class:`~pipeline.chain.accept.AcceptStep`: ``on_message``, spool, ``accepted`` event).

Every send is made as a credential, so the API can never be an open relay: a tenant's token sends as
its own credential; an administrator's token must name one (``"credential": "shop"``). The SMTP
verdict is kept in the answer: a 5xx is a ``422`` with ``{"error", "reply": {"code", "enhanced",
"text"}}`` (do not retry), a 4xx a ``503`` with ``Retry-After`` (``429`` for the rate limit).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import email.policy
import email.utils
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.chain.accept import AcceptStep
from pipeline.chain.runner import Chain
from pipeline.config import GatewaySection, LimitsSection
from pipeline.contract.context import Credential, Session, Transaction, new_queue_id
from pipeline.contract.verdicts import Reject, TempFail, Verdict, refuses
from pipeline.ports import ApiPrincipalView

log = logging.getLogger("smtpgate.api.send")

NO_STORE = {"Cache-Control": "no-store"}
ENVELOPE_ALLOWANCE = 256 * 1024
"""Room in a send request beyond the base64 of the message itself: addresses, headers, JSON syntax."""
RETRY_AFTER = 60

_ADDR = re.compile(r"^[^\s<>@,;:\"()\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # RFC 5322 ftext
_MIME_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "x-campaign-id",
        "x-letter-id",
    }
)
"""Headers the composed form sets from its own fields: giving them in ``headers`` too is a 400."""

NOT_OWNED = Reject(553, "5.7.1", "Sender address rejected: not owned by user")
RATE_LIMITED = TempFail(451, "4.7.1", "Message rate limit exceeded, try again later")
OWN_DOMAIN = Reject(550, "5.7.1", "Recipient is in a domain the gateway receives itself (the bounce domain)")
NOT_QUEUED = TempFail(451, "4.3.0", "Temporary local problem: message not queued, try again later")


NUL_CHARACTER = Reject(550, "5.6.0", "Message refused: it contains a NUL character (RFC 5322 2.3)")
BARE_NEWLINE = Reject(
    550, "5.6.0", "Message refused: bare CR or LF in the body (only CRLF ends a line; [limits] bare_newline)"
)


def crlf(raw: bytes) -> bytes:
    """A message saved with Unix line ends (no CR at all) as SMTP carries it; anything else unchanged
    (mixed line ends are the SMTP ingress's rules: normalised, or refused with ``bare_newline = reject``)."""
    return raw.replace(b"\n", b"\r\n") if b"\r" not in raw else raw


def _bare_newline_in(message: bytes) -> bool:
    pairs = message.count(b"\r\n")
    return message.count(b"\n") != pairs or message.count(b"\r") != pairs


class RateWindow(Protocol):
    """Messages per credential in the last minute, shared with the SMTP ingress (one limit for both)."""

    def count(self, key: str) -> int: ...

    def add(self, key: str) -> int: ...


class CredentialLookup(Protocol):
    """A credential by name: ``(credential, disabled)``; ``(None, False)`` when there is none."""

    def __call__(self, name: str) -> tuple[Credential | None, bool]: ...


@dataclass
class SendPorts:
    """What sending needs: the accept step (admission, spool, ``accepted`` events), the chain (the
    envelope hooks), credentials by name, the shared rate window, the ``[limits]``."""

    accept: AcceptStep
    chain: Chain
    credential: CredentialLookup
    sent: RateWindow
    limits: LimitsSection
    on_refusal: Callable[..., None] | None = None  # reports a refusal (rejected events), when wired
    gateway: GatewaySection | None = None  # hostname and [gateway] trace_header for the Received: header


def max_request_size(limits: LimitsSection) -> int:
    """The largest send request read: the biggest message the gateway takes, base64-encoded, plus room."""
    return (limits.max_message_size + 2) // 3 * 4 + ENVELOPE_ALLOWANCE


def _address(value: str) -> str:
    """The addr-spec of ``value`` (``Name <a@b>`` or ``a@b``); ``ValueError`` when there is none."""
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain line breaks")
    _, addr = email.utils.parseaddr(value)
    if not addr or not _ADDR.match(addr):
        raise ValueError(f"not an email address: {value[:100]!r}")
    return addr


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64") from None


class Attachment(BaseModel):
    """One attachment of the composed form; its bytes arrive as given."""

    model_config = ConfigDict(extra="forbid")
    filename: str = Field(min_length=1, max_length=255)
    content_type: str = "application/octet-stream"
    content: str

    @field_validator("filename")
    @classmethod
    def _filename(cls, v: str) -> str:
        if any(c in v for c in "\r\n\x00/\\"):
            raise ValueError("must be a plain file name")
        return v

    @field_validator("content_type")
    @classmethod
    def _type(cls, v: str) -> str:
        if not _MIME_TYPE.match(v):
            raise ValueError("must be a MIME type such as application/pdf")
        return v.lower()

    @field_validator("content")
    @classmethod
    def _content(cls, v: str) -> str:
        _b64(v)
        return v


class RawSend(BaseModel):
    """A ready RFC 5322 message and its envelope."""

    model_config = ConfigDict(extra="forbid")
    mail_from: str
    rcpt_to: list[str] = Field(min_length=1)
    data: str
    credential: str | None = None

    @field_validator("mail_from")
    @classmethod
    def _sender(cls, v: str) -> str:
        return "" if v in ("", "<>") else _address(v)

    @field_validator("rcpt_to")
    @classmethod
    def _rcpts(cls, v: list[str]) -> list[str]:
        return [_address(a) for a in v]

    @field_validator("data")
    @classmethod
    def _data(cls, v: str) -> str:
        if not _b64(v):
            raise ValueError("must not be empty")
        return v


class ComposedSend(BaseModel):
    """A message the gateway composes (MIME, encodings, Date, Message-Id)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str = Field(alias="from")
    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    bcc: list[str] = Field(default_factory=list)
    subject: str = Field(max_length=998)
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    campaign_id: str | None = None
    letter_id: str | None = None
    features: dict[str, bool] = Field(default_factory=dict)
    credential: str | None = None

    @field_validator("from_")
    @classmethod
    def _from(cls, v: str) -> str:
        _address(v)
        return v

    @field_validator("to", "cc", "bcc")
    @classmethod
    def _list(cls, v: list[str]) -> list[str]:
        for a in v:
            _address(a)
        return v

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        if "\r" in v or "\n" in v:
            raise ValueError("must not contain line breaks")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name[:80]!r}")
            if name.lower() in RESERVED_HEADERS or name.lower().startswith("x-smtpeter-"):
                raise ValueError(
                    f"{name} is set by its own field (from, to, cc, subject, campaign_id, features...)"
                )
            if "\r" in value or "\n" in value or "\x00" in value:
                raise ValueError(f"header {name} must not contain line breaks")
        return v

    @field_validator("campaign_id", "letter_id")
    @classmethod
    def _ids(cls, v: str | None) -> str | None:
        if v is not None and not _ID.match(v):
            raise ValueError("must be 1-64 characters of A-Z a-z 0-9 _ -")
        return v

    @property
    def envelope_sender(self) -> str:
        return _address(self.from_)

    @property
    def recipients(self) -> list[str]:
        """The envelope recipients: to, cc and bcc, each once (bcc never appears in a header)."""
        return list(dict.fromkeys(_address(a) for a in (*self.to, *self.cc, *self.bcc)))

    def compose(self) -> bytes:
        """The message as the standard library builds it (CRLF lines, MIME encodings chosen for the content)."""
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = self.from_
        if self.to:
            msg["To"] = ", ".join(self.to)
        if self.cc:
            msg["Cc"] = ", ".join(self.cc)
        msg["Subject"] = self.subject
        msg["Date"] = email.utils.formatdate(usegmt=True)
        msg["Message-ID"] = email.utils.make_msgid(domain=self.envelope_sender.rpartition("@")[2])
        msg["MIME-Version"] = "1.0"
        if self.campaign_id:
            msg["X-Campaign-Id"] = self.campaign_id
        if self.letter_id:
            msg["X-Letter-Id"] = self.letter_id
        for name, on in self.features.items():  # the SMTP header switches, so the same rules apply (locks...)
            msg[f"X-SMTPeter-{name}"] = "true" if on else "false"
        for name, value in self.headers.items():
            msg[name] = value
        if self.html is not None and self.text is not None:
            msg.set_content(self.text)
            msg.add_alternative(self.html, subtype="html")
        elif self.html is not None:
            msg.set_content(self.html, subtype="html")
        else:
            msg.set_content(self.text or "")
        for att in self.attachments:
            maintype, _, subtype = att.content_type.partition("/")
            msg.add_attachment(_b64(att.content), maintype=maintype, subtype=subtype, filename=att.filename)
        return msg.as_bytes()


class RequestError(Exception):
    """A request the API answers with ``status`` and a JSON error (before any SMTP verdict)."""

    def __init__(self, status: int, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def parse_send(body: Any) -> RawSend | ComposedSend:
    """The request as one of the two forms; :class:`RequestError` 400 naming the field otherwise."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    model: type[RawSend] | type[ComposedSend] = RawSend if "data" in body else ComposedSend
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if where == "from_":
            where = "from"
        raise RequestError(400, f"{where}: {first['msg']}") from None
    if isinstance(parsed, ComposedSend):
        if not parsed.recipients:
            raise RequestError(400, "to: at least one recipient in to, cc or bcc is required")
        if parsed.text is None and parsed.html is None and not parsed.attachments:
            raise RequestError(400, "text: give text, html or attachments")
    return parsed


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    code = getattr(verdict, "code", 0)
    return {"code": code, "enhanced": getattr(verdict, "enhanced", ""), "text": getattr(verdict, "text", "")}


def _domain_matches(domain: str, patterns: Sequence[str]) -> bool:
    """As the SMTP ingress matches ``allowed_sender_domains``: equal, or below ``.example.com`` / ``*.example.com``."""
    domain = domain.lower()
    for pattern in patterns:
        p = pattern.lower()
        p = p[1:] if p.startswith("*.") else p
        if (p.startswith(".") and domain.endswith(p)) or domain == p:
            return True
    return False


class SendHandlers:
    """``POST /api/v1/messages`` on its ports."""

    def __init__(self, ports: SendPorts) -> None:
        self.p = ports
        self.limit = max_request_size(ports.limits)

    async def _body(self, request: web.Request) -> Any:
        """The JSON body, read up to :attr:`limit` (the app-wide 64 KiB does not apply to a message)."""
        if request.content_length is not None and request.content_length > self.limit:
            raise RequestError(
                413, f"request body larger than {self.limit} bytes (the message size limit in base64)"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.limit:
                raise RequestError(
                    413, f"request body larger than {self.limit} bytes (the message size limit in base64)"
                )
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            raise RequestError(400, "the body must be JSON") from None

    def _credential(self, principal: ApiPrincipalView, named: str | None) -> Credential:
        """The credential this request sends as (never none: no open relay)."""
        if principal.credential is not None:
            if named not in (None, principal.credential):
                raise RequestError(404, "no such credential")
            named = principal.credential
        elif named is None:
            raise RequestError(
                400, "credential: an administrator's token must name the credential to send as"
            )
        cred, disabled = self.p.credential(named)
        if cred is None:
            raise RequestError(404, "no such credential")
        if disabled:
            raise RequestError(403, "credential disabled: contact the administrator")
        return cred

    async def send(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        try:
            parsed = parse_send(await self._body(request))
            cred = self._credential(principal, parsed.credential)
            if isinstance(parsed, RawSend):
                raw, mail_from, rcpts = (
                    crlf(_b64(parsed.data)),
                    parsed.mail_from,
                    list(dict.fromkeys(parsed.rcpt_to)),
                )
            else:
                self._check_features(parsed.features)
                # the email package takes ~10 ms for a message with an attachment: off the event loop
                raw = await asyncio.to_thread(parsed.compose)
                mail_from, rcpts = parsed.envelope_sender, parsed.recipients
        except RequestError as exc:
            return _error(exc.status, exc.message, **exc.headers)
        session = Session(
            peer=(request.remote or "-", 0), listener="api", helo=None, tls=request.secure, credential=cred
        )
        verdict, extra = await self._envelope(session, cred, raw, mail_from, rcpts)
        if verdict is None:
            queue_id = new_queue_id()
            outcome = await self.p.accept.accept(
                self._received(session, cred, queue_id, rcpts) + raw,
                mail_from,
                rcpts,
                session=session,
                credential=cred,
                queue_id=queue_id,
            )
            if outcome.status == "queued":
                if cred.messages_per_minute:
                    self.p.sent.add(cred.name)
                await self.p.accept.announce(outcome)  # before the 202: the log already has the message
                log.info(
                    "queue_id=%s accepted over HTTP from=<%s> rcpts=%d size=%d credential=%s token=%s",
                    outcome.queue_id,
                    mail_from,
                    len(outcome.recipients),
                    outcome.size,
                    cred.name,
                    principal.name,
                )
                return web.json_response(
                    {"queue_id": outcome.queue_id, "recipients": outcome.recipients},
                    status=202,
                    headers=NO_STORE,
                )
            if outcome.status in ("discarded", "handled"):
                return web.json_response(
                    {"queue_id": outcome.queue_id, "recipients": []}, status=202, headers=NO_STORE
                )
            verdict = (
                outcome.verdict if outcome.status == "refused" and refuses(outcome.verdict) else NOT_QUEUED
            )
            extra = {"phase": "data"}
        return self._refused(verdict, cred, session, mail_from, rcpts, extra)

    def _received(self, session: Session, cred: Credential, queue_id: str, rcpts: list[str]) -> bytes:
        """The ``Received:`` header SMTP mail gets from the ingress, for HTTP (``with HTTP``, RFC 5321 4.4)."""
        gw = self.p.gateway
        if gw is None or not gw.trace_header:
            return b""
        lines = [f"Received: from [{session.peer_ip}] (unknown [{session.peer_ip}])"]
        if gw.trace_credential:
            lines.append(f"\t(Authenticated sender: {cred.name})")
        lines.append(f"\tby {gw.hostname} (smtpgate) with {'HTTPS' if session.tls else 'HTTP'} id {queue_id}")
        when = email.utils.format_datetime(datetime.datetime.now(datetime.UTC))
        if len(rcpts) == 1 and _ADDR.match(rcpts[0]) and len(rcpts[0]) < 900:
            lines.append(f"\tfor <{rcpts[0]}>; {when}")
        else:
            lines[-1] += f"; {when}"
        return ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")

    def _check_features(self, features: dict[str, bool]) -> None:
        allowed = self.p.chain.features.header_switches
        for name in features:
            if name not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                raise RequestError(
                    400, f"features.{name}: not a switch a message may set (switches: {known})"
                )

    async def _envelope(
        self, session: Session, cred: Credential, raw: bytes, mail_from: str, rcpts: list[str]
    ) -> tuple[Verdict | None, dict[str, Any]]:
        """What SMTP checks between AUTH and DATA, in its order: a refusal and where, or ``(None, {})``."""
        limits = self.p.limits
        if b"\0" in raw:
            return NUL_CHARACTER, {"phase": "data"}
        if limits.bare_newline == "reject" and _bare_newline_in(raw):
            return BARE_NEWLINE, {"phase": "data"}
        size_limit = min(limits.max_message_size, cred.max_message_size or limits.max_message_size)
        if len(raw) > size_limit:
            return Reject(
                552, "5.3.4", f"Message size exceeds fixed maximum message size ({size_limit} bytes)"
            ), {"phase": "data"}
        max_rcpts = min(limits.max_recipients, cred.max_recipients or limits.max_recipients)
        if len(rcpts) > max_rcpts:
            return Reject(550, "5.5.3", f"Too many recipients (at most {max_rcpts} per message)"), {
                "phase": "rcpt"
            }
        features = self.p.chain.features.session(cred)
        verdict = await self.p.chain.run("on_auth", features=features, session=session, credential=cred)
        if refuses(verdict):
            return verdict, {"phase": "auth"}
        domain = mail_from.rpartition("@")[2]
        if (
            cred.allowed_sender_domains
            and mail_from
            and not _domain_matches(domain, cred.allowed_sender_domains)
        ):
            return NOT_OWNED, {"phase": "mail"}
        if cred.messages_per_minute and self.p.sent.count(cred.name) >= cred.messages_per_minute:
            return RATE_LIMITED, {"phase": "mail", "rate_limited": True}
        txn = Transaction(mail_from=mail_from)
        verdict = await self.p.chain.run(
            "on_mail_from", features=features, session=session, transaction=txn, address=mail_from
        )
        if refuses(verdict):
            return verdict, {"phase": "mail"}
        for rcpt in rcpts:
            if self.p.accept.inbound_handler(rcpt.rpartition("@")[2]) is not None:
                return OWN_DOMAIN, {"phase": "rcpt", "recipient": rcpt}
            verdict = await self.p.chain.run(
                "on_rcpt_to", features=features, session=session, transaction=txn, address=rcpt
            )
            if refuses(verdict):
                return verdict, {"phase": "rcpt", "recipient": rcpt}
            txn.rcpt_tos.append(rcpt)
        return None, {}

    def _refused(
        self,
        verdict: Verdict | None,
        cred: Credential,
        session: Session,
        mail_from: str,
        rcpts: list[str],
        extra: dict[str, Any],
    ) -> web.Response:
        """The HTTP answer for an SMTP refusal: 422 for a 5xx, 503 (429 for the rate limit) for a 4xx."""
        assert verdict is not None
        reply = verdict_json(verdict)
        if self.p.on_refusal is not None:
            self.p.on_refusal(
                reply=verdict.reply(),
                phase=extra.get("phase", "data"),
                client_ip=session.peer_ip,
                credential=cred.name,
                sender=mail_from,
                recipient=extra.get("recipient"),
                listener="api",
            )
        body: dict[str, Any] = {"error": reply["text"], "reply": reply}
        if extra.get("recipient"):
            body["recipient"] = extra["recipient"]
        log.info(
            "HTTP send refused: credential=%s from=<%s> rcpts=%d: %s",
            cred.name,
            mail_from,
            len(rcpts),
            verdict.reply(),
        )
        if isinstance(verdict, Reject):
            return web.json_response(body, status=422, headers=NO_STORE)
        status = 429 if extra.get("rate_limited") else 503
        return web.json_response(body, status=status, headers={**NO_STORE, "Retry-After": str(RETRY_AFTER)})


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={**NO_STORE, **headers})


def _obj(required: list[str], props: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": required,
        "additionalProperties": False,
        "properties": props,
        **extra,
    }


_ADDRESSES = {"type": "array", "items": {"type": "string"}}


def add_send_operation(doc: dict[str, Any]) -> None:
    """``POST /api/v1/messages`` and its schemas, added to the OpenAPI document (kept beside the handler)."""

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
    doc["paths"].setdefault("/api/v1/messages", {})["post"] = {
        "operationId": "sendMessage",
        "summary": "Send a message through the admission chain and spool, as the token's credential.",
        "description": "A raw RFC 5322 message (`data`, base64) with its envelope, or a composed message. "
        "A tenant's token sends as its credential; an administrator's must name `credential`.",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"oneOf": [ref("SendRaw"), ref("SendComposed")]}}},
        },
        "responses": {
            "202": answer("Queued", ref("SendQueued")),
            "400": answer("Not JSON, or a field is missing or invalid (the error names it).", ref("Error")),
            "401": answer("No valid bearer token.", ref("Error")),
            "403": answer("The credential is disabled.", ref("Error")),
            "404": answer("No such credential (or not this token's).", ref("Error")),
            "413": answer("Body over the message size limit in base64 plus 256 KiB.", ref("Error")),
            "422": answer("Refused by a 5xx verdict: do not retry as is.", ref("SendRefused")),
            "429": {
                **answer(
                    "The credential's rate limit (or too many failed tokens): retry after Retry-After.",
                    {"anyOf": [ref("SendRefused"), ref("Error")]},
                ),
                "headers": retry_after,
            },
            "503": {
                **answer("A 4xx verdict: retry after Retry-After.", ref("SendRefused")),
                "headers": retry_after,
            },
        },
    }
    schemas = doc["components"]["schemas"]
    schemas["SendRaw"] = _obj(
        ["mail_from", "rcpt_to", "data"],
        {
            "mail_from": {"type": "string", "description": 'Envelope sender (`""` for the null sender).'},
            "rcpt_to": {**_ADDRESSES, "minItems": 1},
            "data": {"type": "string", "contentEncoding": "base64"},
            "credential": {
                "type": "string",
                "description": "An administrator's token: the credential to send as.",
            },
        },
    )
    schemas["SendAttachment"] = _obj(
        ["filename", "content"],
        {
            "filename": {"type": "string"},
            "content_type": {"type": "string", "default": "application/octet-stream"},
            "content": {"type": "string", "contentEncoding": "base64"},
        },
    )
    schemas["SendComposed"] = _obj(
        ["from", "subject"],
        {
            "from": {"type": "string"},
            "to": _ADDRESSES,
            "cc": _ADDRESSES,
            "bcc": {**_ADDRESSES, "description": "Envelope recipients that appear in no header."},
            "subject": {"type": "string"},
            "text": {"type": "string"},
            "html": {"type": "string"},
            "attachments": {"type": "array", "items": ref("SendAttachment")},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "campaign_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            "letter_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            "features": {
                "type": "object",
                "additionalProperties": {"type": "boolean"},
                "description": "Per-message feature switches (trackopens, trackclicks...), as the "
                "X-SMTPeter-* headers set them; a credential's locks win.",
            },
            "credential": {"type": "string"},
        },
    )
    schemas["SendQueued"] = _obj(
        ["queue_id", "recipients"], {"queue_id": {"type": ["string", "null"]}, "recipients": _ADDRESSES}
    )
    schemas["SmtpReply"] = _obj(
        ["code", "enhanced", "text"],
        {
            "code": {"type": "integer", "minimum": 400, "maximum": 599},
            "enhanced": {"type": "string"},
            "text": {"type": "string"},
        },
    )
    schemas["SendRefused"] = _obj(
        ["error", "reply"],
        {
            "error": {"type": "string"},
            "reply": ref("SmtpReply"),
            "recipient": {"type": "string", "description": "The recipient a RCPT-time verdict refused."},
        },
    )
