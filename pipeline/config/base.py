"""The base of every config section, the config error and secret references (``env:``/``file:``).

Its own module so every section module and the loader can import it without a cycle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ConfigError(Exception):
    """A configuration problem; the message names the file, the key and the problem.

    ``raw`` is the parsed (but invalid) data when the core sections failed, so the CLI can still
    check the plugin sections and report every error of the file in one run.
    """

    def __init__(
        self, message: str, raw: dict[str, Any] | None = None, source: str = "", origins: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.raw = raw
        self.source = source
        self.origins = origins or {}


SYSTEM_CONFIG = Path("/etc/smtpgate/smtpgate.toml")  # the last place find_config looks (a packaged install)
ENV_PREFIX = "SMTPGATE_"


def resolve_secret(value: Any) -> Any:
    """``env:NAME`` -> the environment variable, ``file:PATH`` -> the file's content (stripped)."""
    if isinstance(value, str):
        if value.startswith("env:"):
            name = value[4:]
            if name not in os.environ:
                raise ValueError(f"environment variable {name} is not set")
            return os.environ[name]
        if value.startswith("file:"):
            path = Path(value[5:]).expanduser()
            try:
                return path.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    return value


Secret = Annotated[str, BeforeValidator(resolve_secret)]
