"""The fast paths of the HTML layer give exactly what the straightforward computations give.

protect()'s tag search (one reversed-text pass for the URL attribute names), protect() itself,
and Protected.restore() are compared with the code as it was before (tests/support/html_reference.py)
on generated HTML and on every HTML part of every message in samples/ and the shared corpus.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.toolkit import html as H
from tests.support import html_part_texts
from tests.support import html_reference as ref

# -- inputs -----------------------------------------------------------------------------------


PARTS = html_part_texts()
PART_IDS = [name for name, _ in PARTS]

BLANKS = [" ", "\t", "\n", "\r\n", "\u3000", "\x0b", ""]
NAMES = [*H._URL_ATTRS, "HREF", "Src", "BackGround", "xhref", "datasrc", "data-x", "title", "style", "alt"]
PIECES = st.sampled_from(
    [
        "<a",
        "<td",
        "<IMG",
        "<p",
        "<",
        ">",
        "/>",
        "</a>",
        "</html>",
        "</HTML >",
        "<html>",
        "<body>",
        "<!DOCTYPE html>",
        "<!--",
        "-->",
        "text",
        "&",
        "&amp;",
        "&nbsp;",
        "=",
        '"',
        "'",
        '"x&y"',
        "'a>b'",
        '"<"',
        "{{ url }}",
        "é",
        "\u0130",  # lower-cases to two characters
        "\u212a",  # KELVIN SIGN, lower-cases to "k"
        H.AMP_MARK,
        "\udc80",
        "\uf780",
    ]
    + [f"{blank}{name}" for name in NAMES for blank in BLANKS]
    + [f"{blank}={blank}" for blank in BLANKS]
)
HTML = st.lists(PIECES, max_size=60).map("".join)


def attribute_soup(draw_tags: list[tuple[str, list[tuple[str, str, str]]]]) -> str:
    out = []
    for tag, attrs in draw_tags:
        out.append(f"<{tag}")
        for name, eq, value in attrs:
            out.append(f" {name}{eq}{value}")
        out.append(">text &nbsp; more</" + tag + ">\n")
    return "".join(out)


TAGS = st.lists(
    st.tuples(
        st.sampled_from(["a", "td", "img", "p", "A", "table", "v:rect"]),
        st.lists(
            st.tuples(
                st.sampled_from(NAMES),
                st.sampled_from(["=", " = ", "\t=", ""]),
                st.sampled_from(
                    ['"https://e.com/?a=1&b=2"', "'x y'", "plain", '"a > b"', '""', "&x", '"{{ u }}"']
                ),
            ),
            max_size=5,
        ),
    ),
    max_size=30,
).map(attribute_soup)


def check_protect(text: str) -> None:
    assert H._tags_needing_work(text) == ref.tags_needing_work(text)
    got = H.protect(text)
    ref.same_protection(got, ref.protect(text, got.marker))


# -- the tag search ---------------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(HTML)
def test_the_tag_search_finds_what_the_nine_literal_passes_and_the_definition_find(html: str) -> None:
    found = H._tags_needing_work(html)
    assert found == ref.tags_needing_work(html)
    assert found == ref.tags_needing_work_by_definition(html)
    long = html + " " * ref._SHORT  # (the reference takes its nine-pass path past 4096 characters)
    assert H._tags_needing_work(long) == ref.tags_needing_work(long)


@settings(max_examples=300, deadline=None)
@given(TAGS)
def test_the_tag_search_finds_every_url_attribute_and_ampersand_in_generated_tags(html: str) -> None:
    assert (
        H._tags_needing_work(html) == ref.tags_needing_work_by_definition(html) == ref.tags_needing_work(html)
    )


# -- protect and restore ----------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(HTML)
def test_protect_gives_what_it_gave_before_on_generated_html(html: str) -> None:
    check_protect(html)
    check_protect(f"<!DOCTYPE html>\n<html><body>{html}</body></html>\n<!-- end -->\n")


@settings(max_examples=300, deadline=None)
@given(
    HTML,
    st.lists(st.sampled_from(["", "x", '"', "'", "&", H.AMP_MARK, "\uf780", "smtpgate-keep-"]), max_size=8),
)
def test_restore_gives_what_it_gave_before_on_any_tool_output(html: str, noise: list[str]) -> None:
    prot = H.protect(html)
    tokens = list(prot.kept)
    # what a tool might return: the protected text, tokens requoted, moved, doubled, mangled or dropped
    outputs = [prot.text, prot.text.replace("'", '"'), "".join(noise) + prot.text[::-1], "".join(tokens)]
    outputs += [f'"{t}"' + n for t, n in zip(tokens, noise, strict=False)]
    outputs += [t[:-1] + n for t, n in zip(tokens, noise, strict=False)]
    for out in outputs:
        assert prot.restore(out) == ref.restore(prot, out)


def test_there_are_html_parts_to_compare() -> None:
    assert len(PARTS) >= 10


@pytest.mark.parametrize("text", [text for _, text in PARTS], ids=PART_IDS)
def test_protect_and_restore_give_what_they_gave_before_on_every_html_part(text: str) -> None:
    check_protect(text)
    prot = H.protect(text)
    assert prot.restore(prot.text) == ref.restore(prot, prot.text) == text
    variants = [text.upper(), text.replace("\r\n", "\n"), text.replace("<html", "<!-- x --><html", 1)]
    for variant in variants:
        check_protect(variant)


@pytest.mark.parametrize("text", [text for _, text in PARTS], ids=PART_IDS)
@pytest.mark.parametrize("engine", ["premailer", "css_inline"])
def test_each_engine_gives_what_it_gave_before_on_every_html_part(
    text: str, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole inline step, fast protect/restore against the reference pair, byte for byte."""
    from plugins import css_inline as plugin

    fast = plugin.CssInlineEngine(False) if engine == "css_inline" else plugin.PremailerEngine(False)
    got = fast.inline(text)

    fast_protect = H.protect

    def slow_protect(html: str) -> H.Protected:
        slow = ref.protect(html, fast_protect(html).marker)
        slow.restore = lambda out: ref.restore(slow, out)  # type: ignore[method-assign]
        return slow

    monkeypatch.setattr(plugin, "protect", slow_protect)
    monkeypatch.setattr(H, "protect", slow_protect)
    assert got == fast.inline(text)


