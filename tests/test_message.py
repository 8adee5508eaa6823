"""The message editing API: byte-exact round trips, re-encoding of edited parts, recorded edits,
header and envelope injection refused, and sealing."""

from __future__ import annotations

import email
import email.policy
import hashlib

import pytest

from pipeline.contract.message import (
    Message,
    MessageError,
    SealedError,
    current_actor,
    normalize_newlines,
)
from tests.support import SAMPLES, corpus_files, sample_files

ALL_INPUTS = sample_files() + corpus_files()
# enKod's literal example has no empty line after its header: parsing puts one in (Postfix cleanup),
# so it is the one input that does not come out byte for byte (tested on its own below).
WELL_FORMED = [p for p in ALL_INPUTS if p.name != "24-enkod-literal.eml"]


def _forget_raw(msg: Message) -> None:
    """Make every part re-serialise from the parsed tree (as if each had been edited)."""
    for part in msg.walk():
        part._raw = None
    msg._cache = None


def _stdlib(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def _sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def _as(actor: str):
    """Context manager-ish helper: run edits as ``actor`` (the chain sets this for each hook)."""

    class _Actor:
        def __enter__(self) -> None:
            self.token = current_actor.set(actor)

        def __exit__(self, *exc: object) -> None:
            current_actor.reset(self.token)

    return _Actor()


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


def test_there_are_samples_and_corpus_files_to_round_trip():
    assert len(sample_files()) >= 12
    assert len(corpus_files()) >= 10


@pytest.mark.parametrize("path", WELL_FORMED, ids=lambda p: p.name)
def test_unedited_message_is_byte_identical(path):
    raw = path.read_bytes()
    assert Message(raw).as_bytes() == normalize_newlines(raw) == raw  # the inputs are CRLF already


def test_a_header_without_its_empty_line_gets_exactly_that_line_and_nothing_else():
    raw = next(p for p in ALL_INPUTS if p.name == "24-enkod-literal.eml").read_bytes()
    out = Message(raw).as_bytes()
    assert out == raw.replace(b"MIME-Version: 1.0\r\n<!DOCTYPE", b"MIME-Version: 1.0\r\n\r\n<!DOCTYPE", 1)
    assert Message(out).as_bytes() == out
    nested = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\nhello\r\n--b--\r\n'
    part = Message(b"Subject: s\r\n" + nested).root.children[0]  # type: ignore[index]
    assert part.content_type == "text/plain" and part.body == b"hello"


@pytest.mark.parametrize("path", WELL_FORMED, ids=lambda p: p.name)
def test_reserialising_the_parsed_tree_reproduces_every_byte(path):
    """Headers, preamble, delimiters, children and epilogue together rebuild the exact input."""
    raw = path.read_bytes()
    msg = Message(raw)
    _forget_raw(msg)
    assert msg.as_bytes() == raw


def test_lf_and_bare_cr_line_endings_become_crlf():
    msg = Message(b"From: a@example.com\nTo: b@example.com\rSubject: x\r\n\nbody\n")
    assert msg.as_bytes() == b"From: a@example.com\r\nTo: b@example.com\r\nSubject: x\r\n\r\nbody\r\n"
    assert msg.get("Subject") == "x"


def test_preamble_epilogue_and_unclosed_multipart_survive_an_edit_elsewhere():
    raw = (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"This is a preamble.\r\n--XX\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n"
        b"--XX\r\nContent-Type: text/plain\r\n\r\nplain\r\n--XX--\r\nepilogue text\r\n"
    )
    msg = Message(raw)
    html = msg.html_parts()[0]
    msg.replace_html(html, "<p>bye</p>")
    out = msg.as_bytes()
    assert out == raw.replace(b"<p>hi</p>", b"<p>bye</p>")
    unclosed = raw.replace(b"--XX--\r\nepilogue text\r\n", b"")
    msg2 = Message(unclosed)
    _forget_raw(msg2)
    assert msg2.as_bytes() == unclosed


def test_boundary_text_inside_a_line_is_not_a_delimiter():
    raw = (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain\r\n\r\nsee x--b1 and --b1x here\r\n--b1--\r\n"
    )
    msg = Message(raw)
    assert [p.content_type for p in msg.walk()] == ["multipart/mixed", "text/plain"]
    assert msg.text_parts()[0].text() == "see x--b1 and --b1x here"


def test_rfc2047_header_is_decoded_for_reading_but_kept_on_the_wire():
    raw = _sample("06-rfc2047-subject.eml")
    msg = Message(raw)
    assert msg.get("Subject") == "Тест SMTP 兼мод"
    assert b"Subject: =?utf-8?B?0KLQtdGB0YIgU01UUCDlhbzQvNC+0LQ=?=" in msg.as_bytes()


# ------------------------------------------------------------------------------------------------
# Body edits: re-encoded in the part's own charset and transfer encoding
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "charset", "cte", "added"),
    [
        ("08-quoted-printable-html.eml", "utf-8", "quoted-printable", "añadido — добавлено 中文"),
        ("09-base64-html.eml", "utf-8", "base64", "añadido — добавлено 中文"),
        ("04-russian-windows-1251.eml", "windows-1251", "8bit", "добавлено — ещё"),
        ("05-spanish-iso-8859-1.eml", "iso-8859-1", "quoted-printable", "añadido ¿qué?"),
    ],
)
def test_edited_html_keeps_its_charset_and_transfer_encoding(name, charset, cte, added):
    msg = Message(_sample(name))
    part = msg.html_parts()[0]
    assert (part.charset, part.cte) == (charset, cte)
    new_html = part.text().replace("</body>", f"<p>{added}</p></body>")
    assert new_html != part.text()
    msg.replace_html(part, new_html)
    out = msg.as_bytes()
    reparsed = Message(out).html_parts()[0]
    assert (reparsed.charset, reparsed.cte) == (charset, cte)
    assert reparsed.text() == new_html.replace("\r\n", "\n").replace("\n", "\r\n")
    # an independent decoder agrees
    std = next(p for p in _stdlib(out).walk() if p.get_content_type() == "text/html")
    assert std.get_content_charset() == charset
    assert added in std.get_content()
    if cte in ("quoted-printable", "base64"):
        body = reparsed.body
        assert all(len(line) <= 76 for line in body.split(b"\r\n"))
        assert body.isascii()
    for line in out.split(b"\r\n"):
        assert len(line) <= 998
    assert b"\n" not in out.replace(b"\r\n", b"")


