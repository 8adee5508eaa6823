"""Feature switches: config default < credential < X-SMTPeter-* header, unless the credential locks it;
invalid values are rejected; control headers never leave the gateway."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiosmtplib
import pytest
from click.testing import CliRunner

from pipeline import Credential, Message, MessageContext, Plugin, Reject, hookimpl
from pipeline.app.cli import main
from pipeline.app.harness import ingress_test_config, running_ingress, spooled
from pipeline.chain.driver import make_config, run_chain
from pipeline.chain.features import resolve_features
from pipeline.chain.loader import PluginSet
from pipeline.config import ConfigError
from tests.support import SAMPLES

DEFAULTS = {"inlinecss": True, "trackclicks": True, "trackopens": True, "trackbounces": False, "dkim": True}
HEADER_SWITCHES = frozenset({"inlinecss", "trackclicks", "trackopens", "trackbounces"})  # the built-ins' choice


def resolve(defaults, credential, message=None):
    return resolve_features(defaults, credential, message, HEADER_SWITCHES)


def msg(*headers: str) -> Message:
    head = "".join(f"{h}\r\n" for h in headers)
    return Message(f"From: a@example.com\r\nTo: b@example.com\r\n{head}\r\nbody\r\n".encode())


def test_config_default_applies_when_nothing_overrides_it():
    assert resolve(DEFAULTS, None, msg()) == DEFAULTS


def test_credential_feature_set_overrides_the_default():
    cred = Credential("shop", features={"trackopens": False, "trackbounces": True})
    got = resolve(DEFAULTS, cred, msg())
    assert got == {**DEFAULTS, "trackopens": False, "trackbounces": True}


def test_header_overrides_the_credential():
    cred = Credential("shop", features={"trackopens": False})
    got = resolve(DEFAULTS, cred, msg("X-SMTPeter-TrackOpens: true"))
    assert isinstance(got, dict) and got["trackopens"] is True


@pytest.mark.parametrize(
    ("header", "feature", "value"),
    [
        ("X-SMTPeter-InlineCSS: false", "inlinecss", False),
        ("x-smtpeter-inlinecss: FALSE", "inlinecss", False),
        ("X-SMTPETER-TRACKCLICKS: False", "trackclicks", False),
        ("X-SMTPeter-TrackOpens:   fAlSe  ", "trackopens", False),
        ("X-SMTPeter-TrackBounces: TRUE", "trackbounces", True),
        ("x-SmTpEtEr-trackbounces: true", "trackbounces", True),
    ],
)
def test_header_names_and_values_are_case_insensitive(header, feature, value):
    got = resolve(DEFAULTS, None, msg(header))
    assert isinstance(got, dict) and got[feature] is value


def test_a_locked_feature_ignores_the_header():
    cred = Credential("shop", features={"trackclicks": False}, locked=frozenset({"trackclicks"}))
    m = msg("X-SMTPeter-TrackClicks: true")
    got = resolve(DEFAULTS, cred, m)
    assert isinstance(got, dict) and got["trackclicks"] is False
    assert "X-SMTPeter-TrackClicks" not in m  # still consumed


def test_lock_also_holds_a_config_default_against_the_header():
    cred = Credential("compliance", locked=frozenset({"trackopens"}))
    got = resolve({**DEFAULTS, "trackopens": False}, cred, msg("X-SMTPeter-TrackOpens: true"))
    assert isinstance(got, dict) and got["trackopens"] is False


@pytest.mark.parametrize("value", ["maybe", "yes", "1", "on", "", "true false", "tru"])
def test_an_invalid_value_is_rejected_naming_the_header(value):
    got = resolve(DEFAULTS, None, msg(f"X-SMTPeter-TrackOpens: {value}"))
    assert isinstance(got, Reject)
    assert got.reply() == "550 5.6.0 Invalid X-SMTPeter-TrackOpens header: expected true or false"


def test_an_invalid_value_is_rejected_even_for_a_locked_feature():
    """The sender's header is wrong either way; telling them beats silently ignoring it."""
    cred = Credential("shop", locked=frozenset({"trackopens"}))
    assert isinstance(resolve(DEFAULTS, cred, msg("X-SMTPeter-TrackOpens: maybe")), Reject)


def test_control_headers_are_removed_including_unknown_ones():
    m = msg(
        "X-SMTPeter-TrackOpens: false",
        "X-SMTPeter-Campaign: spring",
        "X-Other: kept",
        "x-smtpeter-inlinecss: true",
    )
    resolve(DEFAULTS, None, m)
    assert [h.name for h in m.headers] == ["From", "To", "X-Other"]
    assert all(e.plugin == "core" and e.action == "remove_header" for e in m.edits)


@pytest.mark.parametrize(
    "header", ["X-SMTPeter-DKIM: false", "X-SMTPeter-Validate: false", "X-SMTPeter-Campaign: false"]
)
def test_policy_switches_cannot_be_set_by_a_header(header):
    """Only the four tracking switches are the sender's to choose; signing and validation are not."""
    features = {**DEFAULTS, "validate": True, "campaign": True}
    m = msg(header)
    got = resolve(features, None, m)
    assert got == features
    assert len(m.headers) == 2  # but the header is still stripped


