"""pipeline.toolkit.html.protect: what the HTML engines must not rewrite is protected, and nothing else."""

from __future__ import annotations

from pipeline.toolkit.html import AMP_MARK, protect

# -- protect ----------------------------------------------------------------------------------


def test_protect_leaves_tags_without_urls_or_ampersands_as_written_and_still_protects_the_rest() -> None:
    html = (
        '<html><body><table width="100%" class="x"><td  background = "bg.png">'
        '<p title="a&b" style="font: a&b">x</p><a HREF=\'https://e.com/?a=1&b=2\'>y</a>'
        "<img Src = \"pic.gif\" alt=\"\"><div data-x='1'>z</div></body></html>"
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
