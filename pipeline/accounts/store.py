"""The credentials of both sources as records: ``[[credentials]]`` in the config file and the
store managed by ``smtpgate credentials``: ``<data_dir>/credentials.db`` (SQLite), or the
``credentials`` table of ``[storage] url``'s PostgreSQL, which every node reads (a change made on
one node is seen by the others within ``CredentialStore.SHARED_TTL`` seconds)."""

from __future__ import annotations

import builtins
import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from pipeline.accounts.secrets import check_hash_format, hash_secret, new_api_key, new_password
from pipeline.config import Config, ConfigError, CredentialSection, format_validation_error
from pipeline.contract.context import Credential
from pipeline.contract.vocabulary import CredentialKind
from pipeline.storage.statement import one_statement, open_store

log = logging.getLogger("smtpgate.ingress.auth")

SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    name        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    username    TEXT,
    key_id      TEXT UNIQUE,
    secret_hash TEXT,
    options     TEXT NOT NULL DEFAULT '{}',
    disabled    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL
);
"""



class CredentialError(ValueError):
    """A credential that cannot be stored (bad name, duplicate, bad option)."""


_OPTION_FIELDS = (
    "features", "locked", "sandbox", "allowed_sender_domains", "max_message_size", "max_recipients",
    "messages_per_minute", "egress", "webhooks",
)


@dataclass(frozen=True)
class Record:
    """One credential from either source, with what authentication needs."""

    section: CredentialSection
    source: Literal["config", "store"]
    secret_hash: str | None
    key_id: str | None = None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def name(self) -> str:
        return self.section.name

    @property
    def disabled(self) -> bool:
        return self.section.disabled

    def credential(self) -> Credential:
        """A new :class:`Credential` per call (a session may change its own), copied from one built
        once per record. Why (issue 17, main process per connection): building it from the section
        (an enum look-up, a frozenset, three tuples, an 11-field ``__init__``) cost about 3.5 us at
        every allow-listed connection; the copy shares only immutable values (``features``, the one
        mutable field, is copied)."""
        proto = self.__dict__.get("_credential")
        if proto is None:
            proto = self.section.to_credential()
            object.__setattr__(self, "_credential", proto)  # frozen: not a field (eq, hash, repr unchanged)
        copy = Credential.__new__(Credential)
        copy.__dict__.update(proto.__dict__)
        copy.features = dict(proto.features)
        return copy


def _networks(section: CredentialSection, where: str) -> tuple[Any, ...]:
    out = []
    for net in section.networks:
        try:
            out.append(ipaddress.ip_network(net, strict=False))
        except ValueError:
            raise ConfigError(f"{where}.networks: {net!r} is not an IP network (CIDR)") from None
    if section.kind == CredentialKind.IP and not out:
        raise ConfigError(f"{where}.networks: an ip credential needs at least one network")
    return tuple(out)


def config_records(config: Config) -> list[Record]:
    """The ``[[credentials]]`` of the config file, validated, with plain secrets hashed."""
    out: list[Record] = []
    names: set[str] = set()
    for i, section in enumerate(config.credentials):
        where = f"{config.source}: credentials[{i}]"
        if section.name in names:
            raise ConfigError(f"{where}.name: two credentials are named {section.name!r}")
        names.add(section.name)
        secret_hash = section.secret_hash
        if secret_hash is not None:
            try:
                check_hash_format(secret_hash)
            except ValueError as exc:
                raise ConfigError(f"{where}.secret_hash: {exc}") from None
        elif section.secret is not None:
            secret_hash = hash_secret(section.secret)
        if section.kind in (CredentialKind.APIKEY, CredentialKind.PASSWORD) and not secret_hash:
            raise ConfigError(f"{where}: a {section.kind} credential needs secret or secret_hash")
        if section.kind == CredentialKind.PASSWORD and not section.username:
            raise ConfigError(f"{where}.username: a password credential needs a username")
        out.append(Record(section, "config", secret_hash, networks=_networks(section, where)))
    return out


class CredentialStore:
    """The stored credentials: add, list, disable, remove (the CLI) and lookups (the server).

    ``path``: the SQLite file; ``url``: a PostgreSQL several nodes share. The SQL is the same; the
    look-up cache differs: SQLite re-reads when another connection committed (``data_version``),
    PostgreSQL at most every :attr:`SHARED_TTL` seconds (the bound on a change reaching every node).
    """

    SHARED_TTL = 2.0
    STALE_WAIT = 1.0
    """Seconds a re-read waits for a connection; if the database is away the last rows serve on."""

    def __init__(self, path: Path | None = None, *, url: str | None = None) -> None:
        self.path = path
        self.url = url
        self._lock = threading.Lock()
        self._version: Any = None
        self._rows: list[Record] = []
        self._conn, self._pool = open_store(path, url, SCHEMA, "a credential store")
        # SQLite: the file's commit stamp (its connection above has read: it holds the -shm file);
        # equal to the one read before the rows were last read, the rows serve without a statement
        self._commits = CommitStamp.of(self._conn, path) if self._pool is None and path is not None else None
        self._read_at: object | None = None

    def _q(
        self, sql: str, args: tuple[Any, ...] = (), wait: float | None = None
    ) -> tuple[builtins.list[tuple[Any, ...]], int]:
        """One statement, committed (``?`` placeholders): its rows and rowcount."""
        return one_statement(self._conn, self._pool, sql, args,
                             wait=wait, op="credentials")

    def close(self) -> None:
        with self._lock:
            self._read_at = None
            if self._commits is not None:  # before the connection that keeps the -shm file valid
                self._commits.close()
            if self._pool is not None:
                self._pool.close()
            else:
                self._conn.close()

    def add(
        self,
        name: str,
        kind: CredentialKind | str,
        *,
        username: str | None = None,
        secret: str | None = None,
        networks: Iterable[str] = (),
        options: dict[str, Any] | None = None,
    ) -> str | None:
        """Store a credential; returns the generated secret (API key or password) if one was made."""
        generated: str | None = None
        key_id: str | None = None
        data = {"name": name, "kind": kind, "username": username, "networks": list(networks), **(options or {})}
        try:
            section = CredentialSection.model_validate(data)
        except ValidationError as exc:
            raise CredentialError(format_validation_error("credential", exc)) from None
        if not name or len(name) > 100 or not name.isprintable():
            raise CredentialError("credential names are 1-100 printable characters")
        try:
            _networks(section, "credential")
        except ConfigError as exc:
            raise CredentialError(str(exc)) from None
        if kind == CredentialKind.APIKEY:
            if secret is None:
                key_id, generated = new_api_key()
                secret = generated
        elif kind == CredentialKind.PASSWORD:
            if not username:
                raise CredentialError("a password credential needs --username")
            if secret is None:
                generated = secret = new_password()
        secret_hash = hash_secret(secret) if secret is not None else None
        opts = {k: getattr(section, k) for k in _OPTION_FIELDS}
        with self._lock:
            if username and kind == CredentialKind.PASSWORD:
                clash = self._q(
                    "SELECT name FROM credentials WHERE kind = 'password' AND lower(username) = lower(?)", (username,)
                )[0]
                if clash:
                    raise CredentialError(f"username {username!r} is already used by credential {clash[0][0]!r}")
            try:
                self._q(
                    "INSERT INTO credentials (name, kind, username, key_id, secret_hash, options, disabled, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                    (name, str(kind), username, key_id, secret_hash,
                     json.dumps({**opts, "networks": list(section.networks)}), time.time()),
                )
                self._version = self._read_at = None
            except Exception as exc:
                if "unique" in str(exc).lower():  # SQLite's UNIQUE constraint, PostgreSQL's unique_violation
                    raise CredentialError(f"a credential named {name!r} already exists") from None
                raise
        return generated

    def set_disabled(self, name: str, disabled: bool = True) -> None:
        with self._lock:
            _, count = self._q("UPDATE credentials SET disabled = ? WHERE name = ?", (int(disabled), name))
            self._version = self._read_at = None  # data_version only moves for other connections' commits
        if count == 0:
            raise CredentialError(f"no credential named {name!r}")

    def rotate(self, name: str) -> str:
        """A new generated secret for an ``apikey`` (new key id too) or ``password`` credential; the old
        one stops working at once. Returned once, stored only as a hash."""
        with self._lock:
            rows = self._q("SELECT kind FROM credentials WHERE name = ?", (name,))[0]  # both backends
            if not rows:
                raise CredentialError(f"no credential named {name!r}")
            row = rows[0]
            key_id: str | None
            if row[0] == CredentialKind.APIKEY:
                key_id, secret = new_api_key()
            elif row[0] == CredentialKind.PASSWORD:
                key_id, secret = None, new_password()
            else:
                raise CredentialError(f"credential {name!r} is an IP allow-list: it has no secret to rotate")
            self._q(
                "UPDATE credentials SET key_id = COALESCE(?, key_id), secret_hash = ? WHERE name = ?",
                (key_id, hash_secret(secret), name),
            )
            self._version = self._read_at = None
        return secret

    def remove(self, name: str) -> None:
        with self._lock:
            _, count = self._q("DELETE FROM credentials WHERE name = ?", (name,))
            self._version = self._read_at = None
        if count == 0:
            raise CredentialError(f"no credential named {name!r}")

    def list(self) -> list[dict[str, Any]]:
        """Every stored credential without its secret hash (for ``credentials list``)."""
        with self._lock:
            rows = self._q(
                "SELECT name, kind, username, key_id, options, disabled, created_at FROM credentials ORDER BY name"
            )[0]
        out = []
        for name, kind, username, key_id, options, disabled, created_at in rows:
            out.append({
                "name": name, "kind": kind, "username": username, "key_id": key_id,
                "disabled": bool(disabled), "created_at": created_at, **json.loads(options),
            })
        return out

    def records(self) -> builtins.list[Record]:  # builtins: this class has a method named list
        """All stored credentials; re-read only when another connection changed the file (SQLite),
        or at most every ``SHARED_TTL`` seconds (PostgreSQL).

        Why the commit stamp first (issue 17, main process per connection): ``PRAGMA data_version``
        is a statement (two ``fcntl`` locks, an ``fstat``: about 16-20 us), asked at every SMTP
        connection; the stamp is one ``pread`` (about 2 us). It is read before the check and the
        rows it guards, so a commit by any connection, this one included, made meanwhile is asked
        about at the next call; ``None`` (no ``-shm`` to read) asks the statement as before."""
        with self._lock:
            stamp: object | None = None
            if self._pool is None:
                probe = self._commits
                stamp = probe.stamp() if probe is not None else None
                if stamp is not None and stamp == self._read_at:
                    return self._rows  # no commit to the file since the rows were known current
                version: Any = self._conn.execute("PRAGMA data_version").fetchone()[0]
                fresh = version == self._version
            else:
                now = time.monotonic()
                fresh = self._version is not None and now - self._version < self.SHARED_TTL
                version = now
            if fresh:
                self._read_at = stamp  # read before data_version said nothing changed
                return self._rows
            if self._pool is not None and self._version is not None and not self._pool.health.up:
                return self._rows  # the database is known to be away: don't wait on it, the last rows serve
            try:
                rows = self._q("SELECT name, kind, username, key_id, secret_hash, options, disabled FROM credentials",
                               wait=self.STALE_WAIT)[0]
            except Exception:
                if self._pool is None or self._version is None:
                    raise
                self._version = version  # the shared database is away: the last rows, again in SHARED_TTL
                return self._rows
            out = []
            for name, kind, username, key_id, secret_hash, options, disabled in rows:
                try:
                    section = CredentialSection.model_validate(
                        {"name": name, "kind": kind, "username": username, "disabled": bool(disabled),
                         **json.loads(options)}
                    )
                    out.append(Record(section, "store", secret_hash, key_id, _networks(section, name)))
                except (ValidationError, ConfigError, ValueError) as exc:
                    log.error("credentials.db: skipping unreadable credential %r: %s", name, exc)
            # rows, version and stamp set together (a thread reading meanwhile waits for the lock)
            self._rows, self._version, self._read_at = out, version, stamp
        return out


def open_credential_store(config: Config) -> CredentialStore:
    """The stored credentials of this gateway: ``[storage] url``'s PostgreSQL, else ``credentials.db``."""
    if config.storage.url is not None:
        return CredentialStore(url=config.storage.url)
    return CredentialStore(config.data_dir / "credentials.db")