def test_html_characters_the_charset_cannot_hold_become_character_references():
    """The part keeps its declared charset (which its <meta> tag repeats)."""
    msg = Message(_sample("05-spanish-iso-8859-1.eml"))
    part = msg.html_parts()[0]
    msg.replace_html(part, part.text() + "<p>中文 ñ</p>")
    out = Message(msg.as_bytes()).html_parts()[0]
    assert out.charset == "iso-8859-1"
    assert out.text().endswith("<p>&#20013;&#25991; ñ</p>")
    assert "¿" in out.text()


def test_plain_text_the_charset_cannot_hold_upgrades_the_part_to_utf8():
    msg = Message(_sample("04-russian-windows-1251.eml"))
    part = msg.text_parts()[0]
    msg.replace_text(part, part.text() + "\n中文 ñ\n")
    out = Message(msg.as_bytes())
    assert out.text_parts()[0].charset == "utf-8"
    assert out.text_parts()[0].text().endswith("中文 ñ\r\n")
    assert out.html_parts()[0].charset == "windows-1251"  # the sibling is untouched


def test_undecodable_bytes_survive_an_edit_of_their_part():
    raw = b"From: a@example.com\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n<p>\xff\xfe</p>\r\n"
    msg = Message(raw)
    part = msg.html_parts()[0]
    msg.replace_html(part, part.text().replace("<p>", "<p class=x>"))
    assert msg.as_bytes() == raw.replace(b"<p>", b"<p class=x>")


