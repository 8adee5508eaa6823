"""The DKIM signer: dkimpy's output, byte for byte, at close to the cost of the key operation.

dkimpy canonicalises every header field of the message (two regex passes each), splits the whole
message into lines and joins it again, and runs a regex over every single space of the body: about
half of what signing a 55 KB message costs besides the RSA-2048 operation itself. Here the body is
canonicalised whole (:func:`relaxed_body`), only the fields named in ``h=`` are canonicalised, and
everything hashed goes to SHA-256 in one update. Header selection, the tag list, folding and the
``b=`` handling follow dkimpy 1.1 (``DKIM.sign`` / ``gen_header`` / ``hash_headers``; the
dependency has an upper bound for that reason); the tests compare our field with dkimpy's for every
sample and corpus message, both canonicalisations, RSA and Ed25519, and :func:`self_test` verifies
with stock dkimpy at start-up, so a dkimpy change stops the gateway rather than sending bad
signatures.
"""

from __future__ import annotations

import base64
import email.headerregistry
import email.policy
import functools
import hashlib
import re
import time
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from plugins.dkim_sign.keys import SigningKey, dns_txt_value

CANONICALIZE = (b"relaxed", b"relaxed")
SIGNED = (b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type")
SIGNED_WHEN_PRESENT = (
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"feedback-id",
    b"x-campaign-id",
    b"x-letter-id",
)
OVERSIGNED = (b"from", b"subject", b"to")
"""Listed once more than they occur, so a field added in transit breaks the signature."""


_WSP_TO_COMPRESS = re.compile(rb"(?:\t| [\t ])[\t ]*")
"""A run of spaces and tabs that is not already one single space (the only runs relaxed
canonicalisation changes). Matches start only at a run's first byte and take the whole run."""

_TAB_TO_SPACE = bytes.maketrans(b"\t", b" ")
_SPACES = re.compile(rb"  +")  # a literal prefix: the regex engine skips to each double space

_PKCS1 = padding.PKCS1v15()
_PREHASHED_SHA256 = Prehashed(hashes.SHA256())
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")  # dkimpy's rfc822_parse
_SHOULD_NOT_SIGN = frozenset(dkim.DKIM.SHOULD_NOT)
_BARE_LF = re.compile(rb"\n(?<!\r\n)")
"""An LF not after a CR: one regex scan from LF to LF (its literal prefix), where comparing the
counts of LF and CRLF took two passes over the body."""


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4 relaxed body canonicalisation, byte-identical to dkimpy's ``Relaxed``.

    dkimpy strips whitespace before each CRLF, then turns every ``[\\t ]+`` run into one space
    (its regex matches, and replaces, every lone space too). Here every tab becomes a space
    (``bytes.translate``, no regex), then only runs of two or more spaces are compressed, and a
    run that ended a line, now a single space before CRLF, goes with a plain ``replace``. Same
    result; HTML indented with tabs has thousands of lone tabs, each a regex match in dkimpy.
    """
    return dkim.canonicalization.correct_empty_body(
        dkim.canonicalization.strip_trailing_lines(_relaxed_lines(body))
    )


def _relaxed_lines(body: bytes) -> bytes:
    """Relaxed canonicalisation of whole lines, without the end-of-body rules (trailing empty
    lines, empty body): a piece of a body that ends with CRLF canonicalises the same alone as
    inside the body (nothing it changes spans a CRLF), which is what lets :func:`_body_hash` reuse
    the previous copy's pieces."""
    if b"\t" in body:  # (a memchr: cheaper than translating a body without tabs)
        body = body.translate(_TAB_TO_SPACE)
    if b"  " in body:
        body = _SPACES.sub(b" ", body)
    return body.replace(b" \r\n", b"\r\n")


def simple_body(body: bytes) -> bytes:
    """RFC 6376 3.4.3 simple body canonicalisation (dkimpy's ``Simple``)."""
    return dkim.canonicalization.strip_trailing_lines(body)


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """``dkim.rfc822_parse``: header fields as (name, value with its CRLFs) and the CRLF body.

    For a message whose every LF is part of a CRLF (all that :class:`pipeline.contract.message.Message`
    produces) the body is the bytes after the first empty line and only the header block is
    split into lines; anything else goes to dkimpy's own parser.
    """
    sep = _header_end(message)
    if sep < 0 or message.count(b"\n", sep) != message.count(b"\r\n", sep):
        headers, body = dkim.rfc822_parse(message)
        return [(bytes(n), bytes(v)) for n, v in headers], body
    return _header_fields(message[:sep]), message[sep + 4 :]


def _header_end(message: bytes) -> int:
    """Where the header block ends (the first CRLF CRLF) when it can be split on CRLF alone (no
    bare LF in it, not empty), else -1: then only dkimpy's parser says what the fields are."""
    sep = message.find(b"\r\n\r\n")
    if (
        sep < 0
        or message.startswith(b"\r\n")
        or message.count(b"\n", 0, sep) != message.count(b"\r\n", 0, sep)
    ):
        return -1
    return sep


def _header_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of a header block that has only CRLF line ends, as ``dkim.rfc822_parse`` gives them."""
    fields: list[list[bytes]] = []
    for line in block.split(b"\r\n"):
        if line[0] in (9, 32):
            fields[-1][1] += line + b"\r\n"  # as dkimpy: IndexError for a leading continuation
            continue
        m = _FIELD_NAME.match(line)
        if m is not None:
            fields.append([m.group(1), line[m.end() :] + b"\r\n"])
        elif not line.startswith(b"From "):
            raise dkim.MessageFormatError(f"Unexpected characters in RFC822 header: {line!r}")
    return [(n, v) for n, v in fields]


def _select(headers: list[tuple[bytes, bytes]], include: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
    """``dkim.select_headers``: for each name in ``h=``, the next occurrence from the bottom."""
    lowered = [name.lower() for name, _ in headers]
    selected = []
    last: dict[bytes, int] = {}
    for name in include:
        i = last.get(name, len(headers))
        while i > 0:
            i -= 1
            if lowered[i] == name:
                selected.append(headers[i])
                break
        last[name] = i
    return selected


def _relaxed_field(name: bytes, value: bytes) -> bytes:
    """``name:value`` canonicalised as dkimpy's ``Relaxed.canonicalize_headers`` (no CRLF)."""
    value = _WSP_TO_COMPRESS.sub(b" ", value.replace(b"\r\n", b"").replace(b"\n", b"")).strip()
    return name.lower().rstrip() + b":" + value


_last: tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes] | None = None
"""The last message's parse and body hash: an RSA and an Ed25519 signature of one copy share it."""