def has_credential_store(config: Config) -> bool:
    """Whether there is a store to look into (a command must not create the SQLite file just to read)."""
    return config.storage.url is not None or (config.data_dir / "credentials.db").is_file()


class CommitStamp:
    """A cheap answer to "has any connection committed to this SQLite database since?", for caches
    consulted per event (the event recorder's webhook URLs): the WAL-index header, the first 48
    bytes of ``<db>-shm``, read with one ``pread``. SQLite's WAL format documents it: ``iChange``
    counts write transactions, and ``mxFrame``, the salts and the checksums move with every commit
    and every reset of the WAL; a reader sees a commit only once this header says so. Equal stamps
    therefore mean no commit in between, by any connection of any process.

    Why (issue 17, main process per message): ``PRAGMA data_version`` is two ``fcntl`` locks and
    an ``fstat`` (about 20 us here), and the recorder asked it of two stores per event; the
    ``pread`` costs about 2 us.

    Valid only while a connection of this process keeps the database open in WAL mode (SQLite
    then keeps the ``-shm`` file: no other process deletes or reinitialises it): the owner opens
    it after its connection has read, and closes it first. :meth:`stamp` is ``None`` whenever it
    cannot tell (no ``-shm``, a short read), and callers then ask as before. The file's identity
    (device, inode) is part of the stamp and checked again every ``RECHECK`` seconds.
    """

    RECHECK = 1.0
    SIZE = 48

    @classmethod
    def of(cls, conn: Any, path: Path) -> CommitStamp | None:
        """A stamp for ``path`` if ``conn`` (open on it, kept open by the caller) has it in WAL mode;
        ``None`` otherwise (no WAL index: the caller asks the database as before)."""
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return cls(path) if str(mode).lower() == "wal" else None

    def __init__(self, path: Path) -> None:
        self.shm = Path(f"{path}-shm")
        self._fd: int | None = None
        self._ident: tuple[int, int] = (0, 0)
        self._next_check = 0.0

    def stamp(self) -> tuple[tuple[int, int], bytes] | None:
        """``(file identity, WAL-index header)`` now, or ``None`` when it cannot be read."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.RECHECK
            self._follow()
        if self._fd is None:
            return None
        try:
            head = os.pread(self._fd, self.SIZE, 0)
        except OSError:
            return None
        return (self._ident, head) if len(head) == self.SIZE else None

    def _follow(self) -> None:
        """(Re)open ``-shm`` if it is not the file open here (first use, or replaced)."""
        try:
            st = os.stat(self.shm)
        except OSError:
            self.close()
            return
        if self._fd is not None and (st.st_dev, st.st_ino) == self._ident:
            return
        self.close()
        try:
            fd = os.open(self.shm, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return
        st = os.fstat(fd)
        self._fd, self._ident = fd, (st.st_dev, st.st_ino)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StoredWebhooks:
    """``name -> webhook URLs`` of the credentials in ``credentials.db``, for the event recorder.

    The file is opened on first use once it exists (``smtpgate credentials add`` may create it
    while the gateway runs); until then a look-up stats it at most every 5 seconds, not per click.
    :meth:`stamp` says cheaply whether ``credentials.db`` changed (see :class:`CommitStamp`).
    """

    RECHECK = 5.0
    STAMP_AFTER = 5.0
    """Seconds after the file appeared (its ``st_ctime``, never earlier than its creation) before
    :meth:`stamp` answers: the API's endpoint store in the same file looks for it every
    ``WebhookEndpointStore.RECHECK`` (5) seconds until it exists, and must have opened it before an
    answer that includes its rows may be cached (every answer computed later asks it, and it opens)."""

    def __init__(self, path: Path, url: str | None = None) -> None:
        self.path = path
        self.url = url  # [storage] url: the shared store, opened on first use
        self._store: CredentialStore | None = None
        self._next_check = 0.0
        self._stamp: CommitStamp | None = None
        self._stamp_from = 0.0  # when stamp() starts answering (time.time(): STAMP_AFTER after the file appeared)
        # name -> URLs, built from the store's rows when it hands out a new list (it re-read them):
        # a look-up per event is then the store's change check and one dict read, not a scan
        self._by_name: tuple[builtins.list[Record] | None, dict[str, tuple[str, ...]]] = (None, {})

    def __call__(self, name: str) -> builtins.list[str]:
        rows = self._records()
        if rows is None:
            return []
        built_from, by_name = self._by_name
        if rows is not built_from:
            by_name = {}
            for rec in rows:
                if rec.section.webhooks:
                    by_name[rec.name] = by_name.get(rec.name, ()) + tuple(rec.section.webhooks)
            self._by_name = (rows, by_name)  # one assignment: the map always goes with its rows
        return list(by_name.get(name, ()))

    def _records(self) -> builtins.list[Record] | None:
        """The stored credentials (``None``: no file yet), opening the store on first use."""
        if self._store is None:
            now = time.monotonic()
            if now < self._next_check:
                return None
            if self.url is not None:
                self._store = CredentialStore(url=self.url)
            elif not self.path.exists():
                self._next_check = now + self.RECHECK
                return None
            else:
                self._store = CredentialStore(self.path)
        rows = self._store.records()
        if self._stamp is None and self.url is None:  # the connection has read: it holds the -shm file
            try:
                self._stamp_from = os.stat(self.path).st_ctime + self.STAMP_AFTER
            except OSError:  # gone meanwhile: no stamp, the stores are asked
                pass
            else:
                self._stamp = CommitStamp(self.path)
        return rows

    def stamp(self) -> object | None:
        """A value that stays equal while nobody commits to ``credentials.db`` (SQLite only; ``None``:
        no cheap answer, ask the stores). Read before the answers it is to guard. Opens the file
        itself if no event with a credential has yet (events without one are cached too)."""
        if self.url is not None:
            return None
        probe = self._stamp
        if probe is None:
            try:
                self._records()
            except Exception:  # the stores will say why when asked
                return None
            return None  # opened just now: from the next look-up on (and STAMP_AFTER past the file's appearance)
        if time.time() < self._stamp_from:
            return None
        return probe.stamp()

    def close(self) -> None:
        if self._stamp is not None:  # before the connection that keeps the -shm file valid
            self._stamp.close()
            self._stamp = None
        if self._store is not None:
            self._store.close()
            self._store = None
