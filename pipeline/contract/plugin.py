"""The plugin contract: what a plugin class looks like and what it is given.

A plugin is a class with a unique ``name``, an optional ``feature`` switch, a ``Config`` model
(validated; unknown keys are errors) and methods marked ``@hookimpl`` named after the hooks in
:mod:`pipeline.contract.hookspecs`. Subclassing :class:`Plugin` is convenient, not required.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from pipeline.config import Config


class PluginConfig(BaseModel):
    """Base for a plugin's config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


@dataclass
class PluginEnv:
    """What the gateway gives every plugin at construction: read-only facts, not internals."""

    config: Config
    hostname: str
    data_dir: Path
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("smtpgate.plugin"))


class Plugin:
    """Convenience base class: stores ``config`` and ``env``."""

    name: ClassVar[str] = ""
    feature: ClassVar[str | None] = None
    version: ClassVar[str] = "0"
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    seals_message: ClassVar[bool] = False  # True for signers: nothing may edit after them

    def __init__(self, config: Any, env: PluginEnv) -> None:
        self.config = config
        self.env = env
        self.log = logging.getLogger(f"smtpgate.plugin.{self.name}")
