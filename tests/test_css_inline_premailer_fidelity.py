"""css_inline gives byte for byte what it gave before it was made faster.

``tests/golden/css_inline_premailer.json`` holds the sha256 of every HTML part of every sample,
every shared-corpus template and a few premailer corner cases after the plugin's transform,
written by :mod:`tests.support.css_inline_golden` on the code before the per-part overheads were
removed (premailer's own output, the css_inline engine's, and premailer with ``keep_style_tags``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import CORPUS
from tests.support.css_inline_golden import CONFIGS, GOLDEN, digests, inputs, plugin

EXPECTED: dict[str, dict[str, Any]] = json.loads(GOLDEN.read_text())
AVAILABLE = inputs()


@pytest.fixture(scope="module")
def plugins() -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        yield {name: plugin(cfg, tmp) for name, cfg in CONFIGS.items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_html_part_is_inlined_to_exactly_the_golden_bytes(name: str, plugins: dict[str, Any]) -> None:
    if name not in AVAILABLE:
        assert name.startswith("corpus/"), f"{name} is in the golden file but missing from the tree"
        pytest.skip(f"shared corpus not found at {CORPUS.parent} (set SMTPGATE_CORPUS)")
    expected = EXPECTED[name]
    for config, instance in plugins.items():
        got = digests(AVAILABLE[name], instance)
        assert got["input"] == expected["input"], f"{name}: the input changed; regenerate the golden file"
        assert got["output"] == expected[config], f"{name}: {config} output differs from the golden bytes"


def test_every_sample_is_in_the_golden_file() -> None:
    missing = [name for name in AVAILABLE if name not in EXPECTED]
    assert not missing, f"not in {GOLDEN.name}: {missing}"