def test_non_ascii_text_in_a_7bit_part_switches_to_quoted_printable():
    msg = Message(b"From: a@example.com\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n")
    msg.replace_text(msg.text_parts()[0], "héllo\n")
    out = msg.as_bytes()
    assert b"Content-Transfer-Encoding: quoted-printable" in out
    assert out.isascii()
    assert _stdlib(out).get_content().replace("\r\n", "\n") == "héllo\n"


def test_over_long_lines_in_an_8bit_part_switch_to_quoted_printable():
    msg = Message(
        b"From: a@example.com\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n<p>x</p>\r\n"
    )
    long_html = "<p>" + "é" * 2000 + "</p>"
    msg.replace_html(msg.html_parts()[0], long_html)
    out = msg.as_bytes()
    assert max(len(line) for line in out.split(b"\r\n")) <= 76
    assert _stdlib(out).get_content() == long_html


def test_attachments_are_byte_identical_after_an_html_edit():
    raw = _sample("07-attachment-pdf.eml")
    msg = Message(raw)
    before = {p.path: hashlib.sha256(p.as_bytes()).hexdigest() for p in msg.walk() if not p.is_multipart}
    html = msg.html_parts()[0]
    msg.replace_html(html, html.text().replace("</body>", '<img src="https://t.example/o.gif"></body>'))
    out = msg.as_bytes()
    after_msg = Message(out)
    after = {p.path: hashlib.sha256(p.as_bytes()).hexdigest() for p in after_msg.walk() if not p.is_multipart}
    assert after["1.2"] == before["1.2"]  # invoice.pdf
    assert after["1.3"] == before["1.3"]  # usage-chart.png
    assert after["1.1.1"] == before["1.1.1"]  # the untouched text/plain alternative
    assert after["1.1.2"] != before["1.1.2"]

    # decoded attachment bytes as the stdlib sees them, before and after
    def attachments(data: bytes) -> dict[str, bytes]:
        return {p.get_filename(): p.get_content() for p in _stdlib(data).iter_attachments()}

    assert attachments(out) == attachments(raw)
    assert set(attachments(raw)) == {"invoice.pdf", "usage-chart.png"}


def test_replacing_a_part_of_another_message_is_refused():
    a = Message(_sample("09-base64-html.eml"))
    b = Message(_sample("09-base64-html.eml"))
    with pytest.raises(MessageError, match="does not belong"):
        a.replace_html(b.html_parts()[0], "<p>x</p>")
    assert a.edits == []


def test_html_parts_skip_attachments_and_text_parts_find_plain_bodies():
    raw = (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
        b"--b\r\nContent-Type: text/html\r\nContent-Disposition: attachment; filename=a.html\r\n\r\n<p>att</p>\r\n"
        b"--b--\r\n"
    )
    msg = Message(raw)
    assert msg.html_parts() == []
    assert [p.text() for p in msg.text_parts()] == ["body"]


# ------------------------------------------------------------------------------------------------
# Header edits
# ------------------------------------------------------------------------------------------------


def _plain() -> Message:
    return Message(_sample("01-plain-text.eml"))


def test_add_header_appends_and_records_the_acting_plugin():
    msg = _plain()
    with _as("tagger"):
        msg.add_header("X-Tag", "blue")
    assert msg.headers[-1].name == "X-Tag"
    assert msg.get("x-tag") == "blue"
    assert [str(e) for e in msg.edits] == ["tagger: add_header X-Tag = blue"]
    assert b"\r\nX-Tag: blue\r\n\r\n" in msg.as_bytes()


def test_add_header_first_puts_it_on_top():
    msg = _plain()
    msg.add_header("Received", "from x by y", first=True)
    assert msg.as_bytes().startswith(b"Received: from x by y\r\nFrom: ")


