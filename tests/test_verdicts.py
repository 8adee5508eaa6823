"""Verdicts: every type, the 4xx/5xx construction rule, and the one reply renderer."""

from __future__ import annotations

import pytest

from pipeline.contract.verdicts import (
    PLUGIN_FAILURE,
    Accept,
    Discard,
    Reject,
    TempFail,
    VerdictError,
    render_reply,
    verdict_name,
)


def test_reject_defaults_to_a_permanent_550_reply():
    assert Reject().reply() == "550 5.7.1 Rejected"


def test_reject_renders_code_enhanced_code_and_text():
    assert (
        Reject(554, "5.6.0", "Message has no From: header").reply() == "554 5.6.0 Message has no From: header"
    )


def test_tempfail_renders_a_4xx_reply():
    assert TempFail(421, "4.7.0", "Slow down").reply() == "421 4.7.0 Slow down"


def test_plugin_failure_is_tempfail_451_4_3_0():
    assert isinstance(PLUGIN_FAILURE, TempFail)
    assert PLUGIN_FAILURE.reply().startswith("451 4.3.0 ")


def test_accept_and_discard_both_answer_250_to_the_client():
    assert Accept().reply() == "250 2.0.0 OK"
    assert Discard("spam trap").reply() == "250 2.0.0 OK"
    assert Discard("spam trap").reason == "spam trap"


@pytest.mark.parametrize("code", [450, 451, 421, 250, 354, 650])
def test_reject_with_a_non_5xx_code_is_an_error(code):
    with pytest.raises(VerdictError, match="5xx"):
        Reject(code, "5.7.1", "no")


@pytest.mark.parametrize("code", [550, 554, 250, 354])
def test_tempfail_with_a_non_4xx_code_is_an_error(code):
    with pytest.raises(VerdictError, match="4xx"):
        TempFail(code, "4.3.0", "later")


def test_reject_with_a_4xx_enhanced_code_is_an_error():
    with pytest.raises(VerdictError, match="enhanced code 5.x.y"):
        Reject(550, "4.7.1", "no")


def test_tempfail_with_a_5xx_enhanced_code_is_an_error():
    with pytest.raises(VerdictError, match="enhanced code 4.x.y"):
        TempFail(451, "5.3.0", "later")


@pytest.mark.parametrize("enhanced", ["5.7", "5.7.1.2", "5.x.1", "5.7.1234", "", " 5.7.1"])
def test_malformed_enhanced_code_is_an_error(enhanced):
    with pytest.raises(VerdictError):
        Reject(550, enhanced, "no")


@pytest.mark.parametrize("code", ["550", 550.0, True])
def test_code_must_be_an_int(code):
    with pytest.raises(VerdictError):
        Reject(code, "5.7.1", "no")


@pytest.mark.parametrize("text", ["two\r\nlines", "bare\nlf", "bare\rcr"])
def test_verdict_text_with_line_breaks_is_refused(text):
    """A CR/LF in reply text would let a plugin inject a second SMTP reply line."""
    with pytest.raises(VerdictError, match="one line"):
        Reject(550, "5.7.1", text)
    with pytest.raises(VerdictError, match="one line"):
        TempFail(451, "4.3.0", text)


def test_verdicts_are_immutable():
    v = Reject(550, "5.7.1", "no")
    with pytest.raises(AttributeError):
        v.code = 250  # type: ignore[misc]


def test_render_reply_single_line():
    assert render_reply(250, "2.0.0", "OK") == "250 2.0.0 OK"


def test_render_reply_without_enhanced_code():
    assert render_reply(220, None, "mx.example.com ESMTP") == "220 mx.example.com ESMTP"


def test_render_reply_multiline_uses_dash_continuations_and_crlf():
    assert render_reply(250, "2.0.0", "first\nsecond\nlast") == (
        "250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 last"
    )


def test_render_reply_empty_text_still_renders_a_final_line():
    assert render_reply(250, None, "") == "250 "


def test_verdict_name_for_traces():
    assert verdict_name(None) == "continue"
    assert verdict_name(Accept()) == "accept"
    assert verdict_name(Discard()) == "discard"
    assert verdict_name(Reject(554, "5.6.0", "x")) == "reject 554 5.6.0"
    assert verdict_name(TempFail(452, "4.5.3", "x")) == "tempfail 452 4.5.3"
