"""Feature switches: config default < credential < X-SMTPeter-* header, unless the credential locks it;
invalid values are rejected; control headers never leave the gateway."""

from __future__ import annotations

import pytest
from conftest import SAMPLES

from pipeline import Credential, MessageContext, Plugin, Reject, hookimpl
from pipeline.chain.driver import run_chain
from pipeline.chain.features import resolve_features
from pipeline.contract.message import Message

DEFAULTS = {"inlinecss": True, "trackclicks": True, "trackopens": True, "trackbounces": False, "dkim": True}


def msg(*headers: str) -> Message:
    head = "".join(f"{h}\r\n" for h in headers)
    return Message(f"From: a@example.com\r\nTo: b@example.com\r\n{head}\r\nbody\r\n".encode())


def test_config_default_applies_when_nothing_overrides_it():
    assert resolve_features(DEFAULTS, None, msg()) == DEFAULTS


def test_credential_feature_set_overrides_the_default():
    cred = Credential("shop", features={"trackopens": False, "trackbounces": True})
    got = resolve_features(DEFAULTS, cred, msg())
    assert got == {**DEFAULTS, "trackopens": False, "trackbounces": True}


def test_header_overrides_the_credential():
    cred = Credential("shop", features={"trackopens": False})
    got = resolve_features(DEFAULTS, cred, msg("X-SMTPeter-TrackOpens: true"))
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
    got = resolve_features(DEFAULTS, None, msg(header))
    assert isinstance(got, dict) and got[feature] is value


def test_a_locked_feature_ignores_the_header():
    cred = Credential("shop", features={"trackclicks": False}, locked=frozenset({"trackclicks"}))
    m = msg("X-SMTPeter-TrackClicks: true")
    got = resolve_features(DEFAULTS, cred, m)
    assert isinstance(got, dict) and got["trackclicks"] is False
    assert "X-SMTPeter-TrackClicks" not in m  # still consumed


def test_lock_also_holds_a_config_default_against_the_header():
    cred = Credential("compliance", locked=frozenset({"trackopens"}))
    got = resolve_features({**DEFAULTS, "trackopens": False}, cred, msg("X-SMTPeter-TrackOpens: true"))
    assert isinstance(got, dict) and got["trackopens"] is False


@pytest.mark.parametrize("value", ["maybe", "yes", "1", "on", "", "true false", "tru"])
def test_an_invalid_value_is_rejected_naming_the_header(value):
    got = resolve_features(DEFAULTS, None, msg(f"X-SMTPeter-TrackOpens: {value}"))
    assert isinstance(got, Reject)
    assert got.reply() == "550 5.6.0 Invalid X-SMTPeter-TrackOpens header: expected true or false"


def test_an_invalid_value_is_rejected_even_for_a_locked_feature():
    """The sender's header is wrong either way; telling them beats silently ignoring it."""
    cred = Credential("shop", locked=frozenset({"trackopens"}))
    assert isinstance(resolve_features(DEFAULTS, cred, msg("X-SMTPeter-TrackOpens: maybe")), Reject)


def test_control_headers_are_removed_including_unknown_ones():
    m = msg(
        "X-SMTPeter-TrackOpens: false",
        "X-SMTPeter-Campaign: spring",
        "X-Other: kept",
        "x-smtpeter-inlinecss: true",
    )
    resolve_features(DEFAULTS, None, m)
    assert [h.name for h in m.headers] == ["From", "To", "X-Other"]
    assert all(e.plugin == "core" and e.action == "remove_header" for e in m.edits)


@pytest.mark.parametrize(
    "header", ["X-SMTPeter-DKIM: false", "X-SMTPeter-Validate: false", "X-SMTPeter-Campaign: false"]
)
def test_policy_switches_cannot_be_set_by_a_header(header):
    """Only the four tracking switches are the sender's to choose; signing and validation are not."""
    features = {**DEFAULTS, "validate": True, "campaign": True}
    m = msg(header)
    got = resolve_features(features, None, m)
    assert got == features
    assert len(m.headers) == 2  # but the header is still stripped


def test_without_a_message_only_defaults_and_credential_apply():
    cred = Credential("shop", features={"inlinecss": False})
    assert resolve_features(DEFAULTS, cred) == {**DEFAULTS, "inlinecss": False}


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
    result = run_chain(raw, [FeatureRecorder])
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
    result = run_chain(raw, [])
    assert result.verdict is not None
    assert result.verdict.reply() == "550 5.6.0 Invalid X-SMTPeter-TrackOpens header: expected true or false"
    assert result.copies == []