def test_change_header_rewrites_only_that_field_and_keeps_the_rest_byte_identical():
    raw = _sample("01-plain-text.eml")
    msg = Message(raw)
    old_subject = [h for h in msg.headers if h.name == "Subject"][0].raw
    with _as("rewriter"):
        msg.change_header("subject", "New subject")
    out = msg.as_bytes()
    assert out == raw.replace(old_subject, b"Subject: New subject")
    assert msg.edits[-1].plugin == "rewriter"
    assert msg.edits[-1].action == "change_header"


def test_change_header_by_index_and_adds_when_absent():
    msg = Message(b"From: a@example.com\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody\r\n")
    msg.change_header("X-A", "two", index=1)
    assert msg.get_all("X-A") == ["1", "two"]
    msg.change_header("X-B", "new")
    assert msg.get("X-B") == "new"
    assert [e.action for e in msg.edits] == ["change_header", "add_header"]


def test_remove_header_removes_every_occurrence_and_counts_them():
    msg = Message(b"From: a@example.com\r\nX-A: 1\r\nx-a: 2\r\nTo: b@example.com\r\n\r\nbody\r\n")
    assert msg.remove_header("X-A") == 2
    assert "X-A" not in msg
    assert msg.as_bytes() == b"From: a@example.com\r\nTo: b@example.com\r\n\r\nbody\r\n"
    assert msg.remove_header("X-A") == 0
    assert len(msg.edits) == 1  # removing nothing records nothing


def test_non_ascii_header_value_is_rfc2047_encoded():
    msg = _plain()
    msg.add_header("X-Note", "Grüße aus Köln")
    out = msg.as_bytes()
    assert out.isascii()
    assert Message(out).get("X-Note") == "Grüße aus Köln"


def test_non_ascii_display_name_is_encoded_but_the_address_stays_readable():
    msg = _plain()
    msg.change_header("From", "José Müller <jose@example.com>")
    out = msg.as_bytes()
    assert b"<jose@example.com>" in out
    assert _stdlib(out)["From"].addresses[0].display_name == "José Müller"
    assert Message(out).addresses("From") == [("José Müller", "jose@example.com")]


def test_long_ascii_header_is_folded_below_998_octets():
    msg = _plain()
    value = " ".join(["word"] * 400)
    msg.add_header("X-Long", value)
    out = msg.as_bytes()
    assert max(len(line) for line in out.split(b"\r\n")) <= 998
    assert Message(out).get("X-Long") == value


@pytest.mark.parametrize("value", ["x\r\nBcc: victim@example.com", "x\nBcc: v@example.com", "x\rY", "x\0y"])
def test_header_injection_is_refused_and_nothing_is_recorded(value):
    msg = _plain()
    raw = msg.as_bytes()
    with pytest.raises(MessageError, match="CR, LF or NUL"):
        msg.add_header("X-Evil", value)
    with pytest.raises(MessageError, match="CR, LF or NUL"):
        msg.change_header("Subject", value)
    assert msg.edits == []
    assert msg.as_bytes() == raw


@pytest.mark.parametrize("name", ["Bad Name", "X:Y", "", "Ünïcode", "X-A\r\nBcc"])
def test_invalid_header_names_are_refused(name):
    with pytest.raises(MessageError, match="invalid header name"):
        _plain().add_header(name, "v")


def test_insert_raw_header_keeps_folding_and_refuses_smuggled_lines():
    msg = _plain()
    msg.insert_raw_header(b"DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc\r\n")
    assert msg.as_bytes().startswith(b"DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc\r\nFrom: ")
    for bad in (b"X: a\r\nBcc: b", b"X: a\nb", b"X: a\rb", b"no colon here", b"X: a\r\n\r\nbody"):
        with pytest.raises(MessageError):
            msg.insert_raw_header(bad)
    assert len(msg.edits) == 1


# ------------------------------------------------------------------------------------------------
# Envelope
# ------------------------------------------------------------------------------------------------


