"""Generate the golden ``.eml`` inputs in ``samples/`` and their ``README.md``.

This script is how every file in ``samples/`` was produced. It is deterministic:
dates, Message-IDs, MIME boundaries, the PDF and the PNG are fixed, so running it
again gives byte-identical files (commit the output, do not generate at test time).

    python samples/make_samples.py            # (re)write samples/*.eml and samples/README.md
    python samples/make_samples.py --check    # parse every sample and check its content
    python samples/make_samples.py --corpus /path/to/shared/corpus

Samples 02, 07 and 12 take their HTML (and, for 12, the plain text) from the shared
corpus (``shared/corpus``, found next to the repository by default). That HTML is
used unmodified: only its line endings become CRLF and it is quoted-printable encoded
for transport. Everything else is written here.

Every message is built by hand as bytes, not with ``email.generator``, so that the
wire format is exactly what a client would send: CRLF line endings everywhere
(headers, bodies, inside quoted-printable and base64), no line over 998 octets, and
real 8-bit octets where a part says ``8bit``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import email
import email.policy
import hashlib
import json
import re
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = HERE.parent.parent / "shared" / "corpus"
CRLF = "\r\n"
BASE_DATE = datetime(2026, 3, 10, 9, 0, 0, tzinfo=UTC)
MSK = timezone(timedelta(hours=3))
CET = timezone(timedelta(hours=1))

Header = tuple[str, str]


# --------------------------------------------------------------------------- wire helpers


@dataclass(frozen=True)
class Part:
    """One MIME entity: its own header fields and its already transfer-encoded body."""

    headers: list[Header]
    body: bytes


def lf(text: str) -> str:
    """Normalise any line endings to LF (the encoders turn them into CRLF)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def encode_body(data: bytes, cte: str, *, is_text: bool = True) -> bytes:
    """Transfer-encode ``data`` (LF line endings if text) with CRLF on the wire."""
    if cte == "quoted-printable":
        encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
        out = encoded.replace(b"\n", b"\r\n")
    elif cte == "base64":
        if is_text:  # RFC 2045: text is put in canonical CRLF form before base64
            data = data.replace(b"\n", b"\r\n")
        out = base64.encodebytes(data).replace(b"\n", b"\r\n")
    elif cte in ("7bit", "8bit"):
        out = data.replace(b"\n", b"\r\n")
    else:
        raise ValueError(cte)
    return out if out.endswith(b"\r\n") else out + b"\r\n"


def text_part(text: str, subtype: str, charset: str, cte: str, extra: list[Header] | None = None) -> Part:
    """A text/* leaf part."""
    data = lf(text).encode(charset)
    if cte == "7bit":
        data.decode("ascii")  # raises if the text is not 7-bit
    headers = [("Content-Type", f'text/{subtype}; charset="{charset}"'), ("Content-Transfer-Encoding", cte)]
    return Part(headers + (extra or []), encode_body(data, cte))


def attachment(data: bytes, mime_type: str, filename: str) -> Part:
    """A base64 attachment leaf part."""
    headers = [
        ("Content-Type", f'{mime_type}; name="{filename}"'),
        ("Content-Disposition", f'attachment; filename="{filename}"'),
        ("Content-Transfer-Encoding", "base64"),
    ]
    return Part(headers, encode_body(data, "base64", is_text=False))


def multipart(subtype: str, boundary: str, parts: list[Part], preamble: str = "") -> Part:
    """A multipart/* part whose children are separated by ``boundary``."""
    body = bytearray()
    if preamble:
        body += (preamble + CRLF + CRLF).encode("ascii")
    for part in parts:
        body += f"--{boundary}{CRLF}".encode("ascii")
        body += header_bytes(part.headers) + CRLF.encode("ascii") + part.body + CRLF.encode("ascii")
    body += f"--{boundary}--{CRLF}".encode("ascii")
    return Part([("Content-Type", f'multipart/{subtype};{CRLF} boundary="{boundary}"')], bytes(body))


def header_bytes(headers: list[Header]) -> bytes:
    """Header fields as wire bytes; values must be ASCII and already folded with CRLF + WSP."""
    lines = []
    for name, value in headers:
        if re.search(r"\r(?!\n[ \t])|(?<!\r)\n", value):
            raise ValueError(f"bad folding in {name}")
        lines.append(f"{name}: {value}{CRLF}")
    return "".join(lines).encode("ascii")


def message(headers: list[Header], root: Part) -> bytes:
    """A whole message: top-level headers, then the root part's headers, blank line, body."""
    return header_bytes(headers + root.headers) + CRLF.encode("ascii") + root.body


def encoded_words(text: str, charset: str, encoding: str = "B", limit: int = 64) -> str:
    """RFC 2047 encoded words of at most ``limit`` chars, folded with CRLF + space.

    The default keeps ``Subject: `` plus one word under 78 characters a line.
    """
    words: list[str] = []
    chunk = ""
    for ch in text:
        candidate = chunk + ch
        if len(_encoded_word(candidate, charset, encoding)) > limit:
            words.append(_encoded_word(chunk, charset, encoding))
            candidate = ch
        chunk = candidate
    if chunk:
        words.append(_encoded_word(chunk, charset, encoding))
    return f"{CRLF} ".join(words)


def mailbox(display: str, charset: str, address: str, encoding: str = "B") -> str:
    """``display <address>`` with the display name as ONE encoded word; folds before the address if needed.

    One word only: Python's address parser (and others) put a space between adjacent
    encoded words in a phrase, which would change the display name.
    """
    word = _encoded_word(display, charset, encoding)
    if len(word) > 75:
        raise ValueError(f"display name too long for one encoded word: {display!r}")
    sep = " " if len(f"From: {word} <{address}>") <= 78 else CRLF + " "
    return f"{word}{sep}<{address}>"


def _encoded_word(text: str, charset: str, encoding: str) -> str:
    raw = text.encode(charset)
    if encoding == "B":
        payload = base64.b64encode(raw).decode("ascii")
    else:
        payload = "".join(
            "_" if b == 0x20 else chr(b) if (chr(b).isalnum() and b < 128) else f"={b:02X}" for b in raw
        )
    return f"=?{charset}?{encoding}?{payload}?="


def date_of(n: int, tz: timezone = UTC) -> datetime:
    """The fixed Date of sample ``n``: 10 March 2026, 09:00 UTC plus ``n`` minutes."""
    return (BASE_DATE + timedelta(minutes=n)).astimezone(tz)


def msgid(n: int, slug: str, domain: str) -> str:
    """A fixed, realistic Message-ID for sample ``n``."""
    return f"<{date_of(n):%Y%m%d%H%M%S}.{n:02d}.{slug}@{domain}>"


def std_headers(
    n: int,
    *,
    sender: str,
    to: str,
    subject: str,
    domain: str,
    slug: str,
    tz: timezone = UTC,
    extra: list[Header] | None = None,
) -> list[Header]:
    """The usual header set of a well-formed message (MIME-Version last, Content-* follow)."""
    return [
        ("From", sender),
        ("To", to),
        ("Subject", subject),
        ("Date", format_datetime(date_of(n, tz))),
        ("Message-ID", msgid(n, slug, domain)),
        *(extra or []),
        ("MIME-Version", "1.0"),
    ]


PREAMBLE = "This is a multi-part message in MIME format."


# --------------------------------------------------------------------------- binary attachments


