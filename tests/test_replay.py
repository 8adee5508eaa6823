"""``smtpgate replay``: the server's admission and processing code, in process, over files.

Most tests use a chain of plugins written here (enabled by file path in a tmp config), so they do
not depend on the built-ins; the last tests run the default chain over every sample.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import mailbox
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pipeline.app.cli import main
from pipeline.app.replay import (
    ReplayError,
    collect_inputs,
    output_path,
    read_message_file,
    render_diff,
    replay_message,
)
from pipeline.chain.loader import PluginSet
from pipeline.chain.runner import Chain
from pipeline.config import load_config
from pipeline.contract.message import Message
from tests.support import SAMPLES, sample_files

PLUGINS = """
from pipeline import Discard, MessageContext, Plugin, PluginConfig, Reject, TempFail, hookimpl


class Gatekeeper(Plugin):
    name = "gatekeeper"

    @hookimpl
    def on_mail_from(self, address):
        if address.endswith("@blocked.example"):
            return Reject(550, "5.7.1", "Sender blocked")

    @hookimpl
    def on_rcpt_to(self, address):
        if address.startswith("nobody@"):
            return Reject(550, "5.1.1", "No such user")

    @hookimpl
    def on_message(self, ctx):
        subject = ctx.message.get("Subject") or ""
        if "REJECT" in subject:
            return Reject(554, "5.7.1", "Content refused")
        if "BOOM" in subject:
            raise RuntimeError("boom")
        if "DROP" in subject:
            return Discard("dropped")


class Stamp(Plugin):
    name = "stamp"

    class Config(PluginConfig):
        value: str = "stamped"

    @hookimpl
    def on_message(self, ctx):
        ctx.message.add_header("X-Stamp", self.config.value)


class Shout(Plugin):
    name = "shout"

    @hookimpl
    def on_transform(self, ctx):
        for part in ctx.message.html_parts():
            ctx.message.replace_html(part, part.text().replace("</body>", "<p>shouted</p></body>"))


class PerRcpt(Plugin):
    name = "per_rcpt"
    feature = "trackclicks"
    feature_default = True

    @hookimpl
    def on_personalize(self, ctx):
        ctx.message.add_header("X-Rcpt", ctx.recipient)


class Suppress(Plugin):
    name = "suppress"

    @hookimpl
    def on_personalize(self, ctx):
        if ctx.recipient.startswith("bounced@"):
            return Reject(550, "5.1.1", "Recipient suppressed")
        if ctx.recipient.startswith("later@"):
            return TempFail(451, "4.3.0", "Suppression list unavailable")
