"""Compact signed local parts for the bounce domain: ``{prefix}+{queue id}.{rcpt hash}.{key id}.{mac}``.

Why not a plain tracking token: it carries JSON and is ~100 characters, but RFC 5321 caps a
local part at 64 and receivers (ours included) refuse longer ones. This form is ~57: the queue
id, 8 base32 characters of SHA-256 of the recipient (resolved against the report's own
recipient or the copies recorded for that queue id), the key id and the token MAC. It is signed
and verified with the ordinary :class:`~pipeline.toolkit.tokens.TokenSigner` (payload ``k``, ``q``,
``h``), so key rotation works as for links.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.contract.plugin import TokenSigner

MAX_LOCAL_PART = 64
_QUEUE_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def recipient_hash(address: str) -> str:
    """8 base32 characters naming a recipient within one queue id."""
    digest = hashlib.sha256(address.strip().strip("<>").lower().encode("utf-8")).digest()
    return base64.b32encode(digest[:5]).decode("ascii").lower()


@dataclass(frozen=True)
class VerpToken:
    kind: str  # "b" bounce, "u" unsubscribe
    queue_id: str
    rcpt_hash: str

    def match(self, candidates: Iterable[str | None]) -> str | None:
        """The first candidate address whose hash is ours."""
        for addr in candidates:
            if addr and recipient_hash(addr) == self.rcpt_hash:
                return addr.strip().strip("<>").lower()
        return None


def verp_local_part(signer: TokenSigner, prefix: str, kind: str, queue_id: str, recipient: str) -> str:
    """The signed local part; raises ``ValueError`` if it can't be made to fit 64 characters."""
    if not _QUEUE_ID.match(queue_id):
        raise ValueError(f"queue id {queue_id!r} cannot go into a bounce address")
    h = recipient_hash(recipient)
    token = signer.sign({"k": kind, "q": queue_id, "h": h})
    _, kid, mac = token.split(".")
    local = f"{prefix}+{queue_id}.{h}.{kid}.{mac}"
    if len(local) > MAX_LOCAL_PART:
        raise ValueError(f"bounce address local part is {len(local)} characters (max 64); use a shorter key id")
    return local


def parse_verp(signer: TokenSigner, local_part: str) -> VerpToken | None:
    """The token in a local part, or ``None`` if it is missing, malformed or not genuine."""
    _, plus, rest = local_part.partition("+")
    parts = rest.split(".") if plus else []
    if len(parts) != 4:
        return None
    queue_id, h, kid, mac = parts
    for kind in ("b", "u"):
        body = signer.sign({"k": kind, "q": queue_id, "h": h}).split(".")[0]
        if signer.verify(f"{body}.{kid}.{mac}") is not None:
            return VerpToken(kind, queue_id, h)
    return None
