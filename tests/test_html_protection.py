"""pipeline.toolkit.html.protect: what the HTML engines must not rewrite is protected, and nothing else."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.toolkit import html as H
from pipeline.toolkit.html import AMP_MARK, protect
from tests.support import html_reference as reference

# -- protect ----------------------------------------------------------------------------------


def test_protect_leaves_tags_without_urls_or_ampersands_as_written_and_still_protects_the_rest() -> None:
    html = (
        '<html><body><table width="100%" class="x"><td  background = "bg.png">'
        '<p title="a&b" style="font: a&b">x</p><a HREF=\'https://e.com/?a=1&b=2\'>y</a>'
        '<img Src = "pic.gif" alt=""><div data-x=\'1\'>z</div></body></html>'
    )
    prot = protect(html)
    text = prot.text
    assert '<table width="100%" class="x">' in text and "<div data-x='1'>" in text
    assert "bg.png" not in text and "pic.gif" not in text and "https://e.com" not in text
    assert f'title="a{AMP_MARK}b"' in text and 'style="font: a&b"' in text
    assert len(prot.kept) == 3
    assert prot.restore(text) == html


def test_protect_takes_the_attribute_path_for_non_ascii_tags() -> None:
    # U+212A KELVIN SIGN lower-cases to "k": "bac\u212aground" is the background attribute.
    html = '<html><body><td bac\u212aground="x.png">t</td></body></html>'
    prot = protect(html)
    assert "x.png" not in prot.text and len(prot.kept) == 1
    assert prot.restore(prot.text) == html


# -- which tags protect() works on: the one pass over the reversed text against the nine literal passes --

TAG_NAMES = st.sampled_from(["<a", "<td", "<IMG", "<p", "<", "text", "<!--", "-->", "/", ">", "&amp;"])
ATTRS = st.sampled_from(
    [
        f"{blank}{name}{eq}"
        for name in H._URL_ATTRS + ("HREF", "xhref", "datasrc", "title")
        for blank in (" ", "\t", "\u3000", "")
        for eq in ("=", " = ", "")
    ]
    + ['"x"', "'y'", "&", "x", ">", "\n"]
)
PIECES = st.lists(st.tuples(TAG_NAMES, st.lists(ATTRS, max_size=4)), max_size=12).map(
    lambda tags: "".join(name + "".join(attrs) for name, attrs in tags)
)


@settings(max_examples=400, deadline=None)
@given(PIECES)
def test_one_pass_over_the_reversed_text_finds_the_tags_the_nine_literal_passes_find(html: str) -> None:
    assert H._tags_needing_work(html) == reference.tags_needing_work(html)
    padded = html + " " * reference._SHORT  # (past 4096 characters: the reference's nine passes)
    assert H._tags_needing_work(padded) == reference.tags_needing_work(padded)