def test_without_a_message_only_defaults_and_credential_apply():
    cred = Credential("shop", features={"inlinecss": False})
    assert resolve(DEFAULTS, cred) == {**DEFAULTS, "inlinecss": False}


class FeatureRecorder(Plugin):
    """Records the switches admission resolved, and whether control headers were still there."""

    name = "feature_recorder"
    seen: list[tuple[dict[str, bool], list[str]]] = []

    @hookimpl
    def on_message(self, ctx: MessageContext) -> None:
        FeatureRecorder.seen.append((dict(ctx.features), [h.name for h in ctx.message.headers]))


def test_sample_11_end_to_end_switches_resolved_and_headers_gone():
    FeatureRecorder.seen.clear()
    raw = (SAMPLES / "11-smtpeter-control-headers.eml").read_bytes()
    switches = ["css_inline", "click_tracking", "open_pixel", "bounce_tracking"]
    result = run_chain(raw, [*switches, FeatureRecorder])
    features, headers = FeatureRecorder.seen[0]
    assert (
        features["inlinecss"],
        features["trackclicks"],
        features["trackopens"],
        features["trackbounces"],
    ) == (
        True,
        False,
        True,
        False,
    )
    assert not any(h.lower().startswith("x-smtpeter-") for h in headers)
    out = result.copies[0].data
    assert out is not None and b"x-smtpeter" not in out.lower()


def test_a_plugin_behind_a_switch_runs_only_when_the_switch_is_on():
    calls: list[str] = []

    class Tracker(Plugin):
        name = "tracker"
        feature = "trackclicks"
        feature_default = True

        @hookimpl
        def on_personalize(self, ctx: MessageContext) -> None:
            calls.append(ctx.recipient or "")

    raw = (SAMPLES / "01-plain-text.eml").read_bytes()
    run_chain(raw, [Tracker])
    assert calls == ["jane.doe@example.org"]
    off = raw.replace(b"\r\n\r\n", b"\r\nX-SMTPeter-TrackClicks: false\r\n\r\n", 1)
    run_chain(off, [Tracker])
    assert calls == ["jane.doe@example.org"]
    cred = Credential("shop", features={"trackclicks": False})
    run_chain(raw, [Tracker], credential=cred)
    assert calls == ["jane.doe@example.org"]


def test_invalid_switch_value_rejects_the_message_at_admission():
    raw = (
        (SAMPLES / "01-plain-text.eml")
        .read_bytes()
        .replace(b"\r\n\r\n", b"\r\nX-SMTPeter-TrackOpens: maybe\r\n\r\n", 1)
    )
    result = run_chain(raw, ["open_pixel"])
    assert result.verdict is not None
    assert result.verdict.reply() == "550 5.6.0 Invalid X-SMTPeter-TrackOpens header: expected true or false"
    assert result.copies == []


# ------------------------------------------------------------------------------------------------
# The registry: every loaded plugin's switch, with its declared default
# ------------------------------------------------------------------------------------------------

GREETING = '''
from pipeline import Plugin, hookimpl


class Greeting(Plugin):
    name = "greeting"
    feature = "greeting"
    feature_default = {default}

    @hookimpl
    def on_message(self, ctx):
        ctx.message.add_header("X-Greeting", "hello")
'''


def greeting_file(tmp_path, default: str = "True"):
    path = tmp_path / "greeting.py"
    path.write_text(GREETING.format(default=default))
    return path


def greeted(raw: bytes, config: dict, credential: Credential | None = None) -> bool:
    result = run_chain(raw, config=config, credential=credential)
    assert result.copies, result.verdict
    return b"X-Greeting: hello" in (result.copies[0].data or b"")


def test_a_third_party_switch_is_on_by_its_default_and_obeys_features_credentials_and_headers(tmp_path):
    raw = (SAMPLES / "01-plain-text.eml").read_bytes()
    chain = {"chain": {"plugins": [str(greeting_file(tmp_path))]}}
    assert greeted(raw, chain)  # its own default: not silently skipped
    assert not greeted(raw, {**chain, "features": {"greeting": False}})
    assert not greeted(raw, chain, Credential("shop", features={"greeting": False}))
    off = raw.replace(b"\r\n\r\n", b"\r\nX-SMTPeter-Greeting: false\r\n\r\n", 1)
    assert not greeted(off, chain)
    locked = Credential("shop", locked=frozenset({"greeting"}))
    assert greeted(off, chain, locked)


def test_a_switch_without_a_default_is_a_start_up_error_naming_the_plugin(tmp_path):
    path = greeting_file(tmp_path, default="None")
    with pytest.raises(ConfigError, match=r"<test>: chain.plugins: plugin greeting: feature 'greeting' has no default"):
        PluginSet(make_config(plugins=[str(path)]))


