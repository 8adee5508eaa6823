"""The spool: where an accepted message is made durable before the client hears ``250``.

:class:`~pipeline.ports.Spool` is the interface every caller uses (the ingress sees only its
:class:`~pipeline.ports.SpoolWriter` half); :class:`~pipeline.spool.sqlite.SqliteSpool` is the
embedded backend; :class:`~pipeline.spool.postgres.PostgresSpool` the shared one (``claim`` is
``SELECT ... FOR UPDATE SKIP LOCKED`` with the same lease column). :func:`open_spool` picks one
from ``[storage] url``.
"""

from __future__ import annotations

from pipeline.config import Config
from pipeline.contract.vocabulary import FINAL_STATES, RecipientState
from pipeline.ports import QueuedMessage, RecipientOutcome, Spool

STATES = tuple(RecipientState)


def open_spool(config: Config) -> Spool:
    """The gateway's spool: PostgreSQL when ``[storage] url`` is set, else ``<data_dir>/spool.db``."""
    if config.storage.url is not None:
        from pipeline.spool.postgres import PostgresSpool  # psycopg is loaded only when used

        return PostgresSpool(config.storage.url, pool_size=config.storage.pool_size)
    from pipeline.spool.sqlite import SqliteSpool

    return SqliteSpool(config.data_dir / "spool.db")


def has_spool(config: Config) -> bool:
    """Whether there is a spool to read (a read-only command must not create ``spool.db``)."""
    return config.storage.url is not None or (config.data_dir / "spool.db").is_file()


__all__ = ["FINAL_STATES", "STATES", "QueuedMessage", "RecipientOutcome", "RecipientState", "Spool", "has_spool",
           "open_spool"]
