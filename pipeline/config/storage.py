"""Config section ``[storage]``: where the spool, events, webhook outbox and stoplist live
(docs/scaling.md). Re-exported by :mod:`pipeline.config`, whose :class:`~pipeline.config.Config` holds it.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from pipeline.config.base import Secret, Section


class StorageSection(Section):
    """Where the spool, events, webhook outbox and stoplist live (docs/scaling.md).

    ``url`` unset: the embedded SQLite files in ``data_dir`` (one node). ``postgresql://user:pw@host:port/db``
    (also as ``env:NAME`` / ``file:PATH``, or ``$SMTPGATE_STORAGE_URL`` when the file names none):
    one PostgreSQL that several gateway nodes share.
    """

    url: Secret | None = None
    pool_size: int = Field(default=10, ge=2)  # PostgreSQL connections per store per process (at most)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not v.startswith(("postgresql://", "postgres://")):
            scheme = v.split("://", 1)[0] if "://" in v else v[:20]
            raise ValueError(f"unsupported storage url {scheme!r}: expected postgresql://user:password@host:port/dbname")
        return v

    @property
    def is_postgres(self) -> bool:
        return self.url is not None