# -- smaller pieces ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(["</html>", "</HTML \t>", "</htm>", "</a>", "</", "<", ">", "x", " ", "\n"]),
        max_size=40,
    )
)
def test_the_last_html_close_found_backwards_is_the_last_one_a_whole_text_regex_finds(
    pieces: list[str],
) -> None:
    body = "".join(pieces)
    found = H._last_html_close(body)
    assert (None if found is None else found.span()) == ref.last_html_close(body)


def test_collapsing_blanks_by_split_and_join_is_the_regex_and_strip_on_every_character() -> None:
    """link.text: ``" ".join(s.split())`` treats exactly the characters ``\\s`` matches as blanks."""
    import re
    import sys

    blanks = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
    assert all(re.fullmatch(r"\s", ch) for ch in blanks)
    assert re.findall(
        r"\s", "".join(chr(c) for c in range(sys.maxunicode + 1) if 0xD800 > c or c > 0xDFFF)
    ) == list(blanks)
    sample = f"{blanks}a{blanks}b c\u00a0d\u3000 e{blanks}"
    assert " ".join(sample.split()) == re.sub(r"\s+", " ", sample).strip()


LINK_HTML = st.lists(
    st.sampled_from(
        [
            '<a href="https://e.com/x">',
            "<a href='#'>",
            "<A HREF=x>",
            "</a>",
            "<b>",
            "</b>",
            "<img src=x>",
            " ",
            "\u00a0",
            "\u3000",
            "\t\n",
            "&amp;",
            "&nbsp;",
            "https://www.example.com",
            "text",
            "<",
            ">",
            "<!-- c -->",
            "</body>",
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(LINK_HTML)
def test_the_visible_text_of_each_link_is_what_it_was_before(html: str) -> None:
    got = [
        (link.tag_start, link.value_start, link.text)
        for link in H._links(html, H._tokenise(html)._anchors or ())
    ]
    assert got == ref.link_texts(html)


@pytest.mark.parametrize("text", [text for _, text in PARTS], ids=PART_IDS)
def test_the_visible_text_of_each_link_is_what_it_was_before_on_every_html_part(text: str) -> None:
    got = [
        (link.tag_start, link.value_start, link.text)
        for link in H._links(text, H._tokenise(text)._anchors or ())
    ]
    assert got == ref.link_texts(text)


def _links_read_twice_and_before(text: str) -> None:
    """Each ``<a>`` read by ``_parse_a`` (twice: the second comes from the per-tag cache) equals the
    uncached reading, and no two links share their attribute dict."""
    seen: list[H.Link] = []
    for start, end, _ in H._tokenise(text)._anchors or ():
        before = ref.parse_a_before(text, start, end)
        first, again = H._parse_a(text, start, end), H._parse_a(text, start, end)
        assert first == again == before
        if first is not None and again is not None:
            assert first.attrs is not again.attrs
            seen.append(first)
    for link in seen:  # a plugin that changed one link's attrs would change no other link
        link.attrs["x-edited"] = "1"
    assert all(
        link is None or "x-edited" not in link.attrs
        for link in (H._parse_a(text, s, e) for s, e, _ in H._tokenise(text)._anchors or ())
    )


@settings(max_examples=400, deadline=None)
@given(LINK_HTML)
def test_each_link_tag_reads_as_it_did_before_the_tag_cache(html: str) -> None:
    _links_read_twice_and_before(html)
    _links_read_twice_and_before(html + html)  # the same tags again, at other offsets


@pytest.mark.parametrize("text", [text for _, text in PARTS], ids=PART_IDS)
def test_each_link_tag_reads_as_it_did_before_the_tag_cache_on_every_html_part(text: str) -> None:
    _links_read_twice_and_before(text)


_A_ATTR = st.tuples(
    st.sampled_from(
        ["href", "HREF", "Href", "class", "style", "title", "data-no-track", "clicktracking", "x"]
    ),
    st.sampled_from(["", "=", " = "]),
    st.sampled_from(['"', "'", ""]),
    st.lists(
        st.sampled_from(
            ["https://e.com/?a=1", "&amp;", "&reg", "&region=eu", "&#39;", "&quot;", "{{ u }}", " ", "x"]
        ),
        max_size=4,
    ).map("".join),
).map(lambda a: f" {a[0]}" + (f"{a[1]}{a[2]}{a[3]}{a[2]}" if a[1] and (a[2] or a[3].strip()) else ""))
A_TAGS = st.lists(
    st.lists(_A_ATTR, max_size=5).map(lambda attrs: "<a" + "".join(attrs) + ">x</a> "), max_size=6
)


@settings(max_examples=400, deadline=None)
@given(A_TAGS)
def test_link_tags_with_entities_and_repeated_attributes_read_as_before(tags: list[str]) -> None:
    html = "".join(tags)
    _links_read_twice_and_before(html)
    _links_read_twice_and_before(html + html)
