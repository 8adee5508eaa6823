"""Row shapes both spool backends return to the queue tools, so ``smtpgate queue`` prints the same
thing whichever database holds the queue."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

RECIPIENT_COLUMNS = ("recipient", "state", "attempts", "next_attempt", "last_reply", "next_hop")
"""A recipient's columns as ``queue show`` lists them."""

ROW_KEYS = ("queue_id", "mail_from", "size", "created_at", *RECIPIENT_COLUMNS)
"""One ``queue list`` row: the message's envelope and size, then one recipient's columns."""


def recipient_rows(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(RECIPIENT_COLUMNS, r, strict=True)) for r in rows]


def show_record(queue_id: str, msg: Sequence[Any], recipients: list[dict[str, Any]]) -> dict[str, Any]:
    """``queue show``'s record from ``(mail_from, data, context, created_at)`` and the recipients."""
    return {
        "queue_id": queue_id,
        "mail_from": msg[0],
        "data": bytes(msg[1]),
        "context": json.loads(msg[2]),
        "created_at": msg[3],
        "recipients": recipients,
    }