def _parsed(message: bytes, body_algo: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """``message``'s header fields and base64 body hash, reused when the same object is signed
    again (identity, not equality: no 55 KB comparison; the reference keeps the id unique)."""
    global _last, _fields
    last = _last
    if last is not None and last[0] is message and last[1] == body_algo:
        return last[2], last[3]
    sep = _header_end(message)
    bodyhash = _body_hash(message, sep + 4, body_algo) if sep >= 0 else None
    if bodyhash is not None:
        block = message[:sep]
        fields = _fields
        if fields is not None and fields[0] == block:  # the copies of a message share their header block
            headers = fields[1]
        else:
            headers = _header_fields(block)
            _fields = (block, headers)
    else:  # a bare LF somewhere: dkimpy's parser decides (it turns the body's bare LFs into CRLF)
        headers, body = split_message(message)
        body = relaxed_body(body) if body_algo == b"relaxed" else simple_body(body)
        bodyhash = base64.b64encode(hashlib.sha256(body).digest())
    _last = (message, body_algo, headers, bodyhash)
    return headers, bodyhash


_fields: tuple[bytes, list[tuple[bytes, bytes]]] | None = None
"""The last header block split into fields, and the fields (reused as they are: never changed)."""

_signed_part: tuple[list[tuple[bytes, bytes]], tuple[bytes, ...], bytes, bytes] | None = None
"""For the last fields, ``h=`` list and header canonicalisation: the signed fields as hashed."""


def _signed_fields(
    headers: list[tuple[bytes, bytes]], include: tuple[bytes, ...], header_algo: bytes
) -> bytes:
    """The fields named in ``h=``, canonicalised and joined as they are hashed (without the
    signature field itself); reused while the fields are the same list object (every copy of a
    message whose header block is the same: :data:`_fields`)."""
    global _signed_part
    last = _signed_part
    if last is not None and last[0] is headers and last[1] == include and last[2] == header_algo:
        return last[3]
    selected = _select(headers, include)
    if header_algo == b"relaxed":  # each signed field with its CRLF
        joined = b"".join(_relaxed_field(n, v) + b"\r\n" for n, v in selected)
    else:
        joined = b"".join(n + b":" + v for n, v in selected)
    _signed_part = (headers, include, header_algo, joined)
    return joined


_PIECE = 4096
"""Bytes per body piece (to the next CRLF) after which :func:`_body_hash` keeps a hash state.
Measured on size-typical.eml (56 KB body, the pixel near its end): a later copy costs 40 us with
4 KB pieces (75 us with 8 KB); cutting a whole body into them costs 45 us more than hashing it
whole, so a body with nothing to take over is cut 4 times coarser."""


class _Pieces:
    """The last body hashed, cut into pieces that end with CRLF, with the SHA-256 state after
    the canonical form of each (end-of-body rules not applied). Never changed once made (states
    are copied before use), so a signer in another thread can read it while a new one replaces it."""

    __slots__ = ("algo", "pieces", "states")

    def __init__(self, algo: bytes, pieces: list[bytes], states: list[Any]) -> None:
        self.algo = algo
        self.pieces = pieces  # each ends with CRLF, has no bare LF, and some content follows it
        self.states = states


_pieces: _Pieces | None = None


def _body_hash(message: bytes, start: int, algo: bytes) -> bytes | None:
    """The base64 body hash of ``message[start:]`` (canonicalised with ``algo``), or ``None``
    when the body has a bare LF (dkimpy's parser rewrites those: the caller takes its path).

    The copies of a message differ only where each recipient's links and pixel are: the body
    before the first such byte is the one the previous copy had. So the body is hashed piece by
    piece, and the pieces at the start equal to the last body's (a ``startswith`` each) are not
    canonicalised or hashed again: their SHA-256 state is taken over. That is exact because
    relaxed (and simple) canonicalisation is line by line except at the end of the body, where
    trailing empty lines go and an empty body stays empty: a piece ends with CRLF and is only
    cut where content (a byte other than space, tab, CR, LF) still follows, so the end-of-body
    rules apply to the last piece alone, as to the whole body.
    """
    global _pieces
    canon = _relaxed_lines if algo == b"relaxed" else _same
    # Pieces are cut before ``limit``, the end of the body's last content byte (found in its last
    # 256 bytes without copying the body, unless those are all whitespace).
    window = min(256, len(message))
    tail = message[-window:].rstrip(b" \t\r\n")
    limit = len(message) - window + len(tail) if tail else len(message.rstrip(b" \t\r\n"))
    pieces: list[bytes] = []
    states: list[Any] = []
    pos = start
    last = _pieces
    if last is not None and last.algo == algo:
        for piece, state in zip(last.pieces, last.states, strict=True):
            after = pos + len(piece)
            if after >= limit or not message.startswith(piece, pos):
                break
            pieces.append(piece)
            states.append(state)
            pos = after
    h = states[-1].copy() if states else hashlib.sha256()
    # Nothing taken over (a message's first copy, or a lone one): larger pieces, fewer calls; the
    # next copy recuts whatever it hashes again at the finer size, for the copies after it.
    size = _PIECE if states else 4 * _PIECE
    while True:
        cut = message.find(b"\r\n", pos + size)
        if cut < 0 or cut + 2 >= limit:
            break
        piece = message[pos : cut + 2]
        if _BARE_LF.search(piece) is not None:
            return None
        h.update(canon(piece))
        pieces.append(piece)
        states.append(h.copy())
        pos = cut + 2
    rest = message[pos:]
    if _BARE_LF.search(rest) is not None:
        return None
    h.update(relaxed_body(rest) if algo == b"relaxed" else simple_body(rest))
    _pieces = _Pieces(algo, pieces, states)
    return base64.b64encode(h.digest())


def _same(piece: bytes) -> bytes:
    """Simple canonicalisation of whole lines: nothing changes."""
    return piece


def dkim_signature(
    message: bytes,
    *,
    selector: bytes,
    domain: bytes,
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
    include: list[bytes] | tuple[bytes, ...],
    canonicalize: tuple[bytes, bytes] = CANONICALIZE,
    timestamp: int | None = None,
) -> bytes:
    """The ``DKIM-Signature`` field (CRLF-terminated) dkimpy's ``DKIM.sign`` would produce for
    ``message`` with this key (rsa-sha256 or ed25519-sha256), ``h=`` list and ``c=``, no ``l=``."""
    algorithm = b"rsa-sha256" if isinstance(key, rsa.RSAPrivateKey) else b"ed25519-sha256"
    header_algo, body_algo = canonicalize
    if header_algo not in (b"relaxed", b"simple") or body_algo not in (b"relaxed", b"simple"):
        raise dkim.ParameterError(f"unknown canonicalization {b'/'.join(canonicalize)!r}")
    include = tuple(x.lower() for x in include)
    if b"from" not in include:
        raise dkim.ParameterError("The From header field MUST be signed")
    for x in set(include).intersection(_SHOULD_NOT_SIGN):
        raise dkim.ParameterError(f"The {x!r} header field SHOULD NOT be signed")
    headers, bodyhash = _parsed(message, body_algo)
    t = int(time.time()) if timestamp is None else timestamp
    fields = [
        (b"v", b"1"),
        (b"a", algorithm),
        (b"c", header_algo + b"/" + body_algo),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", selector),
        (b"t", str(t).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", bodyhash),
        (b"b", b"0" * 60),  # as dkimpy: forces b= onto its own line when folding
    ]
    unsigned = dkim.fold(b"; ".join(b"=".join(x) for x in fields), namelen=14, linesep=b"\r\n")
    unsigned = b" " + dkim.RE_BTAG.sub(b"\\1", unsigned)
    signed = _signed_fields(headers, include, header_algo)
    if header_algo == b"relaxed":  # the signature field last, without its CRLF
        hashed = signed + _relaxed_field(b"DKIM-Signature", unsigned)
    else:
        hashed = signed + b"DKIM-Signature:" + unsigned.rstrip()
    digest = hashlib.sha256(hashed).digest()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(digest, _PKCS1, _PREHASHED_SHA256)
    else:
        signature = key.sign(digest)
    fields[-1] = (b"b", base64.b64encode(signature))
    return b"DKIM-Signature: " + dkim.fold(
        b"; ".join(b"=".join(x) for x in fields) + b"\r\n", namelen=14, linesep=b"\r\n"
    )


def sign_rsa(
    data: bytes, key: SigningKey, include: list[bytes], engine: str = "openssl", timestamp: int | None = None
) -> bytes:
    """An rsa-sha256 ``DKIM-Signature`` field (CRLF-terminated) for ``data``; ``engine="dkimpy"``
    is stock dkimpy throughout (its pure-Python RSA)."""
    if engine != "openssl":
        return bytes(
            dkim.DKIM(data, linesep=b"\r\n").sign(
                key.selector.encode(),
                key.domain.encode(),
                key.rsa_pem,
                canonicalize=CANONICALIZE,
                include_headers=include,
            )
        )
    return dkim_signature(
        data,
        selector=key.selector.encode(),
        domain=key.domain.encode(),
        key=key.rsa,
        include=include,
        timestamp=timestamp,
    )


def sign_ed25519(data: bytes, key: SigningKey, include: list[bytes], timestamp: int | None = None) -> bytes:
    """An ed25519-sha256 ``DKIM-Signature`` field (RFC 8463) for ``data``."""
    assert key.ed25519_selector is not None and key.ed25519 is not None
    return dkim_signature(
        data,
        selector=key.ed25519_selector.encode(),
        domain=key.domain.encode(),
        key=key.ed25519,
        include=include,
        timestamp=timestamp,
    )


def signed_headers(header_names: list[str]) -> list[bytes]:
    """The ``h=`` list: every occurrence of the fields we sign, plus one more of the oversigned ones."""
    return list(_signed_headers(tuple(header_names)))


@functools.lru_cache(maxsize=256)
def _signed_headers(header_names: tuple[str, ...]) -> tuple[bytes, ...]:
    """:func:`signed_headers`, cached: every copy of a message has the same field names."""
    counts: dict[bytes, int] = {}
    for name in header_names:
        key = name.lower().encode("ascii", "replace")
        counts[key] = counts.get(key, 0) + 1
    include: list[bytes] = []
    for field in SIGNED:
        include += [field] * max(counts.get(field, 0), 1)
    for field in SIGNED_WHEN_PRESENT:
        include += [field] * counts.get(field, 0)
    include += OVERSIGNED
    return tuple(include)


def author_domain(headers: list[Any]) -> str | None:
    """The domain of the (first) ``From`` address, or ``None`` when there is none to parse."""
    raw = next((h.raw_value for h in headers if h.name.lower() == "from"), None)
    if raw is None:
        return None
    return _from_domain(raw)


@functools.lru_cache(maxsize=256)
def _from_domain(raw: str) -> str | None:
    """A pure function of the field's text, cached: the stdlib address parser costs about 1 ms,
    and every copy of a message (and every message of a campaign) has the same ``From``."""
    try:
        parsed = email.policy.default.header_factory("From", raw)
    except Exception:  # noqa: BLE001 - the stdlib parser crashes on some garbage: no usable domain
        return None
    if not isinstance(parsed, email.headerregistry.AddressHeader):
        return None
    for address in parsed.addresses:
        if address.domain:
            return address.domain.lower()
    return None


_SELF_TEST = (
    b"From: self-test@example.invalid\r\nTo: you@example.invalid\r\nSubject: self-test\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-Id: <self-test@example.invalid>\r\n\r\nbody\r\n"
)


def self_test(key: SigningKey, engine: str) -> None:
    """Sign a small message with ``key`` and verify it with stock dkimpy (a start-up check)."""
    include = signed_headers(["From", "To", "Subject", "Date", "Message-Id"])
    records = {f"{key.selector}._domainkey.{key.domain}.": dns_txt_value(key.rsa)}
    checks = [sign_rsa(_SELF_TEST, key, include, engine)]
    if key.ed25519 is not None:
        records[f"{key.ed25519_selector}._domainkey.{key.domain}."] = dns_txt_value(key.ed25519)
        checks.append(sign_ed25519(_SELF_TEST, key, include))

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name.decode(), "").encode()

    for sig in checks:
        if not dkim.verify(sig + _SELF_TEST, dnsfunc=dnsfunc):
            raise ValueError(f'domains."{key.domain}": DKIM self-test failed: a signature did not verify')
