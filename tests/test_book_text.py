"""The book's text, checked as a reader would see it.

- **One Korean term per concept.** ``book/glossary.yml`` is the term list: for every concept the
  one Korean term the Korean chapters use, and (``avoid``) the other forms of the same concept.
  No Korean page may use a form to avoid: markdown cells of ``book/ko/*.ipynb``, the ``.md`` pages
  of ``book/ko/``, the Korean half of ``book/intro.md`` and the Korean column of the glossary. Code
  (fenced or inline), math, link targets, HTML tags and parenthesized text (where the English term
  stands after its Korean one) are not checked.
- **The glossary page is rendered from the term list** (``tests/tools/glossary.py``), so the two
  never disagree: regenerate it with ``python tests/tools/glossary.py``.
- **Korean typography.** A Korean particle follows its word directly, also after a closing ``**``,
  ``*`` or ``)``: "**패딩 마스크**(padding mask)와", never "**패딩 마스크(padding mask)** 와".
  (Inside bold, put the English after the closing ``**``: a ``**`` right after ``)`` and right
  before a Hangul letter does not close the bold in CommonMark.)
- **Code fits the text column.** Every line of every code cell, in both editions, is at most
  88 characters: longer lines are cut off on the rendered page.
- **Chapter titles are numbered**: the first heading of ``NN_topic.ipynb`` starts with ``NN.``
  (``N.``), so the navigation shows every chapter with its number.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import booktoc
import glossary

ROOT = booktoc.REPO_ROOT
KO_NOTEBOOKS = sorted((ROOT / "book" / "ko").glob("*.ipynb"))
KO_PAGES = sorted((ROOT / "book" / "ko").glob("*.md"))
ALL_NOTEBOOKS = sorted((ROOT / "book").glob("*/[0-9][0-9]_*.ipynb"))
MAX_CODE_LINE = 88

# What is not Korean prose: fenced code, inline code, display and inline math, link targets,
# HTML tags, MyST roles' targets.
_NOT_PROSE = re.compile(
    r"```.*?```|~~~.*?~~~|`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]+\$|\]\([^)]*\)|<[^>\n]+>", re.S
)
_PARENS = re.compile(r"\([^()]*\)")
_PARTICLES = (
    "은|는|이|가|을|를|과|와|의|에|에서|으로|로|도|만|처럼|보다|까지|부터|마다|이나|나|이며|이고"
    "|입니다|이라는|라는|와는|과는|에는|로는|으로는|에도|이라고|라고"
)
_SPACE_BEFORE_PARTICLE = re.compile(r"(\*\*|\*|\))[ \t]+(" + _PARTICLES + r")(?=[\s.,;:!?)]|$)")


def _prose(text: str) -> str:
    """The Korean prose of a markdown text: code, math, links and HTML replaced by a placeholder
    (a word, not a space: a particle after inline code or math stays attached to it)."""
    return _NOT_PROSE.sub("\u00a7", text)


def _korean_texts() -> list[tuple[str, str]]:
    """(where, markdown) of every Korean text of the book."""
    texts = []
    for path in KO_NOTEBOOKS:
        nb = booktoc.read_notebook(path)
        for i, cell in enumerate(nb["cells"], start=1):
            if cell["cell_type"] == "markdown":
                texts.append((f"{path.relative_to(ROOT)} cell {i}", booktoc.cell_source(cell)))
    for path in KO_PAGES:
        texts.append((str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")))
    intro = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")
    texts.append(("book/intro.md (Korean part)", intro[intro.index("(korean)=") :]))
    data = glossary.load()
    texts.append(("book/glossary.yml intro_ko", data["intro_ko"]))
    for term in glossary.terms(data):
        texts.append((f"book/glossary.yml {term['en']!r}", f"{term['ko']} | {term['ko_note']}"))
    return texts


KOREAN_TEXTS = _korean_texts()
TERMS = [t for t in glossary.terms() if t.get("avoid")]


def _line_of(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start : end if end >= 0 else len(text)].strip()


# --- the term list and the glossary page ----------------------------------------------------


def test_the_glossary_page_is_rendered_from_the_term_list():
    page = (ROOT / "book" / "glossary.md").read_text(encoding="utf-8")
    assert page == glossary.render(), (
        "book/glossary.md differs from book/glossary.yml: run `python tests/tools/glossary.py`"
    )


def test_every_term_has_both_languages_and_valid_forms_to_avoid():
    for term in glossary.terms():
        assert {"en", "ko", "en_note", "ko_note"} <= set(term), term
        for form in term.get("avoid", []):
            re.compile(form)
            assert not re.search(form, term["ko"]), f"{term['ko']!r} matches its own form to avoid {form!r}"


def test_a_korean_term_belongs_to_one_concept():
    seen: dict[str, str] = {}
    for term in glossary.terms():
        assert term["ko"] not in seen, f"{term['ko']!r} names both {seen[term['ko']]!r} and {term['en']!r}"
        seen[term["ko"]] = term["en"]


# --- the Korean pages -----------------------------------------------------------------------


@pytest.mark.parametrize("term", TERMS, ids=lambda t: t["en"])
def test_korean_pages_use_one_term_per_concept(term):
    found = []
    for where, text in KOREAN_TEXTS:
        prose = _prose(text)
        for form in term["avoid"]:
            # English forms to avoid may still stand in parentheses after the Korean term
            checked = _PARENS.sub(" ", prose) if re.search(r"[A-Za-z]", form) else prose
            for m in re.finditer(form, checked):
                found.append(f"{where}: {m.group()!r} in {_line_of(checked, m.start())[:100]!r}")
    assert not found, f"write {term['ko']!r} ({term['en']}):\n" + "\n".join(found)


def test_no_space_between_a_closing_mark_and_a_korean_particle():
    found = []
    for where, text in KOREAN_TEXTS:
        prose = _prose(text)
        for m in _SPACE_BEFORE_PARTICLE.finditer(prose):
            line = _line_of(prose, m.start())
            # "**...** 이 방식": 이 as "this" is a word, not a particle
            if m.group(2) == "이" and re.match(r"이 [가-힣]", prose[m.end(1):].lstrip()):
                continue
            found.append(f"{where}: {line[:100]!r}")
    assert not found, "remove the space before the particle:\n" + "\n".join(found)


# --- code cells and titles, both editions ---------------------------------------------------


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_code_lines_fit_the_text_column(path):
    long = []
    for i, cell in enumerate(booktoc.read_notebook(path)["cells"], start=1):
        if cell["cell_type"] != "code":
            continue
        for n, line in enumerate(booktoc.cell_source(cell).splitlines(), start=1):
            if len(line) > MAX_CODE_LINE:
                long.append(f"cell {i}, line {n} ({len(line)} characters): {line[:60]}...")
    assert not long, f"code lines over {MAX_CODE_LINE} characters:\n" + "\n".join(long)


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_chapter_title_starts_with_its_number(path):
    first = booktoc.cell_source(booktoc.read_notebook(path)["cells"][0]).splitlines()[0]
    number = int(path.stem[:2])
    assert first.startswith(f"# {number}. "), f"the first heading should start with '# {number}. ': {first!r}"
