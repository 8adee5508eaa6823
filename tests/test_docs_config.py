"""docs/configuration.md's reference lists every key of every config section, and nothing else,
so the reference cannot silently rot when a key is added, renamed or removed."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from pipeline.config import Config, Section

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
_SECTION_ROW = re.compile(r"^\|\s*\*\*`\[\[?([a-z_]+)(?:\.<name>)?\]\]?`\*\*\s*\|")


def section_models() -> dict[str, type[BaseModel]]:
    """Top-level key -> its section model (``listeners``: the model of one list item)."""
    out: dict[str, type[BaseModel]] = {}
    for name, field in Config.model_fields.items():
        if field.exclude:
            continue
        ann = field.annotation
        args = typing.get_args(ann)
        model = ann if isinstance(ann, type) else (args[-1] if args else None)
        if isinstance(model, type) and issubclass(model, Section):
            out[name] = model
    return out


def documented() -> dict[str, set[str]]:
    """Section -> the keys named in the first column of the reference rows under it."""
    text = DOC.read_text()
    reference = text.split("\n## Reference\n", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    current: str | None = None
    for line in reference.splitlines():
        m = _SECTION_ROW.match(line)
        if m:
            current = m.group(1)
            out.setdefault(current, set())
            continue
        if current is None or not line.startswith("|") or line.startswith("|---") or line.startswith("| key"):
            continue
        first = line.split("|")[1]
        out[current].update(re.findall(r"`([a-z_0-9]+)`", first))
    return out


def documented_defaults() -> list[tuple[str, str, str]]:
    """``(section, key, default cell text)`` for each key whose reference row states a default
    (a row naming several keys gives one value per key, or one value for all)."""
    text = DOC.read_text()
    reference = text.split("\n## Reference\n", 1)[1].split("\n## ", 1)[0]
    out: list[tuple[str, str, str]] = []
    current: str | None = None
    for line in reference.splitlines():
        m = _SECTION_ROW.match(line)
        if m:
            current = m.group(1)
            continue
        cells = line.split("|")
        if current is None or len(cells) < 4 or line.startswith(("|---", "| key")):
            continue
        keys = re.findall(r"`([a-z_0-9]+)`", cells[1])
        values = [v.strip() for v in cells[2].split(", ")] if len(keys) > 1 else [cells[2].strip()]
        if len(values) == 1 and len(keys) > 1:
            values *= len(keys)
        if len(values) == len(keys):
            out += [(current, k, v) for k, v in zip(keys, values, strict=True) if v]
    return out


def matches(cell: str, default: object) -> bool | None:
    """Whether a documented default agrees with the model's; ``None`` for prose (not checkable)."""
    cell = cell.split(" (")[0].strip()
    if cell in ("true", "false"):
        return default is (cell == "true")
    if re.fullmatch(r"\d+(\.\d+)?", cell):
        return isinstance(default, int | float) and not isinstance(default, bool) and float(cell) == default
    if cell == "none":
        return default is None
    if cell.startswith("`") and cell.endswith("`") and "<" not in cell:  # `<data_dir>/...`: computed
        inner = cell[1:-1]
        if isinstance(default, list):
            return inner == "[]" and default == [] or inner == ", ".join(map(str, default))
        if isinstance(default, dict):
            return inner == "{}" and default == {}
        return inner == ('""' if default == "" else str(default))
    return None


def test_documented_defaults_match_the_models():
    models = section_models()
    wrong, checked = [], 0
    for section, key, cell in documented_defaults():
        field = models[section].model_fields.get(key)
        if field is None or field.is_required():
            continue
        ok = matches(cell, field.get_default(call_default_factory=True))
        checked += ok is not None
        if ok is False:
            wrong.append(f"[{section}] {key}: documented {cell!r}, model {field.get_default(call_default_factory=True)!r}")
    assert wrong == []
    assert checked >= 50  # the parser still understands the table


def test_every_section_is_in_the_reference():
    assert set(section_models()) - {"egresses"} <= set(documented())


@pytest.mark.parametrize("section", sorted(set(section_models()) - {"egresses"}))
def test_every_key_is_documented_and_every_documented_key_exists(section):
    keys = set(section_models()[section].model_fields)
    listed = documented()[section]
    assert sorted(keys - listed) == [], f"docs/configuration.md reference lacks [{section}] keys"
    assert sorted(listed - keys) == [], f"docs/configuration.md documents [{section}] keys that do not exist"


def test_named_egresses_share_the_egress_model():
    """``[egresses.<name>]`` is documented by the ``[egress]`` rows: true only while they share one model."""
    assert section_models()["egresses"] is section_models()["egress"]