def minimal_pdf() -> bytes:
    """A small, valid one-page PDF 1.4 (correct xref offsets) showing an invoice summary."""
    lines = [
        (20, 770, "Acme Inc. - Invoice #12345"),
        (12, 740, "Billed to: Lee Munroe"),
        (12, 722, "Date: June 01 2014"),
        (12, 692, "Service 1   $ 19.99"),
        (12, 674, "Service 2   $ 9.99"),
        (12, 656, "Service 3   $ 4.00"),
        (12, 626, "Total       $ 33.98   PAID"),
    ]
    stream = "\n".join(f"BT /F1 {size} Tf 72 {y} Td ({text}) Tj ET" for size, y, text in lines).encode(
        "ascii"
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Title (Invoice 12345) /Producer (smtpgate samples) >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def tiny_png() -> bytes:
    """A valid 2x2 RGB PNG (blue/white checkerboard)."""
    blue, white = b"\x2b\x6c\xb0", b"\xff\xff\xff"
    raw = b"\x00" + blue + white + b"\x00" + white + blue  # filter byte 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """Read access to shared/corpus plus the licence rows of the files used."""

    root: Path
    used: dict[str, list[str]] = field(default_factory=dict)

    def html(self, name: str, sample: str) -> str:
        """An HTML (or .txt) template from corpus/html, unmodified."""
        self.used.setdefault(sample, []).append(name)
        return (self.root / "html" / name).read_text(encoding="utf-8")

    def eml_parts(self, name: str, sample: str, source: str) -> tuple[str, str]:
        """The decoded (text/plain, text/html) bodies of a corpus/eml message."""
        self.used.setdefault(sample, []).append(source)
        msg = email.message_from_bytes((self.root / "eml" / name).read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
        assert plain is not None and html is not None
        return lf(plain.get_content()), lf(html.get_content())

    def licence_rows(self) -> dict[str, str]:
        """file name -> its row in corpus/html/LICENSES.md."""
        rows = {}
        for line in (self.root / "html" / "LICENSES.md").read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 4 and cells[0].endswith((".html", ".txt")):
                rows[cells[0]] = line.strip()
        return rows


# --------------------------------------------------------------------------- the samples

ACME = '"Acme Inc." <billing@example.com>'
JANE = '"Jane Doe" <jane.doe@example.org>'


def s01_plain_text(c: Corpus) -> bytes:
    body = """Hi Jane,

Your order #83421 has shipped and should arrive on Thursday, 12 March.

Items:
  1 x Trail running shoes, size 39     USD 89.00
  2 x Merino socks                     USD 24.00
  Shipping                             USD  0.00
  Total                                USD 113.00

The parcel travels with Example Post, tracking number EP 0042 1337 77.
If anything is wrong with your order, just reply to this message.

Thanks for shopping with us,
The Example Outdoor team

--
Example Outdoor Ltd., 1 Main Street, Springfield
"""
    headers = std_headers(
        1,
        sender='"Example Outdoor" <orders@example.com>',
        to=JANE,
        subject="Your order #83421 has shipped",
        domain="mail.example.com",
        slug="shipping",
        extra=[("Reply-To", "support@example.com")],
    )
    return message(headers, text_part(body, "plain", "utf-8", "7bit"))


def s02_newsletter(c: Corpus) -> bytes:
    html = c.html("mailgun-action.html", "02-newsletter-alternative.eml")
    plain = """Please confirm your email address

Please confirm your email address by clicking the link below. We may need to
send you critical information about our service and it is important that we
have an accurate email address.

Confirm email address: http://www.mailgun.com/

-- The Mailgunners

Follow @Mail_Gun on Twitter: http://twitter.com/mail_gun
"""
    root = multipart(
        "alternative",
        "=_sample02_alt_6d1f0c",
        [
            text_part(plain, "plain", "utf-8", "quoted-printable"),
            text_part(html, "html", "utf-8", "quoted-printable"),
        ],
        PREAMBLE,
    )
    headers = std_headers(
        2,
        sender='"The Mailgunners" <newsletter@example.com>',
        to=JANE,
        subject="Please confirm your email address",
        domain="mail.example.com",
        slug="newsletter",
        extra=[
            (
                "List-Unsubscribe",
                "<https://example.com/unsubscribe/6d1f0c>,\r\n <mailto:unsubscribe@example.com?subject=6d1f0c>",
            ),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("Precedence", "bulk"),
        ],
    )
    return message(headers, root)


MSO_HTML = """<!doctype html>
<html lang="en" xmlns="http://www.w3.org/1999/xhtml" xmlns:v="urn:schemas-microsoft-com:vml" xmlns:o="urn:schemas-microsoft-com:office:office">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="X-UA-Compatible" content="IE=edge">
<meta name="x-apple-disable-message-reformatting">
<title>Webinar: Scaling transactional email</title>
<!--[if mso]>
<noscript>
<xml>
<o:OfficeDocumentSettings>
<o:AllowPNG/>
<o:PixelsPerInch>96</o:PixelsPerInch>
</o:OfficeDocumentSettings>
</xml>
</noscript>
<style>
table, td, div, h1, p { font-family: Arial, sans-serif; }
</style>
<![endif]-->
<style>
body { margin: 0; padding: 0; background-color: #eef2f7; }
.wrapper { width: 100%; background-color: #eef2f7; }
.card { max-width: 600px; margin: 0 auto; background-color: #ffffff; }
h1 { font-size: 26px; line-height: 32px; color: #1e3650; margin: 0 0 16px; }
p { font-size: 16px; line-height: 24px; color: #333333; margin: 0 0 16px; }
@media only screen and (max-width:600px) {
  .card { width: 100% !important; }
  h1 { font-size: 22px !important; line-height: 28px !important; }
}
</style>
</head>
<body>
<div class="wrapper">
<!--[if mso]>
<table role="presentation" align="center" width="600" cellpadding="0" cellspacing="0" border="0"><tr><td>
<![endif]-->
<table role="presentation" class="card" width="100%" cellpadding="0" cellspacing="0" border="0">
<tr>
<td style="padding:32px 32px 8px;">
<h1>Scaling transactional email &ndash; live webinar</h1>
<p>Join our engineers on Thursday, 19 March at 16:00 CET for a 45-minute session on queueing, retries and DKIM key rotation.</p>
</td>
</tr>
<tr>
<td align="center" style="padding:8px 32px 24px;">
<!--[if mso]>
<v:roundrect xmlns:v="urn:schemas-microsoft-com:vml" xmlns:w="urn:schemas-microsoft-com:office:word" href="https://events.example.com/webinars/scaling-email/register?utm_source=email&amp;utm_medium=vml" style="height:48px;v-text-anchor:middle;width:240px;" arcsize="12%" strokecolor="#1e3650" fillcolor="#2b6cb0">
<w:anchorlock/>
<center style="color:#ffffff;font-family:Arial,sans-serif;font-size:16px;font-weight:bold;">Save my seat</center>
</v:roundrect>
<![endif]-->
<!--[if !mso]><!-->
<a href="https://events.example.com/webinars/scaling-email/register?utm_source=email&amp;utm_medium=button" style="background-color:#2b6cb0;border:1px solid #1e3650;border-radius:6px;color:#ffffff;display:inline-block;font-family:Arial,sans-serif;font-size:16px;font-weight:bold;line-height:48px;text-align:center;text-decoration:none;width:240px;-webkit-text-size-adjust:none;">Save my seat</a>
<!--<![endif]-->
</td>
</tr>
<tr>
<td style="padding:0 32px 32px;">
<p>Can't make it? <a href="https://events.example.com/webinars/scaling-email/recording" style="color:#2b6cb0;">Get the recording</a> after the event.</p>
<p style="font-size:12px;line-height:18px;color:#777777;">Example Events, 1 Main Street, Springfield. <a href="https://events.example.com/preferences?u=c0ffee" style="color:#777777;">Email preferences</a></p>
</td>
</tr>
</table>
<!--[if mso]>
</td></tr></table>
<![endif]-->
</div>
</body>
</html>
"""


def s03_mso(c: Corpus) -> bytes:
    plain = """Scaling transactional email - live webinar

Join our engineers on Thursday, 19 March at 16:00 CET for a 45-minute session
on queueing, retries and DKIM key rotation.

Save my seat: https://events.example.com/webinars/scaling-email/register?utm_source=email&utm_medium=text

Can't make it? Get the recording after the event:
https://events.example.com/webinars/scaling-email/recording
"""
    root = multipart(
        "alternative",
        "=_sample03_alt_9b27e4",
        [
            text_part(plain, "plain", "utf-8", "quoted-printable"),
            text_part(MSO_HTML, "html", "utf-8", "quoted-printable"),
        ],
        PREAMBLE,
    )
    headers = std_headers(
        3,
        sender='"Example Events" <events@example.com>',
        to='"Sam Lee" <sam.lee@example.net>',
        subject="Webinar: Scaling transactional email (19 March)",
        domain="events.example.com",
        slug="webinar",
    )
    return message(headers, root)


RU_HTML = """<!DOCTYPE html>
<html lang="ru">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=windows-1251">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Весенняя распродажа</title>
</head>
<body style="margin:0;padding:0;background-color:#f4f4f4;">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" style="background-color:#f4f4f4;">
<tr>
<td align="center" style="padding:24px 12px;">
<table role="presentation" width="600" cellpadding="0" cellspacing="0" border="0" style="background-color:#ffffff;font-family:Arial,Helvetica,sans-serif;color:#222222;">
<tr>
<td style="padding:32px;">
<h1 style="font-size:24px;line-height:30px;margin:0 0 16px;">Здравствуйте, Анна!</h1>
<p style="font-size:16px;line-height:24px;margin:0 0 16px;">Весенняя распродажа в магазине «Пример» уже началась: скидки до 50% на обувь, одежду и аксессуары. Предложение действует до 15 марта — успейте выбрать лучшее.</p>
<p style="margin:0 0 24px;"><a href="https://shop.example.com/sale/spring?utm_source=email&amp;utm_campaign=vesna-2026" style="background-color:#d9232e;color:#ffffff;display:inline-block;padding:12px 24px;text-decoration:none;border-radius:4px;">Перейти в каталог</a></p>
<p style="font-size:16px;line-height:24px;margin:0 0 16px;">Ваш персональный промокод: <b>ВЕСНА-2026</b>. Заказ № 83421 ещё ждёт вас в корзине.</p>
<p style="font-size:14px;line-height:22px;margin:0 0 16px;"><a href="https://shop.example.com/cart">Открыть корзину</a> · <a href="https://shop.example.com/help/delivery">Условия доставки</a> · <a href="https://shop.example.com/stores?city=%D0%9C%D0%BE%D1%81%D0%BA%D0%B2%D0%B0">Магазины в Москве</a></p>
<p style="font-size:12px;line-height:18px;color:#888888;margin:0;">Вы получили это письмо, потому что подписались на новости магазина «Пример». <a href="https://shop.example.com/unsubscribe?u=a1b2c3" style="color:#888888;">Отписаться от рассылки</a></p>
</td>
</tr>
</table>
</td>
</tr>
</table>
</body>
</html>
"""

RU_TEXT = """Здравствуйте, Анна!

Весенняя распродажа в магазине «Пример» уже началась: скидки до 50% на обувь,
одежду и аксессуары. Предложение действует до 15 марта — успейте выбрать лучшее.

Перейти в каталог: https://shop.example.com/sale/spring?utm_source=email&utm_campaign=vesna-2026

Ваш персональный промокод: ВЕСНА-2026. Заказ № 83421 ещё ждёт вас в корзине.
Открыть корзину: https://shop.example.com/cart

Отписаться от рассылки: https://shop.example.com/unsubscribe?u=a1b2c3
"""
RU_SUBJECT = "Весенняя распродажа: скидки до 50% — только до 15 марта"


def s04_russian(c: Corpus) -> bytes:
    root = multipart(
        "alternative",
        "=_sample04_alt_41c2aa",
        [
            text_part(RU_TEXT, "plain", "windows-1251", "8bit"),
            text_part(RU_HTML, "html", "windows-1251", "8bit"),
        ],
        PREAMBLE,
    )
    headers = std_headers(
        4,
        sender=mailbox("Магазин «Пример»", "windows-1251", "news@shop.example.com"),
        to='"Anna Ivanova" <anna.ivanova@example.org>',
        subject=encoded_words(RU_SUBJECT, "windows-1251"),
        domain="shop.example.com",
        slug="vesna",
        tz=MSK,
        extra=[("X-Mailer", "Example Mailer 4.2")],
    )
    return message(headers, root)


ES_HTML = """<!DOCTYPE html>
<html lang="es">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>¿Olvidaste algo en tu carrito?</title>
</head>
<body style="margin:0;padding:0;background-color:#faf7f2;">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0">
<tr>
<td align="center" style="padding:24px;">
<table role="presentation" width="600" cellpadding="0" cellspacing="0" border="0" style="background-color:#ffffff;font-family:Georgia,serif;color:#2d2a26;">
<tr>
<td style="padding:32px;">
<h1 style="font-size:26px;margin:0 0 16px;">¡Hola, Begoña!</h1>
<p style="font-size:16px;line-height:25px;margin:0 0 16px;">¿Olvidaste algo? Tu carrito te está esperando: la mochila de montaña y las botas de piel que elegiste siguen disponibles, pero quedan pocas unidades en tu talla.</p>
<p style="margin:0 0 24px;"><a href="https://tienda.example.org/carrito?utm_source=email&amp;utm_medium=recordatorio&amp;utm_campaign=carrito-abandonado" style="background-color:#c0392b;color:#ffffff;padding:12px 28px;text-decoration:none;display:inline-block;">Volver a mi carrito</a></p>
<p style="font-size:16px;line-height:25px;margin:0 0 16px;">Año nuevo, diseño nuevo: descubre también nuestra colección de otoño-invierno con envío gratis en pedidos superiores a 50&nbsp;EUR.</p>
<p style="font-size:14px;line-height:22px;margin:0 0 16px;"><a href="https://tienda.example.org/coleccion/otono-invierno?orden=precio&amp;pagina=1">Ver la colección</a> · <a href="https://tienda.example.org/ayuda/envios">Información de envíos</a></p>
<p style="font-size:12px;line-height:18px;color:#8a847c;margin:0;">¿Necesitas ayuda? Escríbenos a <a href="mailto:hola@tienda.example.org">hola@tienda.example.org</a>. Si no quieres recibir más recordatorios, <a href="https://tienda.example.org/baja?u=9f8e7d">date de baja aquí</a>.</p>
</td>
</tr>
</table>
</td>
</tr>
</table>
</body>
</html>
"""


def s05_spanish(c: Corpus) -> bytes:
    headers = std_headers(
        5,
        sender=mailbox("Tienda Ejemplo España", "iso-8859-1", "hola@tienda.example.org", "Q"),
        to=mailbox("Begoña Ruiz", "iso-8859-1", "begona.ruiz@example.net", "Q"),
        subject=encoded_words("¿Olvidaste algo en tu carrito?", "iso-8859-1", "Q"),
        domain="tienda.example.org",
        slug="carrito",
        tz=CET,
    )
    return message(headers, text_part(ES_HTML, "html", "iso-8859-1", "quoted-printable"))


ENKOD_SUBJECT = "=?utf-8?B?0KLQtdGB0YIgU01UUCDlhbzQvNC+0LQ=?="

UTF8_HTML = """<!DOCTYPE html>
<html lang="ru">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Тест SMTP</title>
</head>
<body style="margin:0;padding:24px;background-color:#ffffff;font-family:Arial,sans-serif;color:#1a1a1a;">
<h1 style="font-size:22px;margin:0 0 16px;">Тестовое письмо через SMTP-шлюз</h1>
<p style="font-size:16px;line-height:24px;">Это письмо отправлено для проверки заголовков в кодировке RFC 2047: тема и имя отправителя закодированы, а текст письма — UTF-8 в 8-битной передаче.</p>
<p style="font-size:16px;line-height:24px;">Проверьте <a href="https://app.example.com/settings/smtp?tab=keys">настройки SMTP-ключей</a> и <a href="https://app.example.com/stats?period=today&amp;channel=smtp">статистику отправок</a>.</p>
<p style="font-size:13px;color:#666666;">Français: ça marche · Deutsch: Grüße · 日本語: テスト · emoji: ✅</p>
</body>
</html>
"""


def s06_rfc2047(c: Corpus) -> bytes:
    headers = std_headers(
        6,
        sender=mailbox("Служба уведомлений", "utf-8", "notify@example.com"),
        to='"Test Recipient" <test2@example.net>',
        subject=ENKOD_SUBJECT,
        domain="example.com",
        slug="rfc2047",
    )
    return message(headers, text_part(UTF8_HTML, "html", "utf-8", "8bit"))


def s07_attachments(c: Corpus) -> bytes:
    html = c.html("mailgun-billing.html", "07-attachment-pdf.eml")
    plain = """$33.98 Paid

Thanks for using Acme Inc.

Lee Munroe
Invoice #12345
June 01 2014

Service 1    $ 19.99
Service 2    $ 9.99
Service 3    $ 4.00
Total        $ 33.98

The invoice is attached as invoice.pdf, your usage chart as usage-chart.png.

View in browser: http://www.mailgun.com

Acme Inc. 123 Van Ness, San Francisco 94102
Questions? Email support@acme.inc
"""
    alt = multipart(
        "alternative",
        "=_sample07_alt_e3a901",
        [
            text_part(plain, "plain", "utf-8", "quoted-printable"),
            text_part(html, "html", "utf-8", "quoted-printable"),
        ],
    )
    root = multipart(
        "mixed",
        "=_sample07_mixed_e3a901",
        [
            alt,
            attachment(minimal_pdf(), "application/pdf", "invoice.pdf"),
            attachment(tiny_png(), "image/png", "usage-chart.png"),
        ],
        PREAMBLE,
    )
    headers = std_headers(
        7,
        sender=ACME,
        to='"Lee Munroe" <lee.munroe@example.org>',
        subject="Your Acme Inc. invoice #12345 ($33.98 paid)",
        domain="billing.example.com",
        slug="invoice",
    )
    return message(headers, root)


# The table rows are joined into one source line of 2000+ characters (long-line QP case).
QP_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Spring deals are here</title>
</head>
<body style="margin:0;padding:0;background-color:#f6f6f6;">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" style="background-color:#f6f6f6;"><tr><td align="center" style="padding:24px 12px;"><table role="presentation" width="600" cellpadding="0" cellspacing="0" border="0" style="background-color:#ffffff;border-radius:8px;font-family:'Helvetica Neue',Helvetica,Arial,sans-serif;color:#222222;"><tr><td style="padding:32px 32px 16px 32px;font-size:28px;line-height:34px;font-weight:bold;">Spring deals are here — up to 40% off</td></tr>
<tr><td style="padding:0 32px 16px 32px;font-size:16px;line-height:24px;">Our biggest sale of the season starts today. From lightweight rain shells to “everything-proof” trail shoes, every category has something marked down, and members get free returns for 60 days… so there’s no reason to wait. Prices from €19.</td></tr>
<tr><td align="center" style="padding:8px 32px 24px 32px;"><a href="https://www.example.com/deals/spring-2026?utm_source=newsletter&amp;utm_medium=email&amp;utm_campaign=spring-2026&amp;utm_content=hero-button&amp;segment=members-eu" style="background-color:#0b6e4f;border-radius:4px;color:#ffffff;display:inline-block;font-size:16px;font-weight:bold;line-height:44px;padding:0 28px;text-decoration:none;">Shop the sale</a></td></tr>
<tr><td style="padding:0 32px 24px 32px;font-size:15px;line-height:22px;"><a href="https://www.example.com/c/jackets?sort=price_asc&amp;filter=waterproof%3Dtrue&amp;size=M" style="color:#0b6e4f;">Waterproof jackets</a> &middot; <a href="https://www.example.com/c/shoes?sort=popular&amp;filter=terrain%3Dtrail&amp;page=2#grid" style="color:#0b6e4f;">Trail shoes</a> &middot; <a href="https://www.example.com/stores/find?lat=52.3676&amp;lng=4.9041&amp;radius=25km" style="color:#0b6e4f;">Find a store near you</a></td></tr>
<tr><td style="padding:16px 32px 32px 32px;font-size:12px;line-height:18px;color:#888888;">You are receiving this email because you signed up at example.com. <a href="https://www.example.com/email/preferences?uid=8f14e45f&amp;sig=Zm9vYmFyYmF6cXV4" style="color:#888888;">Update your preferences</a> or <a href="https://www.example.com/email/unsubscribe?uid=8f14e45f&amp;list=deals&amp;sig=cXV4YmF6YmFyZm9v" style="color:#888888;">unsubscribe</a>.</td></tr></table></td></tr></table>
</body>
</html>
""".replace("</tr>\n<tr>", "</tr><tr>")


def s08_qp_html(c: Corpus) -> bytes:
    headers = std_headers(
        8,
        sender='"Example Outdoor Deals" <deals@example.com>',
        to=JANE,
        subject="Spring deals are here - up to 40% off",
        domain="mail.example.com",
        slug="qp",
    )
    return message(headers, text_part(QP_HTML, "html", "utf-8", "quoted-printable"))


B64_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Your password was changed</title>
</head>
<body style="margin:0;padding:0;font-family:Arial,sans-serif;background-color:#ffffff;">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0">
<tr>
<td style="padding:24px;">
<h1 style="font-size:22px;color:#111111;">Your password was changed</h1>
<p style="font-size:15px;line-height:22px;color:#333333;">Hi Zoë, the password for your Example account was changed on 10 March 2026 at 09:09 (UTC) from a device in Zürich.</p>
<p style="font-size:15px;line-height:22px;color:#333333;">If this was you, there’s nothing more to do. If it wasn’t, <a href="https://accounts.example.com/recover?token=7c9e6679f3c4&amp;src=email">secure your account now</a> and review your <a href="https://accounts.example.com/security/devices">signed-in devices</a>.</p>
<p style="font-size:12px;line-height:18px;color:#888888;">Example Accounts · <a href="https://www.example.com/help/security">Security help</a></p>
</td>
</tr>
</table>
</body>
</html>
"""


def s09_base64_html(c: Corpus) -> bytes:
    headers = std_headers(
        9,
        sender='"Example Accounts" <no-reply@accounts.example.com>',
        to='"Zoe Keller" <zoe.keller@example.net>',
        subject="Your password was changed",
        domain="accounts.example.com",
        slug="b64",
    )
    return message(headers, text_part(B64_HTML, "html", "utf-8", "base64"))


SIMPLE_HTML = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>{title}</title>
</head>
<body>
<p>{text}</p>
<p><a href="{url}">{link}</a></p>
</body>
</html>
"""


def s10_missing_headers(c: Corpus) -> bytes:
    html = SIMPLE_HTML.format(
        title="Weekly report",
        text="Your weekly usage report is ready.",
        url="https://reports.example.com/weekly/2026-11",
        link="Open the report",
    )
    part = text_part(html, "html", "us-ascii", "7bit")
    # Only To, Subject, MIME-Version, Content-Type: no From, no Date, no Message-ID,
    # and no Content-Transfer-Encoding (7bit is the default).
    headers = [("To", JANE), ("Subject", "Weekly report"), ("MIME-Version", "1.0")]
    return message(headers, Part([h for h in part.headers if h[0] == "Content-Type"], part.body))


STYLE_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Your order is on its way</title>
<style type="text/css">
body { margin: 0; padding: 0; background-color: #f2f4f6; }
.container { width: 600px; margin: 0 auto; background-color: #ffffff; }
.content { padding: 24px 32px; font-family: Arial, Helvetica, sans-serif; color: #333333; }
h1 { font-size: 24px; line-height: 30px; color: #0f172a; margin: 0 0 12px; }
p { font-size: 16px; line-height: 24px; margin: 0 0 16px; }
.button { background-color: #2563eb; color: #ffffff; display: inline-block; padding: 12px 24px; border-radius: 4px; text-decoration: none; font-weight: bold; }
.muted { color: #94a3b8; font-size: 12px; }
@media only screen and (max-width:600px) {
  .container { width: 100% !important; }
  .content { padding: 16px !important; }
}
</style>
</head>
<body>
<table role="presentation" class="container" cellpadding="0" cellspacing="0" border="0">
<tr>
<td class="content">
<h1>Your order is on its way</h1>
<p>Good news: order #83422 left our warehouse this morning and is expected on Friday.</p>
<p><a class="button" href="https://track.example.net/parcel/EP00421338?lang=en">Track your parcel</a></p>
<p>Need to change the delivery address? <a href="https://www.example.net/orders/83422/edit">Edit your order</a>.</p>
<p class="muted">Example Store, 1 Main Street, Springfield</p>
</td>
</tr>
</table>
</body>
</html>
"""


def s11_smtpeter(c: Corpus) -> bytes:
    headers = std_headers(
        11,
        sender='"Example Store" <orders@example.net>',
        to='"Chris Park" <chris.park@example.org>',
        subject="Your order #83422 is on its way",
        domain="example.net",
        slug="smtpeter",
        extra=[
            ("X-SMTPeter-InlineCSS", "true"),
            ("X-SMTPeter-TrackClicks", "false"),
            ("X-SMTPeter-TrackOpens", "TRUE"),
            ("x-smtpeter-trackbounces", "false"),
        ],
    )
    return message(headers, text_part(STYLE_HTML, "html", "utf-8", "quoted-printable"))


def s12_campaign(c: Corpus) -> bytes:
    plain, html = c.eml_parts(
        "postmark-receipt.eml", "12-campaign-letter-ids.eml", "postmark-receipt.html+txt"
    )
    root = multipart(
        "alternative",
        "=_sample12_alt_83421a",
        [
            text_part(plain, "plain", "utf-8", "quoted-printable"),
            text_part(html, "html", "utf-8", "quoted-printable"),
        ],
        PREAMBLE,
    )
    headers = std_headers(
        12,
        sender='"Example Inc." <receipts@example.com>',
        to=JANE,
        subject="Your receipt for your purchase on 21 November 2025",
        domain="mail.example.com",
        slug="receipt",
        extra=[("X-Campaign-Id", "spring_sale-2026"), ("X-Letter-Id", "order-83421_a")],
    )
    return message(headers, root)


TRICKY_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>This week at Example Caf&eacute;</title>
</head>
<body style="margin:0;padding:0;background-color:#ffffff;">
<div class="preheader" style="display:none;font-size:1px;color:#ffffff;line-height:1px;max-height:0;max-width:0;opacity:0;overflow:hidden;mso-hide:all;">New arrivals, caf&eacute; cr&egrave;me recipes and your members&#8217; discount inside.&nbsp;&zwnj;&nbsp;&zwnj;&nbsp;&zwnj;&nbsp;&zwnj;</div>
<table id="top" role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" style="font-family:Arial,sans-serif;color:#222222;">
<tr>
<td style="padding:24px;">
<h1 style="font-size:24px;margin:0 0 16px;">This week at Example Caf&eacute;</h1>
<p>1. <a href="https://shop.example.com/p?id=1&amp;ref=news&amp;utm_source=email">Shop the new arrivals</a></p>
<p>2. <a href="https://example.com/search?q=caf%C3%A9%20cr%C3%A8me&amp;x=%2F">Search &ldquo;caf&eacute; cr&egrave;me&rdquo;</a></p>
<p>3. <a href="mailto:sales@example.com?subject=Hi&amp;body=Hello">Email our sales team</a></p>
<p>4. <a href="tel:+15551234567">Call us: +1&nbsp;555&nbsp;123&nbsp;4567</a></p>
<p>5. <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
<p>6. <a href="https://example.com/account/settings" data-no-track>Account settings (data-no-track)</a></p>
<p>7. <a href="https://example.com/privacy" clicktracking="off">Privacy policy (clicktracking=off)</a></p>
<p>8. <a href="https://example.com/terms" data-track-disabled>Terms of service (data-track-disabled)</a></p>
<p>9. <a href="https://example.com/help" ses:no-track>Help centre (ses:no-track)</a></p>
<p>10. Please confirm your address: <a href="https://example.com/verify">https://example.com/verify</a></p>
<p>11. <a href="http://legacy.example.org/old-page?ref=email">Our old blog (plain http)</a></p>
<p>12. <a HREF="https://example.com/Recipes/Cafe-Creme?Print=Yes">Printable recipe (uppercase HREF)</a></p>
<p>13. <a href='https://example.net/gift-cards?amount=25&amp;currency=EUR'>Gift cards (single-quoted)</a></p>
<p>We&#8217;re open 7&nbsp;days a week &mdash; see you soon at the caf&eacute;!</p>
<p style="font-size:12px;color:#888888;">&copy; 2026 Example Caf&eacute; Ltd. &middot; <a href="#top">Back to top</a></p>
</td>
</tr>
</table>
</body>
</html>
"""

TRICKY_TEXT = """This week at Example Café

1. Shop the new arrivals: https://shop.example.com/p?id=1&ref=news&utm_source=email
2. Search "café crème": https://example.com/search?q=caf%C3%A9%20cr%C3%A8me&x=%2F
3. Email our sales team: sales@example.com
4. Call us: +1 555 123 4567
5. Unsubscribe: {{ unsubscribe_url }}
10. Please confirm your address: https://example.com/verify
11. Our old blog: http://legacy.example.org/old-page?ref=email

We’re open 7 days a week - see you soon at the café!
© 2026 Example Café Ltd.
"""


def s13_tricky_links(c: Corpus) -> bytes:
    root = multipart(
        "alternative",
        "=_sample13_alt_5a5a5a",
        [
            text_part(TRICKY_TEXT, "plain", "utf-8", "quoted-printable"),
            text_part(TRICKY_HTML, "html", "utf-8", "quoted-printable"),
        ],
        PREAMBLE,
    )
    headers = std_headers(
        13,
        sender=mailbox("Example Café", "utf-8", "hello@example.com", "Q"),
        to=JANE,
        subject="This week at Example Cafe: new arrivals & recipes",
        domain="mail.example.com",
        slug="tricky",
    )
    return message(headers, root)


def s14_invalid_campaign(c: Corpus) -> bytes:
    html = SIMPLE_HTML.format(
        title="March update",
        text="Here is what changed in March.",
        url="https://www.example.com/changelog/2026-03",
        link="Read the changelog",
    )
    headers = std_headers(
        14,
        sender='"Example Product" <product@example.com>',
        to=JANE,
        subject="What changed in March",
        domain="mail.example.com",
        slug="badcampaign",
        extra=[("X-Campaign-Id", "bad id!")],
    )
    return message(headers, text_part(html, "html", "utf-8", "7bit"))


ENKOD_HTML = """<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd"><html xmlns="http://www.w3.org/1999/xhtml" xmlns:o="urn:schemas-microsoft-com:office:office" style="font-family:'open sans', 'helvetica neue', helvetica, arial, sans-serif">
<head>
<meta charset="UTF-8"/>
<meta content="width=device-width, initial-scale=1" name="viewport"/>
<meta name="x-apple-disable-message-reformatting"/>
<meta http-equiv="X-UA-Compatible" content="IE=edge"/>
<meta content="telephone=no" name="format-detection"/>
<title>title</title><!--[if (mso 16)]>
<style type="text/css">
a {text-decoration: none;}
</style>
<![endif]-->
</head>
<body>
message body
</body>
</html>
"""


def s15_seed_enkod(c: Corpus) -> bytes:
    # Header fields and their order exactly as in the seed; Message-ID added after Date.
    headers = [
        ("Date", "Thu, 29 Sep 2022 15:42:13 GMT"),
        ("Message-ID", "<20220929154213.enkod-seed@testmail.ru>"),
        ("From", "test@testmail.ru"),
        ("To", "test2@testmail.ru"),
        ("Subject", "subject"),
    ]
    part = text_part(ENKOD_HTML, "html", "utf-8", "quoted-printable")
    part_headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Transfer-Encoding", "quoted-printable"),
    ]
    return message(headers + part_headers + [("MIME-Version", "1.0")], Part([], part.body))


FRAGMENT_HTML = """<p style="font-family:Arial,sans-serif;font-size:15px;">Hi Sam,</p>
<p style="font-family:Arial,sans-serif;font-size:15px;">Your export of 1,204 contacts is ready. <a href="https://app.example.com/exports/20260310-0916.csv?download=1&amp;sig=a9f3">Download the CSV</a> (link valid for 7 days).</p>
<p style="font-family:Arial,sans-serif;font-size:15px;">&mdash; Example App</p>
"""


def s16_no_body(c: Corpus) -> bytes:
    plain = """Hi Sam,

Your export of 1,204 contacts is ready. Download the CSV (link valid for 7 days):
https://app.example.com/exports/20260310-0916.csv?download=1&sig=a9f3

-- Example App
"""
    root = multipart(
        "alternative",
        "=_sample16_alt_0916aa",
        [text_part(plain, "plain", "utf-8", "7bit"), text_part(FRAGMENT_HTML, "html", "utf-8", "7bit")],
        PREAMBLE,
    )
    headers = std_headers(
        16,
        sender='"Example App" <no-reply@app.example.com>',
        to='"Sam Lee" <sam.lee@example.net>',
        subject="Your contact export is ready",
        domain="app.example.com",
        slug="fragment",
    )
    return message(headers, root)


def s17_two_from(c: Corpus) -> bytes:
    html = SIMPLE_HTML.format(
        title="Invoice overdue",
        text="Invoice #12399 is 14 days overdue. Please settle it to avoid a service interruption.",
        url="https://billing.example.com/invoices/12399/pay",
        link="Pay invoice #12399",
    )
    headers = std_headers(
        17,
        sender='"Example Billing" <billing@example.com>',
        to=JANE,
        subject="Invoice #12399 is overdue",
        domain="billing.example.com",
        slug="twofrom",
    )
    headers.insert(1, ("From", '"Example Support" <support@example.net>'))
    return message(headers, text_part(html, "html", "utf-8", "7bit"))


SECTIONS = "world business technology science health sport culture travel food opinion".split()
WORDS = (
    "quiet bright northern rapid hidden green open urban coastal digital "
    "harbour market engine garden signal bridge archive summit festival circuit"
).split()


def large_links_html() -> tuple[str, list[str]]:
    """The 18-large-links HTML and its 200 distinct article URLs (in document order)."""
    urls: list[str] = []
    rows: list[str] = []
    for s, section in enumerate(SECTIONS):
        rows.append(
            f'<tr><td class="section" style="padding:24px 24px 8px;font-size:13px;letter-spacing:1px;'
            f'text-transform:uppercase;color:#9a3412;">{section.title()}</td></tr>'
        )
        for i in range(20):
            n = s * 20 + i + 1
            title = f"{WORDS[(n * 7) % 20].title()} {WORDS[(n * 3 + s) % 20]} report no. {n}"
            slug = title.lower().replace(" ", "-").replace(".", "")
            url = f"https://news.example.com/2026/03/{section}/{n:03d}-{slug}?utm_source=weekly&utm_medium=email&utm_campaign=weekly-2026-11"
            urls.append(url)
            href = url.replace("&", "&amp;")
            rows.append(
                f'<tr><td class="item" style="padding:6px 24px;font-size:15px;line-height:22px;">'
                f'<a href="{href}" style="color:#1d4ed8;text-decoration:none;">{title}</a></td></tr>'
            )
    html = (
        """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>The Example Weekly - issue 11</title>
<style>
body { margin: 0; padding: 0; background-color: #f5f5f4; }
.container { width: 600px; background-color: #ffffff; }
.section { font-family: Georgia, serif; font-weight: bold; }
.item a { font-family: Arial, sans-serif; }
@media only screen and (max-width:600px) {
  .container { width: 100% !important; }
  .item { padding: 6px 12px !important; font-size: 16px !important; }
}
</style>
</head>
<body>
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" style="background-color:#f5f5f4;">
<tr><td align="center" style="padding:24px 0;">
<table role="presentation" class="container" cellpadding="0" cellspacing="0" border="0">
<tr><td style="padding:24px;font-family:Georgia,serif;font-size:28px;color:#111827;">The Example Weekly &middot; issue 11</td></tr>
"""
        + "\n".join(rows)
        + """
<tr><td style="padding:24px;font-family:Arial,sans-serif;font-size:12px;color:#78716c;">You get The Example Weekly because you subscribed at news.example.com. Reply with &ldquo;unsubscribe&rdquo; to stop it.</td></tr>
</table>
</td></tr>
</table>
</body>
</html>
"""
    )
    return html, urls


def s18_large_links(c: Corpus) -> bytes:
    html, urls = large_links_html()
    plain = (
        "The Example Weekly - issue 11\n\n"
        + "\n".join(urls[:10])
        + "\n... and 190 more stories in the HTML version.\n"
    )
    root = multipart(
        "alternative",
        "=_sample18_alt_200200",
        [
            text_part(plain, "plain", "utf-8", "quoted-printable"),
            text_part(html, "html", "utf-8", "quoted-printable"),
        ],
        PREAMBLE,
    )
    headers = std_headers(
        18,
        sender='"The Example Weekly" <weekly@news.example.com>',
        to=JANE,
        subject="The Example Weekly - issue 11: 200 stories",
        domain="news.example.com",
        slug="weekly",
        extra=[
            ("List-Unsubscribe", "<mailto:unsubscribe@news.example.com?subject=weekly>"),
            ("X-Campaign-Id", "weekly-2026-11"),
        ],
    )
    return message(headers, root)


# --------------------------------------------------------------------------- vendor dialects (issue 15)

VENDOR_HTML = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title></head>
<body style="font-family: Arial, sans-serif;">
<p>{greeting}</p>
<p><a href="https://shop.example.com/account?ref={ref}">Your account</a> &middot;
<a href="https://shop.example.com/help?ref={ref}">Help</a></p>
</body>
</html>
"""


def vendor_message(n: int, slug: str, subject: str, greeting: str, extra: list[Header], to: str = JANE) -> bytes:
    """A small HTML message with two links, for one vendor dialect's headers."""
    html = VENDOR_HTML.format(title=subject, greeting=greeting, ref=slug)
    headers = std_headers(
        n, sender='"Example Shop" <shop@example.com>', to=to, subject=subject, domain="example.com", slug=slug,
        extra=extra,
    )
    return message(headers, text_part(html, "html", "utf-8", "quoted-printable"))


SMTPAPI = (
    '{"to": ["\\"Ann Lee\\" <ann.lee@example.org>", "bob.stone@example.net"], '
    '"sub": {"-name-": ["Ann", "Bob"], "-plan-": ["Pro", "Free"]}, '
    '"category": ["welcome", "onboarding"], "unique_args": {"user_id": "1001", "source": "signup"}, '
    '"filters": {"clicktrack": {"settings": {"enable": 0}}, "opentrack": {"settings": {"enable": 1}}}}'
)


def s19_sendgrid(c: Corpus) -> bytes:
    # SendGrid folds long X-SMTPAPI values; so do we (continuation lines start with a space).
    folded = SMTPAPI.replace(', "sub"', ',\r\n "sub"').replace(', "category"', ',\r\n "category"').replace(
        ', "filters"', ',\r\n "filters"'
    )
    return vendor_message(
        19, "sendgrid", "Welcome, -name-: your -plan- plan", "Hello -name-, thanks for choosing -plan-.",
        [("X-SMTPAPI", folded)], to='"Undisclosed" <list@example.com>',
    )


def s20_mailgun(c: Corpus) -> bytes:
    return vendor_message(
        20, "mailgun", "Your receipt for March", "Thanks for your payment.",
        [
            ("X-Mailgun-Tag", "receipts"),
            ("X-Mailgun-Tag", "billing-march"),
            ("X-Mailgun-Track-Clicks", "no"),
            ("X-Mailgun-Track-Opens", "yes"),
            ("X-Mailgun-Variables", '{"order_id": "83423", "plan": "pro"}'),
            ("X-Mailgun-Require-TLS", "yes"),
        ],
    )


def s21_postmark(c: Corpus) -> bytes:
    return vendor_message(
        21, "postmark", "Reset your password", "Someone asked to reset your password.",
        [
            ("X-PM-Tag", "password-reset"),
            ("X-PM-Metadata-user-id", "77"),
            ("X-PM-Metadata-request", "r-5521"),
            ("X-PM-TrackOpens", "false"),
            ("X-PM-TrackLinks", "HtmlOnly"),
            ("X-PM-Message-Stream", "outbound"),
        ],
    )


def s22_ses(c: Corpus) -> bytes:
    return vendor_message(
        22, "ses", "Spring picks for you", "Our spring selection is here.",
        [("X-SES-CONFIGURATION-SET", "marketing"), ("X-SES-MESSAGE-TAGS", "campaign=spring, team=growth")],
    )


def s23_mailerq(c: Corpus) -> bytes:
    return vendor_message(
        23, "mailerq", "Your weekly digest", "Five things happened this week.",
        [
            ("x-mq-tag", "digest"),
            ("x-mq-inlinecss", "false"),
            ("x-mq-maxdelivertime", "2036-01-01 00:00:00"),
            ("x-mq-order-id", "A-77"),
        ],
    )


# --------------------------------------------------------------------------- registry + README


ENKOD_LITERAL = """Date: Thu, 29 Sep 2022 15:42:13 GMT
From: test@testmail.ru
To: test2@testmail.ru
Subject: subject
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable
MIME-Version: 1.0
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd"><html xmlns="http://www.w3.org/1999/xhtml" xmlns:o="urn:schemas-microsoft-com:office:office" style="font-family:'open sans', 'helvetica neue', helvetica, arial, sans-serif">
<head>
<meta charset="UTF-8"/>
<meta content="width=device-width, initial-scale=1" name="viewport"/>
<meta name="x-apple-disable-message-reformatting"/>
<meta http-equiv="X-UA-Compatible" content="IE=edge"/>
<meta content="telephone=no" name="format-detection"/>
<title>title</title><!--[if (mso 16)]>
<style type="text/css">
a {text-decoration: none;}
</head>
<html>
<body>
message body
</body>
</html>
"""


def s24_enkod_literal(c: Corpus) -> bytes:
    # The enKod seed's message exactly as documented (only CRLF line endings): no empty line
    # between the header and the HTML, no Message-ID, an unterminated conditional comment.
    return ENKOD_LITERAL.replace("\n", "\r\n").encode("utf-8")


RAW_AMP_URLS = [
    # (as written in the href, what a browser requests)
    ("https://shop.example.com/p?id=1&region=eu&currency=USD&notify=1&lang=en",
     "https://shop.example.com/p?id=1&region=eu&currency=USD&notify=1&lang=en"),
    ("https://shop.example.com/q?copy=&copy;&copy=1&lt;", "https://shop.example.com/q?copy=\u00a9&copy=1<"),
    ("https://example.com/s?a=1&para=2&sect=3&times=4&not=5&amp=6", "https://example.com/s?a=1&para=2&sect=3&times=4&not=5&amp=6"),
    ("https://example.com/t?x=1&amp;y=2&reg;&notit;&not;&lang=de", "https://example.com/t?x=1&y=2\u00ae&notit;\u00ac&lang=de"),
    ("https://example.com/u?a=&copy b=&#65;&#x42;c&amp", "https://example.com/u?a=\u00a9 b=ABc&"),
]

RAW_AMP_HTML = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>Raw ampersands</title>
</head>
<body>
<p>Hand-written links with raw <code>&amp;</code> before legacy entity names.</p>
{links}
</body>
</html>
"""


def s25_raw_ampersand_links(c: Corpus) -> bytes:
    links = "\n".join(f'<p><a href="{raw}">Link {i}</a></p>' for i, (raw, _) in enumerate(RAW_AMP_URLS, 1))
    headers = std_headers(
        25,
        sender='"Example Shop" <shop@example.com>',
        to=JANE,
        subject="Links with raw ampersands",
        domain="mail.example.com",
        slug="rawamp",
    )
    return message(headers, text_part(RAW_AMP_HTML.format(links=links), "html", "utf-8", "7bit"))


@dataclass(frozen=True)
class Sample:
    """One golden file: how to build it and what the README says about it."""

    name: str
    build: Callable[[Corpus], bytes]
    exercises: str
    expected: str
    rejected: bool = False


SAMPLES = [
    Sample(
        "01-plain-text.eml",
        s01_plain_text,
        'single-part `text/plain; charset="utf-8"`, 7bit, no HTML at all',
        "**ACCEPTED** (250). No HTML: nothing to inline, no link rewriting, no open pixel; body octets delivered unchanged; DKIM-signed.",
    ),
    Sample(
        "02-newsletter-alternative.eml",
        s02_newsletter,
        "`multipart/alternative` (text/plain + text/html, both QP); corpus HTML `mailgun-action.html` "
        "with `<!DOCTYPE html>`, `xmlns:v`/`xmlns:o`, `<!--[if mso]>` blocks, a `<style>` block of normal rules plus "
        "`@media only screen and (max-width:599px){... !important}` and `@media (prefers-color-scheme:dark)`; "
        "2 http links; List-Unsubscribe headers",
        "**ACCEPTED**. Both links tracked, open pixel before `</body>`; with inlining on, normal rules inlined, "
        "`@media` rules (with `!important`) kept in a `<style>` block; `<!DOCTYPE html>` and the conditional comments "
        "kept; text/plain part unchanged.",
    ),
    Sample(
        "03-mso-conditional.eml",
        s03_mso,
        "lower-case `<!doctype html>`, `<html xmlns:v xmlns:o>`, `<!--[if mso]>` (OfficeDocumentSettings, ghost table, "
        "VML `v:roundrect` button with an `href`), `<!--[if !mso]><!-->...<!--<![endif]-->` around the real `<a>` button, "
        "`@media (max-width:600px)` with `!important`",
        "**ACCEPTED**. Doctype and every conditional comment survive byte-for-byte (no comment stripped, no "
        "`<![endif]-->` mangled, VML untouched: it is comment text); all 3 `<a>` links tracked (the button in the "
        "`!mso` branch, the recording link, the preferences link); pixel before `</body>`.",
    ),
    Sample(
        "04-russian-windows-1251.eml",
        s04_russian,
        "Russian text/plain + text/html in `windows-1251`, **8bit** (real cp1251 octets), `<meta ... charset=windows-1251>`, "
        "Subject and From display name as `=?windows-1251?B?...?=`, links incl. a percent-encoded Cyrillic query",
        "**ACCEPTED**. Cyrillic text intact after rewriting (the HTML is re-encoded in the charset it declares, "
        "no mojibake, no `&#...;` needed); Subject/From untouched; 5 https links tracked (the percent-encoded URL "
        "recorded exactly); lines stay <= 998 octets (or the part is re-encoded QP/base64).",
    ),
    Sample(
        "05-spanish-iso-8859-1.eml",
        s05_spanish,
        "single-part Spanish text/html in `iso-8859-1`, quoted-printable (`=F1`, `=E1`, `=BF`...), Q-encoded Subject/From/To, "
        "links with `&amp;` query strings and a `mailto:`",
        "**ACCEPTED**. Accents (ñ, á, ¿, ¡) intact in the declared charset; 4 https links tracked, `mailto:` not tracked; "
        "pixel before `</body>`.",
    ),
    Sample(
        "06-rfc2047-subject.eml",
        s06_rfc2047,
        "the enKod seed's Subject `=?utf-8?B?0KLQtdGB0YIgU01UUCDlhbzQvNC+0LQ=?=` (decodes to `Тест SMTP 兼мод`, sic) "
        "and a B-encoded utf-8 From display name; utf-8 text/html sent **8bit** (Cyrillic, CJK, emoji)",
        "**ACCEPTED**. Subject header delivered as sent (still the same encoded word, or an equivalent encoding of the "
        "same text); From parsed to `notify@example.com`; 2 links tracked; non-ASCII body intact.",
    ),
    Sample(
        "07-attachment-pdf.eml",
        s07_attachments,
        "`multipart/mixed` = `multipart/alternative` (text + corpus HTML `mailgun-billing.html`, QP) + `invoice.pdf` "
        "(valid 1-page PDF) + `usage-chart.png` (valid 2x2 PNG), both base64 76-char lines, `Content-Disposition: attachment`",
        "**ACCEPTED**. HTML rewritten (http link tracked, `mailto:` not), pixel added; **both attachments "
        "byte-identical after processing** (see SHA-256 below); MIME structure (3 parts in mixed, 2 in alternative) kept.",
    ),
    Sample(
        "08-quoted-printable-html.eml",
        s08_qp_html,
        "single-part utf-8 text/html, quoted-printable with soft line breaks (some inside URLs/attributes), `=3D` in "
        "attributes, 1000+ character source lines, `=E2=80=94`-style multibyte characters, links with long query strings, "
        "`%3D` escapes and a `#fragment`",
        "**ACCEPTED**. Decoded before parsing, so the soft breaks never leak into URLs; 6 links tracked with their exact "
        "query strings (`&amp;` decoded to `&`, `%3D` kept); re-encoded output is valid QP (or base64) with CRLF lines <= 76.",
    ),
    Sample(
        "09-base64-html.eml",
        s09_base64_html,
        "single-part utf-8 text/html, **base64** (76-char lines), curly quotes / umlauts, `</body>`",
        "**ACCEPTED**. Decoded, 3 links tracked, pixel before `</body>`, re-encoded (base64 or QP) with the same charset; "
        "text intact.",
    ),
    Sample(
        "10-missing-headers.eml",
        s10_missing_headers,
        "only `To`, `Subject`, `MIME-Version`, `Content-Type` (text/html): **no From, no Date, no Message-ID**",
        "**REJECTED** at end of DATA when there is no envelope sender to take a From from (`smtpgate replay`, or "
        "header_validation `strict = true`): `550 5.6.0 Message has no From: header`. Nothing queued. Over SMTP on "
        "defaults the From is the envelope sender, as in Postfix's cleanup.",
        rejected=True,
    ),
    Sample(
        "11-smtpeter-control-headers.eml",
        s11_smtpeter,
        "`X-SMTPeter-InlineCSS: true`, `X-SMTPeter-TrackClicks: false`, `X-SMTPeter-TrackOpens: TRUE`, "
        "`x-smtpeter-trackbounces: false` (mixed-case names and values) and a `<style>` block with class, element and "
        "`@media` rules; single-part utf-8 QP HTML",
        "**ACCEPTED**. Header names and values matched case-insensitively: CSS inlined (e.g. `.button` rules end up in the "
        '`<a class="button" style=...>`; the `@media` block stays in `<style>`), **links not rewritten**, **open pixel '
        "added**, bounce tracking off (envelope sender not rewritten). The X-SMTPeter-* headers are consumed and not "
        "delivered.",
    ),
    Sample(
        "12-campaign-letter-ids.eml",
        s12_campaign,
        "`X-Campaign-Id: spring_sale-2026`, `X-Letter-Id: order-83421_a` (both valid `[A-Za-z0-9_-]+`); "
        "`multipart/alternative` receipt from the corpus (Postmark receipt, placeholders filled as in `eml/postmark-receipt.eml`)",
        "**ACCEPTED**. Message stored/reported with campaign `spring_sale-2026` and letter id `order-83421_a` (returned "
        "in webhooks/events); 7 links tracked (5 distinct URLs), pixel added.",
    ),
    Sample(
        "13-tricky-links.eml",
        s13_tricky_links,
        "`&amp;` in query strings; percent escapes `caf%C3%A9%20cr%C3%A8me&amp;x=%2F`; `mailto:` with `?subject=&amp;body=`; "
        '`tel:`; `#top`; `{{ unsubscribe_url }}`; opt-outs `data-no-track`, `clicktracking="off"`, `data-track-disabled`, '
        "`ses:no-track`; a link whose text is its URL; `http://`; upper-case `HREF`; single-quoted `href`; entities "
        "`&nbsp; &copy; &eacute; &#8217;`; hidden preheader `<div>` first in `<body>`; text/plain alternative with bare URLs",
        "**ACCEPTED**. Tracked (5): links 1, 2, 11, 12, 13 — the recorded targets are the real URLs "
        "(`https://shop.example.com/p?id=1&ref=news&utm_source=email`, percent escapes kept exactly, not double-encoded, "
        "`http://` kept). Not tracked, left byte-identical: `mailto:`, `tel:`, `#top`, `{{ unsubscribe_url }}`, the 4 opt-out "
        "links and the URL-as-text link (`https://example.com/verify`). Entities render the same (no `&amp;nbsp;`); the "
        "preheader stays the first element of `<body>`; the text/plain part (bare URLs) is not modified.",
    ),
    Sample(
        "14-invalid-campaign-id.eml",
        s14_invalid_campaign,
        "`X-Campaign-Id: bad id!` (space and `!` are outside `[A-Za-z0-9_-]`); otherwise a complete message",
        "**REJECTED** at end of DATA: `550 5.6.0 ...` with a text naming `X-Campaign-Id`. Nothing queued.",
        rejected=True,
    ),
    Sample(
        "15-seed-enkod.eml",
        s15_seed_enkod,
        "the enKod seed message (headers and order as in the seed: no display name, `Date: ... GMT`, utf-8 QP text/html "
        "with the XHTML 1.0 Transitional doctype and `<!--[if (mso 16)]>`), made well-formed: `</style>`, `<![endif]-->` "
        "and `</head>` added, the stray second `<html>` dropped, blank line after the header, `Message-ID` added",
        "**ACCEPTED**. No links, so nothing to track; open pixel before `</body>`; XHTML doctype and the `(mso 16)` "
        "conditional comment kept.",
    ),
    Sample(
        "16-no-body-tag.eml",
        s16_no_body,
        "`multipart/alternative` whose text/html part is a bare fragment (`<p>`s, no `<html>`, `<head>` or `<body>`)",
        "**ACCEPTED**. The link is tracked; the open pixel is appended **at the very end of the HTML part** (no `</body>` "
        "to put it before); the fragment is not wrapped in `<html><body>`.",
    ),
    Sample(
        "17-two-from-headers.eml",
        s17_two_from,
        "two `From:` header fields (`billing@example.com` and `support@example.net`); RFC 5322 allows exactly one",
        "**REJECTED** at end of DATA with a `550 5.6.0` reply saying the message has more than one From: header. "
        "Nothing queued.",
        rejected=True,
    ),
    Sample(
        "18-large-links.eml",
        s18_large_links,
        "newsletter (`<!DOCTYPE html>`, `<style>` with `@media only screen and (max-width:600px)` and `!important`) with "
        "**exactly 200 `<a href>` links, all distinct https URLs** (10 sections x 20 stories, `&amp;` query strings); "
        "`X-Campaign-Id: weekly-2026-11`; QP",
        "**ACCEPTED**. Used for the 200-links x 3-recipients test: every one of the 200 links tracked for each "
        "recipient (600 tracked links, each recipient's copy with its own ids), pixel per recipient; no other `<a>` in the HTML.",
    ),    Sample(
        "19-sendgrid-smtpapi.eml",
        s19_sendgrid,
        "SendGrid `X-SMTPAPI` (folded JSON): `to` with 2 addresses, `sub` (`-name-`, `-plan-`), `category`, "
        "`unique_args`, `filters` clicktrack off / opentrack on; To: is a placeholder address",
        "**ACCEPTED**. Envelope recipients replaced by the `to` list (2 copies: ann.lee@example.org, "
        "bob.stone@example.net), each copy's To: and substitutions its own (`Welcome, Ann: your Pro plan`); tags "
        "`welcome`, `onboarding`, campaign `welcome`, metadata `user_id`, `source`; links not tracked, pixel added; "
        "no `X-SMTPAPI` in the output.",
    ),
    Sample(
        "20-mailgun-headers.eml",
        s20_mailgun,
        "Mailgun: two `X-Mailgun-Tag`, `X-Mailgun-Track-Clicks: no`, `X-Mailgun-Track-Opens: yes`, "
        "`X-Mailgun-Variables` (JSON), `X-Mailgun-Require-TLS: yes`",
        "**ACCEPTED**. Tags `receipts`, `billing-march` (campaign `receipts`), metadata `order_id`, `plan`; links not "
        "tracked, pixel added; no `X-Mailgun-*` in the output.",
    ),
    Sample(
        "21-postmark-headers.eml",
        s21_postmark,
        "Postmark: `X-PM-Tag`, two `X-PM-Metadata-*`, `X-PM-TrackOpens: false`, `X-PM-TrackLinks: HtmlOnly`, "
        "`X-PM-Message-Stream: outbound`",
        "**ACCEPTED**. Tag `password-reset` (the campaign), metadata `user-id`, `request`; links tracked, no pixel; "
        "no `X-PM-*` in the output.",
    ),
    Sample(
        "22-ses-headers.eml",
        s22_ses,
        "Amazon SES: `X-SES-CONFIGURATION-SET: marketing`, `X-SES-MESSAGE-TAGS: campaign=spring, team=growth`",
        "**ACCEPTED**. Metadata `ses:configuration-set`, `campaign`, `team`; tracking as configured; no `X-SES-*` "
        "in the output.",
    ),
    Sample(
        "23-mailerq-headers.eml",
        s23_mailerq,
        "MailerQ: `x-mq-tag`, `x-mq-inlinecss: false`, `x-mq-maxdelivertime` (UTC), a custom `x-mq-order-id`",
        "**ACCEPTED**. Tag `digest` (the campaign), metadata `order-id`, delivery deadline 2036-01-01 UTC, CSS not "
        "inlined; no `x-mq-*` in the output.",
    ),
    Sample(
        "24-enkod-literal.eml",
        s24_enkod_literal,
        "enKod's example message **exactly as documented**: no empty line between `MIME-Version: 1.0` and the HTML, "
        "no Message-ID, an unterminated `<!--[if (mso 16)]>` comment, a second `<html>`",
        "**ACCEPTED**. As in Postfix's cleanup, the first line that is not a header field (`<!DOCTYPE ...`) starts the "
        "body; the empty line is put in on the way out; Message-ID added; the HTML relayed as written (the pixel at the "
        "end: the unterminated comment hides `</body>` from browsers too).",
    ),
    Sample(
        "25-raw-ampersand-links.eml",
        s25_raw_ampersand_links,
        "hand-written hrefs with raw `&` before legacy entity names (`&region=`, `&currency=`, `&notify=`, `&copy=`, "
        "`&para=`, `&not=`...), plus real references with and without `;` (`&copy;`, `&reg;`, `&#65;`, `&amp`)",
        "**ACCEPTED**. Every link tracked and redirecting to exactly what a browser requests for it (HTML5 rule: a "
        "legacy name without `;` followed by `=` or a letter/digit is not a reference in an attribute), e.g. "
        "`https://shop.example.com/p?id=1&region=eu&currency=USD&notify=1&lang=en` unchanged.",
    ),
]


def readme(corpus: Corpus) -> str:
    """The samples/README.md text (written by this script, do not edit by hand)."""
    rows = "\n".join(f"| `{s.name}` | {s.exercises} | {s.expected} |" for s in SAMPLES)
    accepted = ", ".join(s.name[:2] for s in SAMPLES if not s.rejected)
    rejected = ", ".join(s.name[:2] for s in SAMPLES if s.rejected)
    pdf, png = minimal_pdf(), tiny_png()
    licence_rows = corpus.licence_rows()
    header_row = (
        "| file | source repository | path in repository (commit) | license |\n| --- | --- | --- | --- |"
    )
    licences = []
    for sample, sources in corpus.used.items():
        names = []
        for source in sources:
            if source.endswith("+txt"):
                stem = source.removesuffix(".html+txt")
                names += [f"{stem}.html", f"{stem}.txt"]
            else:
                names.append(source)
        licences.append(f"`{sample}` uses " + ", ".join(f"`{n}`" for n in names) + ":\n\n" + header_row)
        licences[-1] += "\n" + "\n".join(licence_rows[n] for n in names)
    licence_text = "\n\n".join(licences)
    return f"""# Golden sample messages

Realistic RFC 5322 messages, exactly as a client would send them after `DATA`, for the
gateway's end-to-end tests and benchmarks. They are generated by
[`make_samples.py`](make_samples.py), deterministically (fixed dates, Message-IDs,
boundaries and attachment bytes): edit the script, not the `.eml` files, then run

```
python samples/make_samples.py           # rewrites samples/*.eml and this README
python samples/make_samples.py --check   # parses every file and checks its content
```

Conventions: every line ends in CRLF (headers, bodies, and inside quoted-printable and
base64), no line is longer than 998 octets, bodies declared `8bit` hold real 8-bit
octets, and there is no SMTP dot-stuffing (the client adds it when sending). Addresses
use example.com / example.org / example.net, except `15-seed-enkod.eml`, which keeps the
seed's own `testmail.ru` addresses. Every message has From (with a display name), To,
Subject, Date, Message-ID, MIME-Version and Content-Type unless the sample is about a
missing or broken header (10, 15, 17).

**Accepted** (250, then rewritten, DKIM-signed and delivered): {accepted}.
**Rejected** at the end of DATA (5xx, nothing queued): {rejected}.

| file | what it exercises | expected behaviour |
| --- | --- | --- |
{rows}

"Tracked" means the `href` is replaced by a click-tracking URL that redirects to the
original target; "pixel" means one open-tracking `<img>` per recipient. Where a sample
has two or more recipients each copy gets its own tracking ids.

## Attachments of 07-attachment-pdf.eml

Tests check that these decode to exactly the same bytes after the gateway has processed
the message:

| filename | type | bytes | SHA-256 |
| --- | --- | --- | --- |
| invoice.pdf | application/pdf | {len(pdf)} | `{hashlib.sha256(pdf).hexdigest()}` |
| usage-chart.png | image/png | {len(png)} | `{hashlib.sha256(png).hexdigest()}` |

## Notes and assumptions

- No corpus template has both `<!DOCTYPE html>` and a `max-width:600px` media query.
  `02` uses `mailgun-action.html` unmodified (corpus HTML is kept intact), so its
  breakpoint is `@media only screen and (max-width:599px)` and it has 2 links. The literal
  `@media only screen and (max-width:600px) {{ ... !important }}` case is in `18` (200
  links), `03` and `11`.
- Some expected behaviours above are design decisions that no seed document fixes; if the
  gateway's spec decides otherwise, change this table (in `make_samples.py`): X-SMTPeter-*
  headers are removed before delivery (`11`); a link whose visible text is its own URL is
  not tracked (`13`); text/plain parts are never rewritten (`01`, `13`, and the text
  alternatives); a bare fragment is not wrapped in `<html><body>` (`16`); the VML `href`
  inside `<!--[if mso]>` is comment text and is not tracked (`03`).
- `06`: the seed's Subject really decodes to `Тест SMTP 兼мод` (a CJK character in the
  middle); it is kept byte for byte.
- Encoded display names are one RFC 2047 word each: Python's address parser (and
  others) put a space between adjacent encoded words in a phrase.
- `15` keeps the seed's `testmail.ru` addresses and its From without display name, so
  the seed dialogue (`MAIL FROM:test@testmail.ru`) can be replayed as is.

## Licences

Three samples carry HTML (and for 12 plain text) from `shared/corpus`, unmodified apart
from CRLF line endings and quoted-printable transfer encoding. For 12 the text is taken
from `corpus/eml/postmark-receipt.eml`, where the corpus generator had filled the
template placeholders (such as `{{{{name}}}}`) with sample values; the templates'
licences apply unchanged. The rows below are copied from `corpus/html/LICENSES.md`.

{licence_text}

All other samples, the PDF and the PNG were written for this project (same licence as
smtpgate).
"""


# --------------------------------------------------------------------------- checks


def _parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _html(msg: EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None, "no html part"
    return part.get_content()


HREF_RE = re.compile(r"""<a\s[^>]*?href\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)


def _hrefs(html: str) -> list[str]:
    """The href values of all <a> tags (double- or single-quoted), as written."""
    return [a or b for a, b in HREF_RE.findall(html)]


def check_wire(name: str, data: bytes) -> None:
    """Line endings, line lengths and parse defects."""
    assert re.search(rb"(?<!\r)\n", data) is None, f"{name}: bare LF"
    assert re.search(rb"\r(?!\n)", data) is None, f"{name}: bare CR"
    assert data.endswith(b"\r\n"), f"{name}: no final CRLF"
    longest = max(len(line) for line in data.split(b"\r\n"))
    assert longest <= 998, f"{name}: line of {longest} octets"
    if name[:2] == "24":
        return  # enKod's literal message: the missing empty line is the point (the stdlib flags it)
    msg = _parse(data)
    for part in msg.walk():
        assert not part.defects, f"{name}: defects {part.defects}"
        cte = part.get("Content-Transfer-Encoding", "7bit").lower()
        if cte in ("quoted-printable", "base64") and not part.is_multipart():
            raw = part.get_payload(decode=False)
            assert isinstance(raw, str)
            assert max(len(line) for line in raw.splitlines()) <= 76, f"{name}: encoded line > 76"
    headers_ok = {"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"}
    if name[:2] not in ("10", "15", "17"):
        missing = headers_ok - set(msg.keys())
        assert not missing, f"{name}: missing {missing}"
        assert msg["From"].addresses[0].display_name, f"{name}: From without display name"


def check_samples(corpus: Corpus) -> None:
    """Parse every sample and check that it holds what it is meant to hold."""
    files = {s.name: (HERE / s.name).read_bytes() for s in SAMPLES}
    for s in SAMPLES:
        assert files[s.name] == s.build(corpus), f"{s.name}: stale, rerun make_samples.py"
        check_wire(s.name, files[s.name])
    m = {name[:2]: _parse(data) for name, data in files.items()}

    assert m["01"].get_content_type() == "text/plain" and m["01"]["Content-Transfer-Encoding"] == "7bit"
    assert "Your order #83421 has shipped" in m["01"].get_content() and "<" not in m["01"].get_content()

    h02 = _html(m["02"])
    assert lf(h02) == c_html(corpus, "mailgun-action.html")
    assert h02.startswith("<!DOCTYPE html>") and "@media only screen" in h02 and "!important" in h02
    assert m["02"].get_content_type() == "multipart/alternative"

    h03 = _html(m["03"])
    assert h03.startswith("<!doctype html>") and "<!--[if mso]>" in h03 and "<!--[if !mso]><!-->" in h03
    assert (
        "<!--<![endif]-->" in h03
        and "v:roundrect" in h03
        and 'xmlns:o="urn:schemas-microsoft-com:office:office"' in h03
    )

    raw04 = files["04-russian-windows-1251.eml"]
    assert "Здравствуйте, Анна!".encode("cp1251") in raw04
    h04 = _html(m["04"])
    assert "Здравствуйте, Анна!" in h04 and "«Пример»" in h04 and "ждёт" in h04
    assert (
        m["04"]["Subject"] == RU_SUBJECT and m["04"]["From"].addresses[0].display_name == "Магазин «Пример»"
    )
    assert "=?windows-1251?B?" in raw04.split(b"\r\n\r\n")[0].decode("ascii")
    for part in m["04"].walk():
        if not part.is_multipart():
            assert (
                part.get_content_charset() == "windows-1251" and part["Content-Transfer-Encoding"] == "8bit"
            )
    assert "Здравствуйте, Анна!" in m["04"].get_body(("plain",)).get_content()

    h05 = _html(m["05"])
    assert (
        m["05"].get_content_charset() == "iso-8859-1"
        and m["05"]["Content-Transfer-Encoding"] == "quoted-printable"
    )
    assert (
        "¡Hola, Begoña!" in h05
        and "¿Olvidaste algo?" in h05
        and "está" in h05
        and "=F1" in files["05-spanish-iso-8859-1.eml"].decode("ascii")
    )
    assert m["05"]["Subject"] == "¿Olvidaste algo en tu carrito?"

    assert ENKOD_SUBJECT.encode() in files["06-rfc2047-subject.eml"]
    assert (
        m["06"]["Subject"] == "Тест SMTP 兼мод"
        and m["06"]["From"].addresses[0].display_name == "Служба уведомлений"
    )
    assert "Тестовое письмо" in _html(m["06"]) and "✅" in _html(m["06"])

    atts = {p.get_filename(): p.get_content() for p in m["07"].iter_attachments()}
    assert atts == {"invoice.pdf": minimal_pdf(), "usage-chart.png": tiny_png()}
    assert lf(_html(m["07"])) == c_html(corpus, "mailgun-billing.html")
    assert minimal_pdf().startswith(b"%PDF-1.4") and tiny_png().startswith(b"\x89PNG")

    raw08 = files["08-quoted-printable-html.eml"].decode("ascii")
    assert "=3D" in raw08 and "=\r\n" in raw08 and "=E2=80=9C" in raw08
    assert lf(_html(m["08"])) == QP_HTML and max(len(line) for line in QP_HTML.splitlines()) > 1000
    assert any("=\r\n" in u for u in re.findall(r"https://www\.example\.com/[^\"]{0,200}", raw08, re.S)), (
        "no URL split"
    )

    assert (
        m["09"]["Content-Transfer-Encoding"] == "base64"
        and "</body>" in _html(m["09"])
        and "Zoë" in _html(m["09"])
    )

    for header in ("From", "Date", "Message-ID", "Content-Transfer-Encoding"):
        assert header not in m["10"], f"10 has {header}"
    assert set(m["10"].keys()) == {"To", "Subject", "MIME-Version", "Content-Type"}

    names11 = m["11"].keys()
    for h in (
        "X-SMTPeter-InlineCSS",
        "X-SMTPeter-TrackClicks",
        "X-SMTPeter-TrackOpens",
        "x-smtpeter-trackbounces",
    ):
        assert h in names11, h
    assert m["11"]["X-SMTPeter-TrackOpens"] == "TRUE" and "<style" in _html(m["11"])

    assert m["12"]["X-Campaign-Id"] == "spring_sale-2026" and m["12"]["X-Letter-Id"] == "order-83421_a"
    plain12, html12 = corpus.eml_parts("postmark-receipt.eml", "check", "check")
    assert lf(_html(m["12"])) == html12 and lf(m["12"].get_body(("plain",)).get_content()) == plain12

    h13 = _html(m["13"])
    hrefs13 = _hrefs(h13)
    for expected in (
        "https://shop.example.com/p?id=1&amp;ref=news&amp;utm_source=email",
        "https://example.com/search?q=caf%C3%A9%20cr%C3%A8me&amp;x=%2F",
        "mailto:sales@example.com?subject=Hi&amp;body=Hello",
        "tel:+15551234567",
        "#top",
        "{{ unsubscribe_url }}",
        "http://legacy.example.org/old-page?ref=email",
    ):
        assert expected in hrefs13, expected
    for snippet in (
        "data-no-track>",
        'clicktracking="off"',
        "data-track-disabled>",
        "ses:no-track>",
        '<a href="https://example.com/verify">https://example.com/verify</a>',
        "<a HREF=",
        "<a href='",
        "&nbsp;",
        "&copy;",
        "&eacute;",
        "&#8217;",
    ):
        assert snippet in h13, snippet
    assert re.search(r"<body[^>]*>\s*<div class=\"preheader\" style=\"display:none", h13)
    assert "https://example.com/verify" in m["13"].get_body(("plain",)).get_content()
    assert len(hrefs13) == 14

    assert m["14"]["X-Campaign-Id"] == "bad id!"

    h15 = _html(m["15"])
    assert lf(h15) == ENKOD_HTML and m["15"]["Subject"] == "subject" and m["15"]["Message-ID"]
    assert (
        files["15-seed-enkod.eml"].startswith(b"Date: Thu, 29 Sep 2022 15:42:13 GMT\r\n")
        and str(m["15"]["From"]) == "test@testmail.ru"
    )

    h16 = _html(m["16"])
    assert "<html" not in h16.lower() and "<body" not in h16.lower() and len(_hrefs(h16)) == 1

    assert len(m["17"].get_all("From")) == 2

    h18 = _html(m["18"])
    hrefs18 = _hrefs(h18)
    assert len(hrefs18) == 200 and len(set(hrefs18)) == 200 and all(u.startswith("https://") for u in hrefs18)
    assert h18.startswith("<!DOCTYPE html>") and "@media only screen and (max-width:600px)" in h18
    for n, prefix in (("19", "x-smtpapi"), ("20", "x-mailgun-"), ("21", "x-pm-"), ("22", "x-ses-"), ("23", "x-mq-")):
        assert any(k.lower().startswith(prefix) for k in m[n].keys()), n
        assert len(_hrefs(_html(m[n]))) == 2, n
    assert json.loads(m["19"]["X-SMTPAPI"])["to"][1] == "bob.stone@example.net"
    assert len(m["20"].get_all("X-Mailgun-Tag")) == 2
    assert files["24-enkod-literal.eml"] == ENKOD_LITERAL.replace("\n", "\r\n").encode()
    assert b"MIME-Version: 1.0\r\n<!DOCTYPE" in files["24-enkod-literal.eml"]
    assert _hrefs(_html(m["25"])) == [raw for raw, _ in RAW_AMP_URLS]

    fresh = Corpus(corpus.root)
    for s in SAMPLES:
        s.build(fresh)
    assert (HERE / "README.md").read_text(encoding="utf-8") == readme(fresh), "README.md stale, rerun"
    print(f"ok: {len(SAMPLES)} samples checked")


def c_html(corpus: Corpus, name: str) -> str:
    """A corpus HTML file as text, for comparisons (not recorded as used)."""
    return lf((corpus.root / "html" / name).read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    """Write (default) or check (``--check``) the samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="shared/corpus directory")
    parser.add_argument("--check", action="store_true", help="check the files instead of writing them")
    args = parser.parse_args(argv)
    corpus = Corpus(args.corpus)
    if args.check:
        check_samples(corpus)
        return 0
    for s in SAMPLES:
        (HERE / s.name).write_bytes(s.build(corpus))
    (HERE / "README.md").write_text(readme(corpus), encoding="utf-8", newline="\n")
    print(f"wrote {len(SAMPLES)} samples and README.md to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
