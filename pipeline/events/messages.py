"""The message log: one row per accepted message and one per recipient copy, beside the events
(``events.db``, or the ``message_log`` tables of ``[storage] url``'s PostgreSQL, which every node
writes and searches).

Why a table of its own: the spool forgets a message once every copy is final, and the events
table has neither the envelope sender, the subject nor the Message-Id. The ``accepted`` event
carries a summary of the message (``data["message"]``, built by :mod:`pipeline.chain.accept`);
the event store writes it here in the same transaction as the event, and every delivery result
moves the copy's ``state``. So "what happened to my mail to X?" is two indexed look-ups, and the
log cannot disagree with the events it is derived from.

Indexes (each search filter is served by one, newest first by ``id``): ``message_recipients
(recipient, queue_id)``, ``messages(sender, id)``, ``(message_id)``, ``(campaign_id, id)``,
``(credential, id)``, ``(accepted_at)``; ``state`` is checked per candidate row through the
recipients' primary key. On PostgreSQL the tables are ``message_log`` and
``message_log_recipients`` (migration 7): the shared database already has the spool's ``messages``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.contract.context import Event
from pipeline.contract.vocabulary import EventType, RecipientState
from pipeline.events.encoding import LOGGED_APART, EncodedColumns, TxMemo, dumps_spaced
from pipeline.ports import MessageFilter
from pipeline.storage.sqlite import open_sqlite
from pipeline.storage.tx import Tx

MESSAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id    TEXT NOT NULL UNIQUE,
    accepted_at REAL NOT NULL,
    mail_from   TEXT NOT NULL,
    sender      TEXT NOT NULL,
    subject     TEXT,
    message_id  TEXT,
    credential  TEXT,
    campaign_id TEXT,
    letter_id   TEXT,
    size        INTEGER NOT NULL DEFAULT 0,
    info        TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS messages_sender ON messages(sender, id);
CREATE INDEX IF NOT EXISTS messages_message_id ON messages(message_id);
CREATE INDEX IF NOT EXISTS messages_campaign ON messages(campaign_id, id);
CREATE INDEX IF NOT EXISTS messages_credential ON messages(credential, id);
CREATE INDEX IF NOT EXISTS messages_accepted_at ON messages(accepted_at);
CREATE TABLE IF NOT EXISTS message_recipients (
    queue_id   TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    state      TEXT NOT NULL,
    updated_at REAL NOT NULL,
    copy       TEXT,
    PRIMARY KEY (queue_id, recipient)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS message_recipients_address ON message_recipients(recipient, queue_id);
"""

RESULT_STATES = frozenset(s.value for s in RecipientState) - {"queued", "processing", "held"}
"""Event types that are a copy's delivery result and so move its state in the log."""

LOG_STATES = ("queued", *sorted(RESULT_STATES))
"""The states a copy has in the log (a spool's ``processing`` and ``held`` are queue details)."""

MAX_PAGE = 200


@dataclass(frozen=True)
class LogTables:
    """The log's two table names in one backend (SQLite's predate the shared database)."""

    messages: str
    recipients: str


SQLITE_TABLES = LogTables("messages", "message_recipients")
POSTGRES_TABLES = LogTables("message_log", "message_log_recipients")


def log_tables(dialect: str) -> LogTables:
    return POSTGRES_TABLES if dialect == "postgres" else SQLITE_TABLES


def _norm(address: str) -> str:
    return address.strip().strip("<>").strip().lower()


def _message_id(value: Any) -> str | None:
    return _norm(str(value)) if value else None