def test_envelope_edits_are_recorded():
    msg = Message(_sample("01-plain-text.eml"), "a@example.com", ["b@example.com"])
    with _as("verp"):
        msg.change_sender("bounce+123@example.com")
        msg.add_recipient("c@example.com")
        msg.remove_recipient("b@example.com")
    assert msg.mail_from == "bounce+123@example.com"
    assert msg.rcpt_tos == ["c@example.com"]
    assert [(e.plugin, e.action) for e in msg.edits] == [
        ("verp", "change_sender"),
        ("verp", "add_rcpt"),
        ("verp", "remove_rcpt"),
    ]


def test_null_sender_is_allowed():
    msg = Message(_sample("01-plain-text.eml"), "a@example.com", ["b@example.com"])
    msg.change_sender("")
    assert msg.mail_from == ""


@pytest.mark.parametrize("address", ["a@b.c>\r\nRCPT TO:<x@y", "a@b.c SIZE=1", "a@b.c>", "<a@b.c", "a\tb@c"])
def test_envelope_address_that_would_inject_smtp_is_refused(address):
    msg = Message(_sample("01-plain-text.eml"), "a@example.com", ["b@example.com"])
    with pytest.raises(MessageError, match="invalid envelope address"):
        msg.change_sender(address)
    with pytest.raises(MessageError, match="invalid envelope address"):
        msg.add_recipient(address)
    assert msg.edits == []
    assert msg.mail_from == "a@example.com"


def test_removing_a_recipient_that_is_not_there_is_an_error():
    msg = Message(_sample("01-plain-text.eml"), "a@example.com", ["b@example.com"])
    with pytest.raises(MessageError, match="not a recipient"):
        msg.remove_recipient("c@example.com")
    with pytest.raises(MessageError, match="empty"):
        msg.add_recipient("")


def test_copy_is_independent_and_keeps_the_edit_log():
    msg = Message(_sample("01-plain-text.eml"), "a@example.com", ["b@example.com", "c@example.com"])
    msg.add_header("X-Shared", "1")
    copy = msg.copy(rcpt_tos=["b@example.com"])
    copy.add_header("X-Only-B", "1")
    assert copy.rcpt_tos == ["b@example.com"]
    assert "X-Only-B" not in msg
    assert [e.target for e in copy.edits] == ["X-Shared", "X-Only-B"]
    assert [e.target for e in msg.edits] == ["X-Shared"]


# ------------------------------------------------------------------------------------------------
# Seal and refusals
# ------------------------------------------------------------------------------------------------


def test_sealed_message_refuses_every_edit_and_names_the_signer():
    msg = Message(_sample("02-newsletter-alternative.eml"), "a@example.com", ["b@example.com"])
    with _as("dkim_sign"):
        msg.seal()
    signed = msg.as_bytes()
    part = msg.html_parts()[0]
    edits = [
        lambda: msg.add_header("X-Late", "1"),
        lambda: msg.change_header("Subject", "late"),
        lambda: msg.remove_header("Subject"),
        lambda: msg.insert_raw_header(b"X-Late: 1"),
        lambda: msg.replace_html(part, "<p>late</p>"),
        lambda: msg.replace_text(msg.text_parts()[0], "late"),
        lambda: msg.change_sender("x@example.com"),
        lambda: msg.add_recipient("x@example.com"),
        lambda: msg.remove_recipient("b@example.com"),
    ]
    with _as("late_plugin"):
        for edit in edits:
            with pytest.raises(SealedError, match="signed by dkim_sign; late_plugin tried"):
                edit()
    assert msg.as_bytes() == signed
    assert msg.sealed_by == "dkim_sign"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty"),
        (b"\r\n\r\n  \r\n", "empty"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", "first line is not a header"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "first line is not a header"),
        (b"just some words\nand more\n", "first line is not a header"),
    ],
)
def test_bytes_that_are_not_a_message_are_refused(data, problem):
    with pytest.raises(MessageError, match=problem):
        Message(data)