"""


@pytest.fixture
def env(tmp_path: Path, data_dir: Path) -> Path:
    """A tmp dir with plugins.py and smtpgate.toml (a chain of the plugins above)."""
    plugins = tmp_path / "plugins_under_test.py"
    plugins.write_text(PLUGINS)
    chain = ", ".join(f'"{plugins}:{c}"' for c in ("Gatekeeper", "Stamp", "Shout", "PerRcpt", "Suppress"))
    (tmp_path / "smtpgate.toml").write_text(
        textwrap.dedent(
            f"""
            [chain]
            plugins = [{chain}]
            timeout = 5
            [plugins.stamp]
            value = "from-config"
            [[credentials]]
            name = "noclicks"
            features = {{ trackclicks = false }}
            locked = ["trackclicks"]
            [[credentials]]
            name = "off"
            disabled = true
            """
        )
    )
    return tmp_path


def replay(env: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["replay", "--config", str(env / "smtpgate.toml"), *args])


def sample_with(
    env: Path,
    name: str,
    subject: str | None = None,
    extra: bytes = b"",
    source: str = "02-newsletter-alternative.eml",
) -> Path:
    raw = (SAMPLES / source).read_bytes()
    if subject is not None:
        raw = re.sub(rb"(?m)^Subject: .*\r\n", f"Subject: {subject}\r\n".encode(), raw, count=1)
    if extra:
        raw = raw.replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n\r\n", 1)
    path = env / name
    path.write_bytes(raw)
    return path


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def test_replay_writes_one_final_copy_per_recipient_into_out_dir(env):
    src = sample_with(env, "news.eml")
    out = env / "out"
    result = replay(
        env, str(src), "--out", str(out), "--rcpt", "ann@example.org", "--rcpt", "bob@example.net"
    )
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["news.ann@example.org.eml", "news.bob@example.net.eml"]
    for rcpt in ("ann@example.org", "bob@example.net"):
        data = (out / f"news.{rcpt}.eml").read_bytes()
        msg = Message(data)
        assert msg.get("X-Stamp") == "from-config"
        assert msg.get("X-Rcpt") == rcpt
        assert "<p>shouted</p></body>" in msg.html_parts()[0].text()
    assert f"written to {out}/news.ann@example.org.eml" in result.output


def test_untouched_parts_come_out_byte_identical(env):
    src = sample_with(env, "news.eml")
    out = env / "out"
    assert replay(env, str(src), "--out", str(out)).exit_code == 0
    (copy,) = out.iterdir()
    before, after = Message(src.read_bytes()), Message(copy.read_bytes())
    assert after.text_parts()[0].as_bytes() == before.text_parts()[0].as_bytes()
    assert after.html_parts()[0].as_bytes() != before.html_parts()[0].as_bytes()


def test_envelope_defaults_come_from_from_and_to_headers(env):
    src = sample_with(env, "news.eml")
    result = replay(env, str(src))
    assert result.exit_code == 0, result.output
    assert "(MAIL FROM:<newsletter@example.com>)" in result.output
    assert "  jane.doe@example.org: ready," in result.output


def test_mail_from_and_rcpt_options_override_the_headers(env):
    src = sample_with(env, "news.eml")
    result = replay(env, str(src), "--mail-from", "bounces@example.com", "--rcpt", "x@example.net")
    assert result.exit_code == 0, result.output
    assert "(MAIL FROM:<bounces@example.com>)" in result.output
    assert "  x@example.net: ready," in result.output
    assert "jane.doe" not in result.output


def test_out_dash_writes_the_message_to_stdout_and_the_report_to_stderr(env):
    src = sample_with(env, "news.eml")
    result = replay(env, str(src), "--out", "-")
    assert result.exit_code == 0, result.stderr
    msg = Message(result.stdout_bytes)
    assert msg.get("X-Stamp") == "from-config"
    assert "news.eml: accepted" in result.stderr


def test_out_dash_with_several_copies_is_an_mbox(env, tmp_path):
    src = sample_with(env, "news.eml")
    result = replay(env, str(src), "--out", "-", "--rcpt", "a@example.org", "--rcpt", "b@example.org")
    assert result.exit_code == 0, result.stderr
    box = tmp_path / "out.mbox"
    box.write_bytes(result.stdout_bytes)
    messages = list(mailbox.mbox(str(box)))
    assert [m["X-Rcpt"] for m in messages] == ["a@example.org", "b@example.org"]


# ------------------------------------------------------------------------------------------------
# Verdicts and exit status
# ------------------------------------------------------------------------------------------------


def test_rejected_message_exits_non_zero_and_prints_the_smtp_reply(env):
    src = sample_with(env, "bad.eml", subject="please REJECT me")
    out = env / "out"
    result = replay(env, str(src), "--out", str(out))
    assert result.exit_code == 1
    assert "bad.eml: rejected by gatekeeper (on_message): 554 5.7.1 Content refused" in result.output
    assert not out.exists() or not any(out.iterdir())


def test_plugin_exception_is_a_451_with_the_plugin_named(env):
    src = sample_with(env, "boom.eml", subject="BOOM")
    result = replay(env, str(src))
    assert result.exit_code == 1
    assert "rejected by gatekeeper (on_message): 451 4.3.0 " in result.output
    assert "Traceback" not in result.output


def test_sender_rejected_at_mail_from(env):
    src = sample_with(env, "news.eml")
    result = replay(env, str(src), "--mail-from", "spam@blocked.example")
    assert result.exit_code == 1
    assert "rejected by gatekeeper (on_mail_from): 550 5.7.1 Sender blocked" in result.output


def test_a_refused_recipient_is_reported_and_the_others_still_get_their_copy(env):
    src = sample_with(env, "news.eml")
    out = env / "out"
    result = replay(
        env, str(src), "--rcpt", "nobody@example.org", "--rcpt", "ok@example.org", "--out", str(out)
    )
    assert result.exit_code == 1
    assert "  nobody@example.org: refused at RCPT: 550 5.1.1 No such user" in result.output
    assert [p.name for p in out.iterdir()] == ["news.ok@example.org.eml"]


def test_every_recipient_refused_rejects_the_message(env):
    src = sample_with(env, "news.eml")
    result = replay(env, str(src), "--rcpt", "nobody@example.org")
    assert result.exit_code == 1
    assert "rejected by on_rcpt_to: 550 5.1.1 No such user" in result.output


def test_a_copy_stopped_in_processing_is_not_written_and_exits_non_zero(env):
    src = sample_with(env, "news.eml")
    out = env / "out"
    result = replay(
        env,
        str(src),
        "--out",
        str(out),
        "--rcpt",
        "bounced@example.org",
        "--rcpt",
        "later@example.org",
        "--rcpt",
        "ok@example.org",
    )
    assert result.exit_code == 1
    assert "  bounced@example.org: not delivered: 550 5.1.1 Recipient suppressed" in result.output
    assert "  later@example.org: not delivered: 451 4.3.0 Suppression list unavailable" in result.output
    assert [p.name for p in out.iterdir()] == ["news.ok@example.org.eml"]


def test_discarded_message_is_success_without_output(env):
    src = sample_with(env, "drop.eml", subject="DROP this")
    out = env / "out"
    result = replay(env, str(src), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "drop.eml: discarded by gatekeeper (on_message): 250 2.0.0 OK" in result.output
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# --explain, --diff, --credential
# ------------------------------------------------------------------------------------------------


def test_explain_lists_each_plugins_verdict_time_and_edits(env):
    src = sample_with(env, "news.eml", extra=b"X-SMTPeter-TrackClicks: false")
    result = replay(env, str(src), "--explain")
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"on_mail_from\s+gatekeeper\s+continue\s+\d+\.\d+ ms", out)
    assert re.search(r"on_message\s+stamp\s+continue\s+\d+\.\d+ ms", out)
    assert "add_header X-Stamp = from-config" in out
    assert re.search(r"on_transform\s+shout\s+continue", out)
    assert "replace_html part 1.2 (text/html)" in out
    assert re.search(r"on_personalize\s+per_rcpt\s+skipped \(trackclicks off\)", out)
    assert re.search(r"on_personalize\s+suppress\s+continue\s+\d+\.\d+ ms \[jane\.doe@example\.org\]", out)


def test_diff_shows_headers_and_decoded_html_before_and_after(env):
    src = sample_with(env, "news.eml", extra=b"X-SMTPeter-TrackOpens: true")
    result = replay(env, str(src), "--diff")
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"--- {src} (before) headers" in out and "+++ jane.doe@example.org (after) headers" in out
    assert "-X-SMTPeter-TrackOpens: true" in out
    assert "+X-Stamp: from-config" in out
    assert "+X-Rcpt: jane.doe@example.org" in out
    assert f"--- {src} (before) HTML part 1.2" in out
    assert (
        "+<p>shouted</p></body>" in out or "+</table><p>shouted</p></body>" in out or "<p>shouted</p>" in out
    )
    assert "text part" not in out  # the untouched text alternative has no diff


def test_render_diff_decodes_quoted_printable_and_rfc2047():
    raw = (SAMPLES / "05-spanish-iso-8859-1.eml").read_bytes()
    msg = Message(raw)
    part = msg.html_parts()[0]
    msg.replace_html(part, part.text().replace("</body>", "<p>¡Olé!</p></body>"))
    diff = render_diff(raw, msg.as_bytes(), "a", "b")
    assert "+<p>¡Olé!</p></body>" in diff or "<p>¡Olé!</p>" in diff
    assert "=E1" not in diff
    assert render_diff(raw, raw, "a", "b") == "(no changes)"


def test_credential_feature_set_applies_and_its_lock_beats_the_header(env):
    src = sample_with(env, "news.eml", extra=b"X-SMTPeter-TrackClicks: true")
    out = env / "out"
    result = replay(env, str(src), "--credential", "noclicks", "--out", str(out))
    assert result.exit_code == 0, result.output
    (copy,) = out.iterdir()
    msg = Message(copy.read_bytes())
    assert "X-Rcpt" not in msg  # per_rcpt is behind trackclicks, which the credential locks off
    assert "X-SMTPeter-TrackClicks" not in msg
    without = replay(env, str(src), "--out", str(env / "out2"))
    (copy2,) = (env / "out2").iterdir()
    assert without.exit_code == 0 and "X-Rcpt" in Message(copy2.read_bytes())


def test_unknown_or_disabled_credential_is_a_one_line_error(env):
    src = sample_with(env, "news.eml")
    result = replay(env, str(src), "--credential", "nope")
    assert result.exit_code == 2
    assert "no credential named 'nope' (known: noclicks, off)" in result.output
    assert "Traceback" not in result.output
    result = replay(env, str(src), "--credential", "off")
    assert result.exit_code == 2 and "'off' is disabled" in result.output


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "the first line is not a header field"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "the first line is not a header field"),
        (b"", "empty message"),
        (b'{"json": true,\n "not": "mail"}\n', "none of From, To, Subject"),
        (b"Note: remember the milk\n\nand eggs\n", "none of From, To, Subject"),
    ],
)
def test_a_file_that_is_not_a_message_gets_a_one_line_error(env, content, problem):
    bad = env / "bad.eml"
    bad.write_bytes(content)
    result = replay(env, str(bad))
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"smtpgate: {bad}: ") and problem in line


def test_bad_files_do_not_stop_the_good_ones(env):
    d = env / "inbox"
    d.mkdir()
    (d / "a-bad.eml").write_bytes(b"not a message\n")
    sample_with(env, "inbox/b-good.eml")
    (d / "notes.txt").write_text("ignored: not .eml")
    result = replay(env, str(d))
    assert result.exit_code == 2
    assert "a-bad.eml: not an RFC 5322 message: the first line is not a header field" in result.stderr
    assert "b-good.eml: accepted" in result.stdout
    assert "notes.txt" not in result.output


def test_missing_path_empty_dir_and_no_recipient(env):
    result = replay(env, str(env / "nope.eml"))
    assert result.exit_code == 2 and "nope.eml: no such file or directory" in result.output
    (env / "empty").mkdir()
    result = replay(env, str(env / "empty"))
    assert result.exit_code == 2 and "no .eml files in this directory" in result.output
    lonely = env / "lonely.eml"
    lonely.write_bytes(b"From: a@example.com\r\nSubject: no To\r\n\r\nhi\r\n")
    result = replay(env, str(lonely))
    assert (
        result.exit_code == 2
        and "no recipient: the message has no To or Cc address; give --rcpt" in result.output
    )
    assert replay(env, str(lonely), "--rcpt", "b@example.com").exit_code == 0


def test_mbox_from_line_is_dropped(env):
    raw = (SAMPLES / "01-plain-text.eml").read_bytes()
    path = env / "saved.eml"
    path.write_bytes(b"From orders@example.com Tue Mar 10 09:01:00 2026\n" + raw)
    assert read_message_file(path) == raw
    result = replay(env, str(path))
    assert result.exit_code == 0, result.output


def test_collect_inputs_expands_directories_sorted_and_keeps_named_files(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.eml", "d/a.eml", "d/sub/c.eml", "d/readme.md", "x.txt"):
        (tmp_path / name).write_bytes(b"From: a@b\r\n\r\nx\r\n")
    got = collect_inputs([tmp_path / "x.txt", tmp_path / "d"])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["x.txt", "d/a.eml", "d/b.eml", "d/sub/c.eml"]
    with pytest.raises(ReplayError):
        collect_inputs([tmp_path / "missing"])


def test_output_names_are_safe_file_names():
    assert output_path(Path("o"), "in/news.eml", "a@b.example").name == "news.a@b.example.eml"
    evil = output_path(Path("o"), "news.eml", "../../etc/passwd")
    assert evil.parent == Path("o") and "/" not in evil.name


# ------------------------------------------------------------------------------------------------
# The default chain over every sample
# ------------------------------------------------------------------------------------------------


def _documented(kind: str) -> set[str]:
    """The sample numbers samples/README.md lists as Accepted or Rejected."""
    readme = (SAMPLES / "README.md").read_text()
    line = re.search(rf"\*\*{kind}\*\*[^:]*:([^\n]*)", readme)
    assert line, f"samples/README.md has no **{kind}** line"
    return set(re.findall(r"\d\d", line.group(1)))


VENDOR_PREFIXES = ("x-smtpapi", "x-mailgun-", "x-pm-", "x-ses-", "x-mq-")


def test_smtpgate_replay_samples_runs_the_default_chain(tmp_path, data_dir, monkeypatch):
    """Acceptance: `smtpgate replay samples/` with the embedded defaults, every sample."""
    monkeypatch.delenv("SMTPGATE_CONFIG", raising=False)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["replay", str(SAMPLES), "--out", str(out)])
    assert "Traceback" not in result.output
    rejected = {m for m in re.findall(r"/(\d\d)-[^/:]*\.eml: rejected by ", result.stdout)}
    accepted = {m for m in re.findall(r"/(\d\d)-[^/:]*\.eml: accepted", result.stdout)}
    assert rejected == _documented("Rejected")
    assert accepted == _documented("Accepted")
    assert result.exit_code == (1 if rejected else 0)
    written = sorted(out.iterdir())
    # one copy per recipient: 19's X-SMTPAPI expands to two
    assert len(written) == len(re.findall(r": ready, ", result.stdout)) and {p.name[:2] for p in written} == accepted
    for path in written:
        data = path.read_bytes()
        assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
        msg = Message(data)
        assert not [h.name for h in msg.headers if h.name.lower().startswith(("x-smtpeter-", *VENDOR_PREFIXES))]
        std = email.message_from_bytes(data, policy=email.policy.default)
        assert std["From"] is not None and not std.defects
        for part in std.walk():
            if not part.is_multipart():
                part.get_content()  # every part decodes


def test_default_chain_leaves_every_part_nobody_edited_byte_identical(data_dir):
    """For each sample the default chain accepts: parts no trace entry edited are identical."""
    chain = Chain(PluginSet(load_config(None)))

    async def run_all() -> None:
        for path in sample_files():
            raw = path.read_bytes()
            result = await replay_message(chain, raw, name=path.name)
            if result.verdict is not None:
                continue
            before = {p.path: p for p in Message(raw).walk() if not p.is_multipart}
            for copy in result.copies:
                assert copy.data is not None, f"{path.name}: {copy.verdict}"
                edited = {
                    m.group(1)
                    for entry in result.trace.entries
                    if entry.recipient in (None, copy.recipient)
                    for edit in entry.edits
                    if (m := re.match(r"part (\S+) ", edit.target))
                }
                after = {p.path: p for p in Message(copy.data).walk() if not p.is_multipart}
                assert set(after) == set(before), path.name  # MIME structure kept
                for part_path, part in before.items():
                    if part_path not in edited:
                        assert after[part_path].as_bytes() == part.as_bytes(), f"{path.name} part {part_path}"

    asyncio.run(run_all())


def test_default_chain_keeps_sample_attachments_byte_identical(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SMTPGATE_CONFIG", raising=False)
    src = SAMPLES / "07-attachment-pdf.eml"
    result = CliRunner().invoke(main, ["replay", str(src), "--out", "-"])
    assert result.exit_code == 0, result.stderr

    def attachments(data: bytes) -> dict[str, str]:
        msg = email.message_from_bytes(data, policy=email.policy.default)
        return {p.get_filename(): hashlib.sha256(p.get_content()).hexdigest() for p in msg.iter_attachments()}

    assert attachments(result.stdout_bytes) == attachments(src.read_bytes())
    assert len(attachments(src.read_bytes())) == 2


def test_session_phases_see_the_config_and_credential_switches(data_dir):
    """Before DATA there is no message: a plugin behind a switch runs as the credential says."""
    from pipeline import Credential, Plugin, Reject, hookimpl
    from pipeline.chain.driver import make_chain, make_config

    class BounceGate(Plugin):
        name = "bounce_gate"
        feature = "trackbounces"
        feature_default = False

        @hookimpl
        def on_rcpt_to(self, address: str) -> Reject:
            return Reject(550, "5.1.1", f"gate saw {address}")

    chain = make_chain(make_config(), [BounceGate])
    raw = (SAMPLES / "01-plain-text.eml").read_bytes()
    off = asyncio.run(replay_message(chain, raw))
    assert off.ok and off.copies[0].data is not None
    on = asyncio.run(replay_message(chain, raw, credential=Credential("c", features={"trackbounces": True})))
    assert on.rejected and on.verdict == Reject(550, "5.1.1", "gate saw jane.doe@example.org")


def test_inputs_with_the_same_name_do_not_overwrite_each_others_output(env):
    (env / "a").mkdir()
    (env / "b").mkdir()
    sample_with(env, "a/news.eml", subject="first")
    sample_with(env, "b/news.eml", subject="second")
    out = env / "out"
    result = replay(env, str(env / "a"), str(env / "b"), "--out", str(out))
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.iterdir())
    assert written == ["news.jane.doe@example.org.2.eml", "news.jane.doe@example.org.eml"]
    subjects = {Message((out / name).read_bytes()).get("Subject") for name in written}
    assert subjects == {"first", "second"}
    assert f"written to {out}/news.jane.doe@example.org.2.eml" in result.output