def test_plugins_sharing_a_switch_must_agree_on_its_default(tmp_path):
    path = greeting_file(tmp_path, default="False")
    with pytest.raises(ConfigError, match="declare feature 'greeting' differently"):
        PluginSet(make_config(plugins=[str(path)]), [type("Other", (Plugin,), {
            "name": "other", "feature": "greeting", "feature_default": True,
            "on_message": hookimpl(lambda self, ctx: None)})])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"features": {"trackopens": False}}, "features.trackopens"),
        ({"credentials": [{"name": "shop", "features": {"greting": True}}]}, "credentials[0].features.greting"),
        ({"credentials": [{"name": "shop", "locked": ["trackclicks"]}]}, "credentials[0].locked.trackclicks"),
    ],
)
def test_a_switch_no_loaded_plugin_declares_is_a_start_up_error_naming_the_key(tmp_path, overrides, key):
    cfg = make_config(overrides, plugins=[str(greeting_file(tmp_path))])
    with pytest.raises(ConfigError, match=rf"<test>: {re.escape(key)}: no loaded plugin has this switch \(switches: greeting\)"):
        PluginSet(cfg)


def test_credentials_cli_accepts_a_loaded_plugins_switch_and_refuses_others(tmp_path, data_dir):
    cfg = tmp_path / "smtpgate.toml"
    cfg.write_text(f'[chain]\nplugins = ["{greeting_file(tmp_path)}"]\n')
    runner = CliRunner()
    added = runner.invoke(main, ["credentials", "add", "shop", "--config", str(cfg), "--feature", "greeting=off",
                                 "--lock", "Greeting"])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(main, ["credentials", "list", "--config", str(cfg), "--json"])
    shop = next(c for c in json.loads(listed.stdout) if c["name"] == "shop")
    assert shop["features"] == {"greeting": False} and shop["locked"] == ["greeting"]
    refused = runner.invoke(main, ["credentials", "add", "blog", "--config", str(cfg), "--feature", "trackopens=on"])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "--feature 'trackopens=on': unknown feature: trackopens: no loaded plugin has this switch" in refused.output


def test_plugins_command_lists_every_switch_with_its_default(tmp_path):
    cfg = tmp_path / "smtpgate.toml"
    cfg.write_text(f'[chain]\nplugins = ["{greeting_file(tmp_path)}", "dkim_sign", "list_unsubscribe"]\n'
                   "[features]\ndkim = false\n")
    result = CliRunner().invoke(main, ["plugins", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert re.search(r"^  greeting +on +header +greeting$", result.output, re.M), result.output
    assert re.search(r"^  dkim +off +policy +dkim_sign \(plugin default on\)$", result.output, re.M)
    assert re.search(r"^  listunsubscribe +off +policy +list_unsubscribe$", result.output, re.M)
    assert any(line.startswith("switches (default") for line in lines)


# -- issue 2, point 7: the switches over a real SMTP session --------------------------------------


async def test_switches_over_smtp_credential_header_lock_and_an_invalid_value(data_dir: Path) -> None:
    """A credential turns trackclicks on and locks trackopens off; the message's headers ask for
    the opposite of both: the header wins where unlocked, the lock holds, the defaults fill the
    rest, no control header is spooled; "maybe" is the exact 550 reply to DATA, nothing queued."""
    cfg = ingress_test_config(
        data_dir,
        credentials=[{
            "name": "office", "kind": "ip", "networks": ["127.0.0.1/32"],
            "features": {"TrackClicks": True, "trackopens": False, "trackbounces": True},
            "locked": ["TrackOpens"],
        }],
        features={"trackclicks": False, "inlinecss": True},
        tracking={"bounce_domain": "bounce.example.com"},  # trackbounces without one is refused at DATA
        chain=["header_validation", "css_inline", "click_tracking", "open_pixel", "bounce_tracking", "dkim_sign"],
    )
    raw = (SAMPLES / "01-plain-text.eml").read_bytes()
    headers = b"X-SMTPeter-TrackClicks: FALSE\r\nx-smtpeter-trackopens: true\r\nX-SMTPeter-InlineCSS: false\r\n"
    async with running_ingress(cfg) as (_, ingress):
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ingress.port("plain"), timeout=10)
        await client.connect()
        errors, _ = await client.sendmail("app@example.com", ["r@example.org"], headers + raw)
        assert errors == {}
        bad = b"X-SMTPeter-TrackOpens: maybe\r\n" + raw
        with pytest.raises(aiosmtplib.SMTPDataError) as err:
            await client.sendmail("app@example.com", ["r@example.org"], bad)
        await client.quit()
    assert (err.value.code, err.value.message) == (
        550, "5.6.0 Invalid X-SMTPeter-TrackOpens header: expected true or false"
    )
    [msg] = spooled(data_dir)
    features = msg["context"]["features"]
    # header over credential (trackclicks), lock over header (trackopens), header over default
    # (inlinecss), credential over default (trackbounces)
    assert (features["trackclicks"], features["trackopens"], features["inlinecss"], features["trackbounces"]) == (
        False, False, False, True
    )
    assert features["dkim"] is True and features["validate"] is True  # defaults kept
    assert b"x-smtpeter" not in msg["data"].lower()
