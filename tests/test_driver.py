"""The in-process driver: ``run_chain`` (for plugin authors) and ``smtpgate replay`` drive every
phase the SMTP ingress drives, through one code path, and give each verdict one meaning."""

from __future__ import annotations

import asyncio

import pytest

from pipeline import Credential, Discard, MessageContext, Plugin, Reject, Session, TempFail, hookimpl
from pipeline.app.replay import replay_message
from pipeline.chain.driver import make_chain, make_config, run_chain
from pipeline.contract.verdicts import Accept, drops, ends, refuses
from tests.support import SAMPLES

RAW = (
    b"From: shop@example.com\r\nTo: a@example.net, b@example.net\r\nSubject: hi\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-Id: <1@example.com>\r\n\r\nhello\r\n"
)


class Recorder(Plugin):
    """Logs every phase it sees; refuses b@ at RCPT."""

    name = "recorder"
    seen: list[str] = []

    @hookimpl
    def on_connect(self, session: Session) -> None:
        self.seen.append("connect")

    @hookimpl
    def on_helo(self, hostname: str) -> None:
        self.seen.append(f"helo {hostname}")

    @hookimpl
    def on_auth(self, credential: Credential) -> None:
        self.seen.append(f"auth {credential.name}")

    @hookimpl
    def on_mail_from(self, address: str) -> None:
        self.seen.append(f"mail {address}")

    @hookimpl
    def on_rcpt_to(self, address: str) -> Reject | None:
        self.seen.append(f"rcpt {address}")
        return Reject(550, "5.1.1", "No such user") if address.startswith("b@") else None

    @hookimpl
    def on_message(self, ctx: MessageContext) -> None:
        self.seen.append(f"message {ctx.message.rcpt_tos}")

    @hookimpl
    def on_personalize(self, ctx: MessageContext) -> None:
        self.seen.append(f"personalize {ctx.recipient}")


def test_run_chain_drives_every_admission_phase_in_ingress_order():
    Recorder.seen = []
    result = run_chain(RAW, [Recorder], credential=Credential("shop"))
    assert Recorder.seen == [
        "connect", "helo localhost", "auth shop", "mail shop@example.com",
        "rcpt a@example.net", "rcpt b@example.net", "message ['a@example.net']", "personalize a@example.net",
    ]
    assert [c.recipient for c in result.copies] == ["a@example.net"]


def test_an_on_rcpt_to_reject_is_that_recipients_verdict_and_the_others_go_on():
    Recorder.seen = []
    result = run_chain(RAW, [Recorder])
    assert result.verdict is None and not result.ok
    assert [(rcpt, v.reply()) for rcpt, v in result.refused] == [("b@example.net", "550 5.1.1 No such user")]
    assert [c.recipient for c in result.copies] == ["a@example.net"]


def test_an_on_rcpt_to_reject_of_every_recipient_refuses_the_message():
    result = run_chain(RAW, [Recorder], rcpt_tos=["b@example.net"])
    assert result.verdict == Reject(550, "5.1.1", "No such user") and result.rejected
    assert result.stopped_by == "on_rcpt_to" and result.ctx is None and result.copies == []


def test_a_connect_verdict_stops_before_any_later_phase():
    calls: list[str] = []

    class Blocklist(Plugin):
        name = "blocklist"

        @hookimpl
        def on_connect(self, session: Session) -> TempFail:
            return TempFail(421, "4.7.0", "Try later")

        @hookimpl
        def on_message(self, ctx: MessageContext) -> None:
            calls.append("message")

    result = run_chain(RAW, [Blocklist])
    assert result.verdict == TempFail(421, "4.7.0", "Try later")
    assert result.stopped_by == "blocklist (on_connect)" and calls == [] and result.copies == []


def test_discard_at_rcpt_drops_that_recipient_silently():
    class DropB(Plugin):
        name = "drop_b"

        @hookimpl
        def on_rcpt_to(self, address: str) -> Discard | None:
            return Discard("test") if address.startswith("b@") else None

    result = run_chain(RAW, [DropB])
    assert result.ok and result.refused == [] and [c.recipient for c in result.copies] == ["a@example.net"]


def test_replay_and_run_chain_give_the_same_verdicts():
    chain = make_chain(make_config(), [Recorder])
    replayed = asyncio.run(replay_message(chain, RAW, name="m.eml"))
    driven = run_chain(RAW, [Recorder])
    assert [(r, v) for r, v in replayed.refused] == [(r, v) for r, v in driven.refused]
    assert [c.recipient for c in replayed.copies] == [c.recipient for c in driven.copies]
    assert [(e.phase, e.plugin, e.verdict) for e in replayed.trace.entries] == [
        (e.phase, e.plugin, e.verdict) for e in driven.trace.entries
    ]


def test_what_a_verdict_means_is_decided_in_one_place():
    assert [ends(v) for v in (None, Accept(), Reject(), TempFail(), Discard())] == [False, False, True, True, True]
    assert [refuses(v) for v in (None, Accept(), Reject(), TempFail(), Discard())] == [False, False, True, True, False]
    assert [drops(v) for v in (None, Accept(), Reject(), TempFail(), Discard())] == [False, False, False, False, True]


# -- issue 2, point 12: pipeline.chain.driver cannot silently drop a plugin ------------------------------


def test_run_chain_refuses_builtin_names_next_to_a_ready_config() -> None:
    """A Config already names its chain: names given beside it used to be ignored, so a plugin
    author's test ran without the plugin under test and passed."""
    raw = (SAMPLES / "01-plain-text.eml").read_bytes()
    with pytest.raises(ValueError, match=r"built-in names \['campaign_tag'\] with a Config"):
        run_chain(raw, ["campaign_tag"], config=make_config())
    tagged = run_chain(raw, config=make_config(plugins=["campaign_tag"]))
    assert tagged.ctx is not None and tagged.ctx.campaign_id  # the daily campaign: the plugin ran
