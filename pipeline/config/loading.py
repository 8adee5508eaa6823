"""Loading a config: which file an instance uses, TOML, environment overrides
(``SMTPGATE_<SECTION>__<KEY>``), strict validation, and errors that name the file and key."""

from __future__ import annotations

import datetime
import json
import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

import pipeline.config.base as _base
from pipeline.config.base import ENV_PREFIX, ConfigError
from pipeline.config.sections import Config
from pipeline.config.storage import StorageSection

ModelT = TypeVar("ModelT", bound=BaseModel)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _origin(key: str, source: str, origins: dict[str, str] | None) -> str:
    """The environment variable that set ``key`` (or a table above it), else ``source``."""
    for prefix, variable in (origins or {}).items():
        if key == prefix or key.startswith((prefix + ".", prefix + "[")):
            return f"${variable}"
    return source


def format_validation_error(
    source: str, exc: ValidationError, prefix: str = "", origins: dict[str, str] | None = None
) -> str:
    """One line per problem: ``file: key: problem`` (``$VARIABLE: key: problem`` for overrides)."""
    lines = []
    for err in exc.errors():
        key = _loc(tuple(err["loc"]))
        key = f"{prefix}.{key}" if prefix and key else (prefix or key)
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{_origin(key, source, origins)}: {key or '(top level)'}: {msg}")
    return "\n".join(lines)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()  # TOML dates: no key takes one, so the string is refused as usual
    return str(value)  # Path objects from Python callers


def validate_strict(model: type[ModelT], data: Any) -> ModelT:
    """Validate TOML-shaped ``data`` with strict types: JSON-mode strictness refuses string-to-int and
    string- or number-to-bool coercion but still reads paths from strings (Python-mode would not)."""
    return model.model_validate_json(json.dumps(data, default=_json_value), strict=True)


def _env_value(text: str) -> Any:
    """An environment value read as a TOML value (``25``, ``true``, ``["a"]``), else as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def env_overrides() -> list[tuple[list[str | int], str, Any]]:
    """``SMTPGATE_<SECTION>__<KEY>[__<KEY>...]`` variables as (key path, variable, value), sorted;
    names lower-cased, a number is a list index; ``SMTPGATE_CONFIG``/``_DATA_DIR`` are not overrides."""
    out: list[tuple[list[str | int], str, Any]] = []
    for variable in sorted(os.environ):
        parts = variable[len(ENV_PREFIX) :].lower().split("__")
        if variable.startswith(ENV_PREFIX) and len(parts) > 1 and all(parts):
            path: list[str | int] = [int(p) if p.isdigit() else p for p in parts]
            out.append((path, variable, _env_value(os.environ[variable])))
    return out


def _apply_override(data: dict[str, Any], path: list[str | int], value: Any) -> None:
    """Set ``path`` in ``data``; a list index must exist (a missing top-level list starts as its default)."""
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ValueError(f"no list item {part} to override")
        elif not isinstance(node, dict):
            raise ValueError("not a table")
        elif part not in node and not last:
            field = Config.model_fields[part].get_default(call_default_factory=True) if (
                i == 0 and part in Config.model_fields) else {}
            node[part] = [x.model_dump(mode="json") for x in field] if isinstance(field, list) else {}
        if last:
            node[part] = value
        else:
            node = node[part]


def parse_config(data: dict[str, Any], source: str = "<defaults>", base_dir: Path | None = None) -> Config:
    """Validate ``data`` (from ``source``) with the environment's overrides applied.

    A relative ``data_dir`` from the file is taken relative to ``base_dir`` (the file's folder),
    so every command finds the same instance from whichever directory it runs.
    """
    data = json.loads(json.dumps(data, default=_json_value))  # a copy the overrides may change
    origins: dict[str, str] = {}
    errors: list[str] = []
    for path, variable, value in env_overrides():
        key = _loc(tuple(path))
        try:
            _apply_override(data, path, value)
        except ValueError as exc:
            errors.append(f"${variable}: {key}: {exc}")
            continue
        origins[key] = variable
    try:
        cfg = validate_strict(Config, data)
    except ValidationError as exc:
        errors.append(format_validation_error(source, exc, origins=origins))
    if errors:
        raise ConfigError("\n".join(errors), raw=data, source=source, origins=origins)
    cfg.source = source
    cfg.overrides = origins
    env_dir = os.environ.get("SMTPGATE_DATA_DIR")
    if env_dir and "data_dir" not in data.get("gateway", {}):
        cfg.gateway.data_dir = Path(env_dir)
    elif base_dir is not None and "gateway.data_dir" not in origins and not cfg.gateway.data_dir.is_absolute():
        cfg.gateway.data_dir = base_dir / cfg.gateway.data_dir
    env_url = os.environ.get("SMTPGATE_STORAGE_URL")  # the one variable for the shared store
    if env_url and "url" not in data.get("storage", {}):
        try:
            cfg.storage = StorageSection(url=env_url, pool_size=cfg.storage.pool_size)
        except ValidationError as exc:
            raise ConfigError(format_validation_error("$SMTPGATE_STORAGE_URL", exc, "storage")) from None
    return cfg


def find_config(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Which file an instance uses: ``path``, ``$SMTPGATE_CONFIG``, ``./smtpgate.toml``,
    :data:`SYSTEM_CONFIG`; ``None`` means the embedded defaults (as ``serve`` and every command)."""
    if path is not None:
        return Path(path)
    env = os.environ.get("SMTPGATE_CONFIG")
    if env:
        return Path(env)
    for candidate in (Path("smtpgate.toml"), _base.SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the file :func:`find_config` names, else the embedded defaults."""
    p = find_config(path)
    if p is None:
        return parse_config({})
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    return parse_config(data, str(p), base_dir=p.absolute().parent)
