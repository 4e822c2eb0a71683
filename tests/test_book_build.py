"""The built book (``_build/html``, made by ``make book``/``make test`` before these run).

Static checks of the HTML files; ``test_browser.py`` then loads each page in a real browser.
A missing build fails here with a clear message instead of skipping.
"""

from __future__ import annotations

import re

import pytest
import yaml

import booktoc

pytestmark = pytest.mark.book

PAGES = booktoc.toc_pages()
NOTEBOOK_PAGES = [p for p in PAGES if p.source is not None and p.source.suffix == ".ipynb"]
# <script src=...>, <link href=...> and <img src=...>: what a browser fetches while opening a page.
FETCHED = re.compile(r"<(?:script|img|link|iframe|source)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.I)


def _config() -> dict:
    with open(booktoc.REPO_ROOT / "_config.yml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_the_site_has_an_entry_page(html_dir):
    assert (html_dir / "index.html").is_file()
    assert (html_dir / f"{booktoc.toc_docnames()[0]}.html").is_file()


@pytest.mark.parametrize("page", PAGES, ids=[p.slug for p in PAGES])
def test_every_toc_page_was_built(html_dir, page):
    assert page.html_path(html_dir).is_file(), f"{page.docname} is in _toc.yml but was not built"


@pytest.mark.parametrize("page", PAGES, ids=[p.slug for p in PAGES])
def test_pages_fetch_nothing_from_other_sites(html_dir, page):
    """MathJax, require.js and the widget manager are served from the book itself (offline)."""
    html = page.html_path(html_dir).read_text(encoding="utf-8")
    links = [m.group(1) for m in FETCHED.finditer(html)]
    # <link rel="canonical"/"prev"/"next"> and icons are fine as long as they are relative;
    # anything absolute would be fetched from outside (or is a sign of a CDN default creeping back).
    external = [u for u in links if re.match(r"(https?:)?//", u)]
    assert not external, f"{page.docname} loads from outside the book: {external}"


def test_vendored_javascript_is_in_the_site(html_dir):
    static = html_dir / "_static"
    cfg = _config()["sphinx"]["config"]
    for rel in [cfg["mathjax_path"], *cfg["nb_ipywidgets_js"]]:
        assert (static / rel).is_file(), f"{rel} missing from {static}"


@pytest.mark.parametrize("page", NOTEBOOK_PAGES, ids=[p.slug for p in NOTEBOOK_PAGES])
def test_notebook_pages_have_a_colab_button_for_their_own_notebook(html_dir, page):
    repo = _config()["repository"]
    owner_repo = repo["url"].rstrip("/").removeprefix("https://github.com/")
    expected = f"colab.research.google.com/github/{owner_repo}/blob/{repo['branch']}/{page.docname}.ipynb"
    assert expected in page.html_path(html_dir).read_text(encoding="utf-8")


@pytest.mark.parametrize("page", PAGES, ids=[p.slug for p in PAGES])
def test_no_markdown_emphasis_left_unrendered(html_dir, page):
    """``**bold**`` or ``*italic*`` that Markdown did not render shows its asterisks to the reader.

    The usual cause in Korean: CommonMark closes ``**`` (or ``*``) only when it is not squeezed
    between punctuation and a letter, so ``**메모리(memory)**라고`` stays literal, while
    ``**메모리**(memory)라고`` works. Code, math and scripts are not prose and are left out; an
    asterisk that belongs in prose can go in code (`` `*` ``).
    """
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page.html_path(html_dir).read_text(encoding="utf-8"), "html.parser")
    article = soup.find("article") or soup
    for tag in article.select("pre, code, script, style, .math, .highlight, .output"):
        tag.decompose()
    text = " ".join(article.get_text(" ").split())
    literal = re.findall(r"\*{1,2}[^*]{0,80}?\*{1,2}\S{0,3}|\*", text)
    assert not literal, f"{page.source}: Markdown left these unrendered (see the docstring): {literal}"