def write_message_log(
    tx: Tx, event: Event, tables: LogTables = SQLITE_TABLES, *,
    columns: EncodedColumns | None = None, memo: TxMemo | None = None,
) -> None:
    """Inside the event store's transaction: the log rows an event creates or moves.

    ``columns``: the copy's JSON already encoded (the SQLite outbox's encoder); ``memo``: the
    message rows this transaction wrote already, so the ``accepted`` events of a message's other
    recipients neither encode its summary again nor run an insert that would do nothing."""
    if not event.queue_id or not event.recipient:
        return
    rcpt = _norm(event.recipient)
    if event.type == EventType.ACCEPTED:
        summary = event.data.get("message")
        if isinstance(summary, Mapping) and (memo is None or event.queue_id not in memo.messages):
            mail_from = str(summary.get("mail_from") or "")
            info = columns.info if columns is not None and columns.info is not None else dumps_spaced(
                {k: v for k, v in summary.items() if k not in LOGGED_APART})
            tx(
                f"INSERT INTO {tables.messages} (queue_id, accepted_at, mail_from, sender, subject, message_id,"
                " credential, campaign_id, letter_id, size, info) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (event.queue_id, event.time, mail_from, _norm(mail_from), summary.get("subject"),
                 _message_id(summary.get("message_id")), event.credential, event.campaign_id, event.letter_id,
                 int(summary.get("size") or 0), info),
            )
            if memo is not None:
                memo.messages.add(event.queue_id)
        tx(
            f"INSERT INTO {tables.recipients} (queue_id, recipient, state, updated_at) VALUES (?, ?, 'queued', ?)"
            " ON CONFLICT DO NOTHING",
            (event.queue_id, rcpt, event.time),
        )
    elif event.type in RESULT_STATES:
        # a delivery attempt's copy (processing trace, final headers) replaces the previous attempt's
        if columns is not None:
            copy_json = columns.copy
        else:
            copy = event.data.get("message")
            copy_json = dumps_spaced(copy) if isinstance(copy, Mapping) else None
        tx(
            f"UPDATE {tables.recipients} SET state = ?, updated_at = ?, copy = COALESCE(?, copy)"
            " WHERE queue_id = ? AND recipient = ?",
            (str(event.type), event.time, copy_json, event.queue_id, rcpt),
        )


_COLS = "m.id, m.queue_id, m.accepted_at, m.mail_from, m.subject, m.message_id, m.credential, m.campaign_id," \
    " m.letter_id, m.size, m.info"


Fetch = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""A read (``?`` placeholders) on the backend's connection: its rows."""


