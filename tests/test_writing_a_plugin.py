"""The README's "Writing your own plugin" example is run exactly as printed, and every
hook spec has its section in the hook reference (Datasette's rule)."""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT, SAMPLES

from pipeline.app.cli import main
from pipeline.contract import hookspecs
from pipeline.contract.message import Message

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