def test_a_message_must_be_bytes():
    with pytest.raises(MessageError, match="bytes"):
        Message("From: a@example.com\r\n\r\nx")  # type: ignore[arg-type]


def test_copy_of_an_edited_message_is_a_deep_copy_without_reparsing():
    msg = Message(_sample("07-attachment-pdf.eml"), "a@example.com", ["b@example.com", "c@example.com"])
    html = msg.html_parts()[0]
    msg.replace_html(html, html.text().replace("</body>", "<p>shared</p></body>"))
    before = msg.as_bytes()
    copy = msg.copy(rcpt_tos=["c@example.com"])
    assert copy.as_bytes() == before
    assert copy.as_bytes() == Message(before).as_bytes()  # same as parsing the bytes again
    copy_html = copy.html_parts()[0]
    assert copy_html is not html
    copy.replace_html(copy_html, copy_html.text().replace("<p>shared</p>", "<p>only c</p>"))
    copy.change_header("Subject", "for c")
    copy.remove_header("Date")
    assert msg.as_bytes() == before  # the original is untouched
    assert b"<p>only c</p>" in copy.as_bytes() and b"Subject: for c" in copy.as_bytes()
    assert [p.path for p in copy.walk()] == [p.path for p in msg.walk()]
    sealed = msg.copy()
    sealed.seal()
    msg.add_header("X-Still-Editable", "1")  # sealing a copy does not seal the original


def test_a_part_without_header_fields_keeps_its_empty_line_when_edited():
    """Regression: an edited part with no headers (implicit text/plain) lost the empty line
    before its body, turning its first line into a header."""
    raw = (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\n\r\nimplicit text/plain\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--b--\r\n"
    )
    msg = Message(raw)
    _forget_raw(msg)
    assert msg.as_bytes() == raw
    msg = Message(raw)
    msg.replace_text(msg.text_parts()[0], "new text")
    out = msg.as_bytes()
    assert out == raw.replace(b"implicit text/plain", b"new text")
    assert Message(out).text_parts()[0].text() == "new text"


def test_removing_every_top_level_header_keeps_the_body_a_body():
    msg = Message(b"X-A: 1\r\n\r\nbody line: with a colon\r\n")
    msg.remove_header("X-A")
    assert msg.as_bytes() == b"\r\nbody line: with a colon\r\n"


SIGNATURE = b"DKIM-Signature: v=1; a=rsa-sha256;\r\n b=abc"


@pytest.mark.parametrize("path", ALL_INPUTS, ids=lambda p: p.name)
def test_a_field_inserted_on_top_after_serialising_gives_the_bytes_assembling_gives(path):
    """A signer serialises the copy, then puts its field on top: the message's bytes are then the
    field, CRLF and the bytes before (not assembled again), which must be what assembling gives,
    for an edited copy, an unedited one, and one whose tree repairs a child."""
    raw = path.read_bytes()
    for edit in (True, False):
        msg = Message(raw).copy()
        if edit and msg.html_parts():
            part = msg.html_parts()[0]
            msg.replace_html(part, part.text() + "<!-- edited -->")
        before = msg.as_bytes()
        msg.insert_raw_header(SIGNATURE, first=True)
        ours = msg.as_bytes()
        assert ours == SIGNATURE + b"\r\n" + before or path.name == "24-enkod-literal.eml"
        _forget_raw(msg)
        assert ours == msg.as_bytes()


def test_a_field_inserted_on_top_of_a_message_without_an_empty_line_is_assembled():
    """Bytes as received that end with their header block have no empty line to put the field
    before: the message is assembled again (with the empty line), not prefixed."""
    msg = Message(b"From: a@example.com\r\nSubject: no body\r\n")
    assert msg.as_bytes() == b"From: a@example.com\r\nSubject: no body\r\n"
    msg.insert_raw_header(SIGNATURE, first=True)
    assert msg.as_bytes() == SIGNATURE + b"\r\nFrom: a@example.com\r\nSubject: no body\r\n\r\n"