class MessageLogReader:
    """Reads the message log and each message's events (the :class:`~pipeline.ports.MessageLog` port).

    Built on one read primitive, so the same queries serve ``events.db`` and the shared PostgreSQL:
    :meth:`on_store` reads through an event store's own read path (``query``) and ``dialect``.
    """

    def __init__(self, fetch: Fetch, dialect: str = "sqlite", close: Callable[[], None] | None = None) -> None:
        self._fetch = fetch
        self.dialect = dialect
        self.tables = log_tables(dialect)
        self._close = close

    @classmethod
    def on_store(cls, store: Any, close: Callable[[], None] | None = None) -> MessageLogReader:
        """The log of an event store (anything with ``query(sql, args)`` and ``dialect``)."""
        return cls(store.query, store.dialect, close)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def search(
        self, f: MessageFilter, limit: int = 50, before: int | None = None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Newest first; ``before`` is the cursor a previous page returned (a row id). Returns the page
        and the next cursor (``None`` on the last page)."""
        limit = max(1, min(limit, MAX_PAGE))
        if any("\x00" in v for v in (f.recipient, f.sender, f.message_id, f.queue_id, f.campaign, f.credential)
               if v):
            return [], None  # matches nothing stored (and PostgreSQL refuses NUL in text)
        t = self.tables
        where: list[str] = []
        args: list[Any] = []
        if f.recipient:
            where.append(f"m.queue_id IN (SELECT queue_id FROM {t.recipients} WHERE recipient = ?)")
            args.append(_norm(f.recipient))
        # With a near-unique filter, "+" keeps SQLite from walking a tenant's whole credential index instead
        # (without ANALYZE statistics it cannot know that a recipient or Message-Id is the rarer one).
        # PostgreSQL plans from its statistics (and "+" on text is an error there).
        narrow = bool(f.recipient or f.message_id or f.queue_id) and self.dialect == "sqlite"
        cred_col = "+m.credential" if narrow else "m.credential"
        for col, val in (("m.sender", _norm(f.sender) if f.sender else None), ("m.message_id", _message_id(f.message_id)),
                         ("m.queue_id", f.queue_id), ("m.campaign_id", f.campaign), (cred_col, f.credential)):
            if val:
                where.append(f"{col} = ?")
                args.append(val)
        if f.state:
            where.append(f"EXISTS (SELECT 1 FROM {t.recipients} r WHERE r.queue_id = m.queue_id AND r.state = ?)")
            args.append(f.state)
        if f.since is not None:
            where.append("m.accepted_at >= ?")
            args.append(f.since)
        if f.until is not None:
            where.append("m.accepted_at < ?")
            args.append(f.until)
        if before is not None:
            where.append("m.id < ?")
            args.append(before)
        sql = f"SELECT {_COLS} FROM {t.messages} m"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY m.id DESC LIMIT ?"
        rows = self._fetch(sql, (*args, limit + 1))
        page = [self._summary(r) for r in rows[:limit]]
        for msg in page:
            msg["recipients"] = self._recipients(str(msg["queue_id"]))
        next_cursor = int(rows[limit - 1][0]) if len(rows) > limit else None
        for msg in page:  # the story's bulky parts are for messages/{queue_id}, not for a list
            for key in ("id", "headers", "trace"):
                msg.pop(key, None)
        return page, next_cursor

    def message(self, queue_id: str) -> dict[str, Any] | None:
        """One message's log row with its recipients and every event of it (oldest first), or ``None``."""
        if "\x00" in queue_id:
            return None
        rows = self._fetch(f"SELECT {_COLS} FROM {self.tables.messages} m WHERE m.queue_id = ?", (queue_id,))
        events = self._fetch(
            "SELECT type, time, recipient, credential, campaign_id, letter_id, url, machine, bounce_class, data"
            " FROM events WHERE queue_id = ? ORDER BY id", (queue_id,),
        )
        if not rows and not events:
            return None
        out = self._summary(rows[0]) if rows else self._from_events(queue_id, events)
        out.pop("id", None)
        out["recipients"] = self._recipients(queue_id, with_copy=True)
        out["events"] = [self._event(e) for e in events]
        return out

    def webhook_deliveries(self, credential: str | None = None, limit: int = 50,
                           url: str | None = None) -> list[dict[str, Any]]:
        """The latest webhook deliveries (newest first) with their event; one credential's only when given,
        to one URL only when given. Each row: the outbox state, attempts, last error, when it last changed."""
        sql = ("SELECT o.id, o.event_id, e.type, e.queue_id, e.credential, o.url, o.state, o.attempts, o.last_error,"
               " o.updated_at FROM webhook_outbox o JOIN events e ON e.id = o.event_id")
        where, args = [], []
        if credential is not None:
            where.append("e.credential = ?")
            args.append(credential)
        if url is not None:
            where.append("o.url = ?")
            args.append(url)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._fetch(sql + " ORDER BY o.id DESC LIMIT ?", (*args, max(1, min(limit, MAX_PAGE))))
        keys = ("id", "event_id", "event", "queue_id", "credential", "url", "state", "attempts", "last_error",
                "updated_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- rows -------------------------------------------------------------------------------------
    @staticmethod
    def _summary(row: tuple[Any, ...]) -> dict[str, Any]:
        (id_, qid, at, mail_from, subject, message_id, cred, camp, letter, size, info) = row
        return {"id": id_, "queue_id": qid, "accepted_at": at, "mail_from": mail_from, "subject": subject,
                "message_id": message_id, "credential": cred, "campaign_id": camp, "letter_id": letter,
                "size": size, **json.loads(info)}

    @staticmethod
    def _from_events(queue_id: str, events: list[tuple[Any, ...]]) -> dict[str, Any]:
        """A message accepted before the log existed: what its events know."""
        first = events[0]
        return {"queue_id": queue_id, "accepted_at": first[1], "mail_from": None, "subject": None,
                "message_id": None, "credential": first[3], "campaign_id": first[4], "letter_id": first[5], "size": 0}

    def _recipients(self, queue_id: str, with_copy: bool = False) -> list[dict[str, Any]]:
        """Each copy's state; ``with_copy``: also its last processing trace and final headers."""
        rows = self._fetch(
            f"SELECT recipient, state, updated_at, copy FROM {self.tables.recipients} WHERE queue_id = ?"
            " ORDER BY recipient", (queue_id,),
        )
        out = []
        for r, s, t, copy in rows:
            row: dict[str, Any] = {"address": r, "state": s, "updated_at": t}
            if with_copy and copy:
                logged = json.loads(copy)
                row["processing"] = logged.get("trace", [])
                if "headers" in logged:
                    row["final_headers"] = logged["headers"]
            out.append(row)
        return out

    @staticmethod
    def _event(row: tuple[Any, ...]) -> dict[str, Any]:
        type_, at, rcpt, _cred, _camp, _letter, url, machine, bclass, data = row
        out: dict[str, Any] = {"type": type_, "at": at, "recipient": rcpt}
        if url:
            out["url"] = url
        if type_ in ("opened", "clicked"):
            out["machine"] = bool(machine)
        if bclass:
            out["bounce_class"] = bclass
        details = json.loads(data)
        details.pop("message", None)
        out.update({k: v for k, v in details.items() if k not in out})
        return out


class SqliteMessageLog(MessageLogReader):
    """The log of one ``events.db`` on a read connection of its own (tables created if missing)."""

    def __init__(self, path: Path) -> None:
        conn = open_sqlite(path)
        conn.executescript(MESSAGE_SCHEMA)
        lock = threading.Lock()

        def fetch(sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
            with lock:
                return [tuple(r) for r in conn.execute(sql, tuple(args)).fetchall()]

        def close() -> None:
            with lock:
                conn.close()

        super().__init__(fetch, "sqlite", close)
