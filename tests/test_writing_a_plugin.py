"""The README's "Writing your own plugin" example is run exactly as printed, and every
hook spec has its section in the hook reference (Datasette's rule)."""

from __future__ import annotations

import inspect
import re
import shlex
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import Message
from pipeline.app.cli import main
from pipeline.chain.loader import BUILTINS, resolve
from pipeline.contract import hookspecs
from pipeline.toolkit.tokens import TokenSigner, load_signer
from tests.support import ROOT, SAMPLES

DOC = (ROOT / "docs" / "plugins.md").read_text()
README = (ROOT / "README.md").read_text()


def section(title: str, text: str = DOC) -> str:
    """The text under ``## title`` up to the next ``## `` heading, trailing blank lines dropped."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {title}' section"
    return f"## {title}\n{match.group(1)}".rstrip("\n")


def code_block(text: str, lang: str) -> str:
    match = re.search(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)
    assert match, f"no ```{lang} block"
    return match.group(1)


WRITING = section("Writing your own plugin", README)


def test_writing_a_plugin_is_under_30_lines():
    assert len(WRITING.splitlines()) < 30


@pytest.fixture
def example(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The doc's plugin file and config written verbatim into a fresh directory (with samples/),
    and the doc's replay command as argv."""
    (tmp_path / "greeting.py").write_text(code_block(WRITING, "python"))
    (tmp_path / "smtpgate.toml").write_text(code_block(WRITING, "toml"))
    (tmp_path / "samples").symlink_to(SAMPLES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SMTPGATE_CONFIG", raising=False)
    commands = re.findall(r"`(smtpgate replay [^`]+)`", WRITING)
    assert len(commands) == 1
    argv = shlex.split(commands[0])
    assert argv[0] == "smtpgate"
    return argv[1:]


def test_the_documented_plugin_runs_through_the_documented_replay_command(example):
    result = CliRunner().invoke(main, example)
    assert result.exit_code == 0, result.output
    out = Message(result.stdout_bytes)
    assert out.get("X-Greeting") == "hi there"  # the config from the doc reached the plugin
    assert re.search(r"on_message\s+greeting\s+continue", result.stderr)  # --explain
    assert "add_header X-Greeting = hi there" in result.stderr


def test_the_documented_plugin_rejects_what_it_says_it_rejects(example):
    result = CliRunner().invoke(main, [*example, "--mail-from", "bulk@spam.example"])
    assert result.exit_code == 1
    assert "rejected by greeting (on_message): 550 5.7.1 Not from you" in result.stderr


def test_the_documented_config_passes_check_config(example):
    result = CliRunner().invoke(main, ["check-config", "--config", "smtpgate.toml"])
    assert result.exit_code == 0, result.output
    assert "chain (3): header_validation, greeting, dkim_sign" in result.output


def test_the_testing_a_plugin_snippet_runs(monkeypatch: pytest.MonkeyPatch, data_dir: Path):
    monkeypatch.chdir(ROOT)
    code = code_block(WRITING, "python") + "\n" + code_block(section("Testing a plugin"), "python")
    exec(compile(code, "docs/plugins.md", "exec"), {"__name__": "doc_example"})


@pytest.mark.parametrize("hook", hookspecs.ALL_PHASES)
def test_every_hook_has_a_section_in_the_hook_reference(hook):
    """Datasette's rule: a hook nobody documented is a hook nobody can use."""
    reference = section("Hook reference")
    match = re.search(rf"^### {hook}\n(.*?)(?=^### |\Z)", reference, re.M | re.S)
    assert match, f"docs/plugins.md: no '### {hook}' under '## Hook reference'"
    text = match.group(1)
    assert "Phase:" in text
    for arg in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert f"`{arg}`" in text, f"{hook}: argument {arg} is not documented"


def test_the_hook_reference_has_no_section_for_a_hook_that_does_not_exist():
    documented = re.findall(r"^### (on_\w+)$", section("Hook reference"), re.M)
    assert documented == list(hookspecs.ALL_PHASES)  # and in the order a message meets them


def test_the_docs_list_every_builtin_plugin():
    from pipeline.chain.loader import BUILTINS

    for name in BUILTINS:
        assert f"| `{name}` |" in DOC, f"built-in {name} is missing from the table in docs/plugins.md"


@pytest.mark.parametrize("module", ["pipeline", "pipeline.toolkit"])
def test_the_public_api_section_names_every_exported_name_exactly(module: str):
    """``docs/plugins.md`` lists what ``pipeline`` and ``pipeline.toolkit`` export, no more, no less."""
    import importlib

    api = section("The public API")
    table = re.search(rf"^`{re.escape(module)}` \(.*?\n\n(.*?)\n\n", api, re.M | re.S)
    assert table, f"no table for {module}"
    documented = set()
    for row in table.group(1).splitlines()[2:]:
        documented |= set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", row.split("|")[1]))
    assert documented == set(importlib.import_module(module).__all__)


def test_every_public_name_is_importable_and_the_deprecated_aliases_still_work():
    import importlib

    import pipeline
    import pipeline.toolkit

    for module in (pipeline, pipeline.toolkit):
        assert all(hasattr(module, name) for name in module.__all__)
    for old, new in (("html", "toolkit.html"), ("testing", "chain.driver")):
        sys.modules.pop(f"pipeline.{old}", None)  # imported earlier in the session: import it afresh
        with pytest.warns(DeprecationWarning, match=f"pipeline.{old} is deprecated"):
            assert importlib.import_module(f"pipeline.{old}") is importlib.import_module(f"pipeline.{new}")
    # pipeline.tokens held the signer and the tracking plugin base, now in two toolkit modules
    sys.modules.pop("pipeline.tokens", None)
    with pytest.warns(DeprecationWarning, match="pipeline.tokens is deprecated"):
        old_tokens = importlib.import_module("pipeline.tokens")
    from pipeline.toolkit.tracking import TrackingPlugin

    assert old_tokens.TokenSigner is TokenSigner and old_tokens.load_signer is load_signer
    assert old_tokens.TrackingPlugin is TrackingPlugin


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_page_has_a_true_at_a_glance_section(name: str):
    """Every docs/plugins/NAME.md has the same ``## At a glance`` table, and it says what the code does."""
    cls, _ = resolve(name)
    page = (ROOT / "docs" / "plugins" / f"{name}.md").read_text()
    glance = section("At a glance", page)
    rows = dict(re.findall(r"^\| (\w+) \| (.*) \|$", glance, re.M))
    hooks = [h for h in hookspecs.ALL_PHASES if hasattr(getattr(cls, h, None), "smtpgate_impl")]
    assert rows["hooks"] == ", ".join(f"`{h}`" for h in hooks)
    if cls.feature:
        who = "a message header may set it" if cls.feature_by_header is not False else "policy: no header may set it"
        assert rows["switch"] == f"`{cls.feature}`, {'on' if cls.feature_default else 'off'} by default, {who}"
    else:
        assert rows["switch"] == "none (always on)"
    assert rows["config"] == f"`[plugins.{name}]`: " + ", ".join(f"`{k}`" for k in cls.Config.model_fields)
    assert rows["tests"] == f"`tests/test_plugin_{name}.py`" and (ROOT / "tests" / f"test_plugin_{name}.py").is_file()


# -- issue 2, point 6 / docs: the built-in table in docs/plugins.md says what the code does --------


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_docs_builtin_table_names_each_plugins_hooks_and_switch(name: str) -> None:
    """The table drifted once (list_unsubscribe's switch shown as "-" after it got one)."""
    doc = (ROOT / "docs" / "plugins.md").read_text()
    row = re.search(rf"^\| `{name}` \| ([^|]+) \| ([^|]+) \|", doc, re.M)
    assert row, f"docs/plugins.md has no built-in row for {name}"
    cls, _ = resolve(name)
    hooks = sorted(n for n in dir(cls) if n.startswith("on_") and hasattr(getattr(cls, n), "smtpgate_impl"))
    assert sorted(h.strip() for h in row.group(1).split(",")) == hooks
    assert row.group(2).strip() == (cls.feature or "-")
