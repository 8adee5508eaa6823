"""The milter's pure parts: listen syntax, config, the command line, edits as actions."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pipeline.app.cli import main
from pipeline.app.gateway import Gateway
from pipeline.chain.driver import make_config
from pipeline.config import ConfigError, parse_config
from pipeline.config import MilterEndpoint as Endpoint
from pipeline.config import parse_milter_listen as parse_listen
from pipeline.milter import protocol as P
from pipeline.milter.edits import EditError, header_actions, message_actions, split_message


@pytest.mark.parametrize(
    ("spec", "endpoint"),
    [
        ("inet:127.0.0.1:8891", Endpoint("inet", "127.0.0.1", 8891)),
        ("inet:[::1]:8891", Endpoint("inet", "::1", 8891)),
        ("inet::8891", Endpoint("inet", "127.0.0.1", 8891)),
        ("unix:/run/smtpgate/milter.sock", Endpoint("unix", path="/run/smtpgate/milter.sock")),
    ],
)
def test_listen_takes_postfix_socket_syntax(spec, endpoint):
    assert parse_listen(spec) == endpoint


@pytest.mark.parametrize("spec", ["tcp:1.2.3.4:25", "inet:host", "inet:host:99999", "unix:", "8891"])
def test_bad_listen_is_a_precise_error_on_the_command_line_and_in_the_config(spec):
    why = "needs a socket path" if spec == "unix:" else "expected inet:HOST:PORT or unix:PATH"
    result = CliRunner().invoke(main, ["milter", "--listen", spec])
    assert result.exit_code == 2 and why in result.output
    with pytest.raises(ConfigError, match=rf"milter\.listen: '{spec}': .*{why}"):
        parse_config({"milter": {"listen": [spec]}})


def test_milter_command_without_a_socket_says_how_to_give_one():
    result = CliRunner().invoke(main, ["milter"])
    assert (
        result.exit_code == 2
        and "give --listen inet:HOST:PORT|unix:PATH or set [milter] listen" in result.output
    )


def test_serve_runs_the_milter_only_when_a_listen_socket_is_configured(tmp_path):
    base = {"gateway": {"data_dir": str(tmp_path)}}
    without = Gateway(make_config(base))
    without.build_services()
    assert "milter" not in [s.name for s in without.services]
    with_milter = Gateway(make_config({**base, "milter": {"listen": ["inet:127.0.0.1:0"]}}))
    with_milter.build_services()
    assert "milter" in [s.name for s in with_milter.services]


F = [b"Received: x", b"From: a@example.com", b"X-A: 1", b"Subject: hi", b"X-A: 2", b"X-A: 3"]


def actions(final: list[bytes]) -> list[tuple[bytes, bytes]]:
    return [(p[4:5], p[5:]) for p in header_actions(F, final, leadspc=True)]


def test_unchanged_headers_need_no_action():
    assert actions(list(F)) == []


def test_top_inserts_keep_their_order_and_appends_go_last():
    got = actions([b"DKIM-Signature: s\r\n\tmore", b"X-Top: t", *F, b"X-End: e"])
    assert got == [
        (b"h", b"X-End\0 e\0"),
        (b"i", b"\0\0\0\0X-Top\0 t\0"),
        (b"i", b"\0\0\0\0DKIM-Signature\0 s\n\tmore\0"),  # folded with LF, as the MTA keeps headers; last
    ]


def test_removed_and_rewritten_fields_are_chgheader_by_occurrence_highest_first():
    got = actions([b"Received: x", b"From: a@example.com", b"Subject: =?utf-8?q?hi?="])
    assert got == [
        (b"m", b"\0\0\0\x01Subject\0 =?utf-8?q?hi?=\0"),
        (b"m", b"\0\0\0\x03X-A\0\0"),
        (b"m", b"\0\0\0\x02X-A\0\0"),
        (b"m", b"\0\0\0\x01X-A\0\0"),
    ]


def test_a_field_between_existing_ones_cannot_be_expressed():
    with pytest.raises(EditError, match="X-Mid added between existing fields"):
        actions([*F[:3], b"X-Mid: m", *F[3:]])


def test_without_leading_space_negotiated_the_mta_adds_the_space():
    assert header_actions([b"A: 1"], [b"A: 1", b"B: 2"], leadspc=False) == [P.encode(b"h", b"B\x002\x00")]


def test_a_new_body_goes_in_65535_byte_packets_and_needs_the_granted_action():
    body = b"x" * 70000 + b"\r\n"
    raw = b"A: 1\r\n\r\n" + body
    got = message_actions(
        [b"A: 1"], b"old\r\n", "s@x", ["r@x"], raw, "s@x", ["r@x"], leadspc=True, granted=0x1FF
    )
    assert [len(p) - 5 for p in got] == [65535, 70002 - 65535]
    with pytest.raises(EditError, match="did not grant the milter the right to replace the body"):
        message_actions([b"A: 1"], b"old\r\n", "s@x", ["r@x"], raw, "s@x", ["r@x"], leadspc=True, granted=0x1)


def test_split_message_keeps_folding_and_an_empty_body():
    assert split_message(b"A: 1\r\n 2\r\nB: 3\r\n\r\n") == ([b"A: 1\r\n 2", b"B: 3"], b"")
    assert split_message(b"A: 1\r\n") == ([b"A: 1"], b"")
