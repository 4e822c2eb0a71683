"""The book's hand-drawn figures and their Korean twins.

- **Every figure has a Korean twin.** Each English SVG figure, ``images/<name>.svg`` and
  ``book/figures/<name>.svg``, has a Korean twin at ``images/ko/<name>.svg`` and
  ``book/figures/ko/<name>.svg``: the same drawing with its labels in Korean.
- **A twin is a Korean SVG.** It is well-formed XML with an ``<svg>`` root and a ``viewBox``; it is
  marked as Korean (``xml:lang="ko"``); its ``<title>`` and its labels are written in Hangul; every
  ``font-family`` it declares starts with a font that has Hangul (NanumGothic first, then the
  Korean system fonts of other platforms), so that Korean never falls back to a font chosen at
  random.
- **It draws the same picture.** A twin has as many shapes (rectangles, paths, lines, circles,
  markers) as its English figure: only the text is translated, so a change to a drawing that is
  not made to its twin shows here.
- **No English label is left untranslated.** A label without Hangul is allowed only when it is not
  English prose: code (``input_proj``, ``loss.backward()``), tensor shapes (``3 × H × W``), math
  (``sin y/f₀``), names from the paper (``ResNet-50``, ``AdamW``, ``LayerNorm``, ``Q``, ``K``,
  ``V``) and a few operator names (``conv 7×7 /2``). Two or more ordinary English words in one
  label without any Hangul are a forgotten translation.
- **Twins use the term list.** No form that ``book/glossary.yml`` lists to avoid appears in a twin's
  title or labels (English forms may stand in parentheses, as in the chapters).
- **Each edition shows its own figures.** The Korean pages (``book/ko/``, the Korean half of
  ``book/intro.md``) reference only the Korean twins (``../../images/ko/<name>.svg``,
  ``../figures/ko/<name>.svg``), the English pages only the English figures, and every figure a
  page references exists.

How the twins render (no label outside the picture or its box) is checked by hand in a headless
browser when a figure is drawn; these tests check what can be read from the files.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import booktoc
import glossary

ROOT = booktoc.REPO_ROOT
SVG = "{http://www.w3.org/2000/svg}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

FIGURE_FOLDERS = [ROOT / "images", ROOT / "book" / "figures"]
ENGLISH_FIGURES = sorted(p for folder in FIGURE_FOLDERS for p in folder.glob("*.svg"))
KOREAN_FOLDERS = [folder / "ko" for folder in FIGURE_FOLDERS]

# Fonts with Hangul: the first font-family entry must be one of these.
KOREAN_FONTS = {"NanumGothic", "Noto Sans CJK KR", "Noto Sans KR", "Malgun Gothic", "Apple SD Gothic Neo"}
# The one installed where the book is built and tested (Debian's fonts-nanum).
TEST_MACHINE_FONT = "NanumGothic"

# Shapes a twin draws exactly as its English figure does.
SHAPES = ("rect", "path", "line", "circle", "polygon", "polyline", "ellipse", "marker")

# Lower-case words that are names, not prose: operator names written in the figures as code.
KEPT_WORDS = {"conv", "maxpool", "avgpool", "fc", "sin", "cos", "exp", "log"}

_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
# An ordinary English word: letters only, at most its first one upper-case ("image", "Decoder").
# Code (`input_proj`, `loss.backward()`, `layer1`), acronyms (`NMS`, `FFN`) and names with inner
# capitals (`LayerNorm`, `ResNet`) are not words of prose.
_PROSE_WORD = re.compile(r"[A-Za-z][a-z]+")
_TOKEN_EDGES = "()[]{},.;:!?\"'"
_PARENS = re.compile(r"\([^()]*\)")

# How pages reference figures: markdown images, MyST figure/image directives, HTML <img>.
_FIGURE_REFS = re.compile(
    r"!\[[^\]]*\]\(\s*([^)\s]+\.svg)\s*\)"
    r"|^[`:]{3,}\{(?:figure|image)\}\s+(\S+\.svg)"
    r"|<img\b[^>]*\bsrc=[\"']([^\"']+\.svg)[\"']",
    re.M,
)


def _twin_of(figure: Path) -> Path:
    return figure.parent / "ko" / figure.name


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _labels(path: Path) -> list[str]:
    """The visible text of every <text> element (its <tspan>s joined), whitespace normalised."""
    root = ET.parse(path).getroot()
    labels = [" ".join("".join(el.itertext()).split()) for el in root.iter(f"{SVG}text")]
    return [label for label in labels if label]


def _title(path: Path) -> str:
    title = ET.parse(path).getroot().find(f"{SVG}title")
    return "" if title is None else " ".join("".join(title.itertext()).split())


def _font_families(path: Path) -> list[list[str]]:
    """Every font-family the file declares (attributes, style attributes, <style> sheets), each
    as its list of family names."""
    root = ET.parse(path).getroot()
    values = [el.get("font-family") for el in root.iter() if el.get("font-family")]
    css = [el.text or "" for el in root.iter(f"{SVG}style")]
    css += [el.get("style") for el in root.iter() if el.get("style")]
    for sheet in css:
        values += re.findall(r"font-family\s*:\s*([^;}]+)", sheet)
    return [[name.strip().strip("'\"") for name in value.split(",")] for value in values]


def _prose_words(label: str) -> list[str]:
    words = []
    for token in label.split():
        token = token.strip(_TOKEN_EDGES)
        if _PROSE_WORD.fullmatch(token) and token.lower() not in KEPT_WORDS:
            words.append(token)
    return words


def _is_english_prose(label: str) -> bool:
    """A label that is an English phrase: no Hangul and at least two ordinary English words."""
    return not _HANGUL.search(label) and len(_prose_words(label)) >= 2


def _ids(paths):
    return [_rel(p) for p in paths]


# --- every figure has a twin ------------------------------------------------------------------


def test_the_book_has_english_figures():
    names = {p.name for p in ENGLISH_FIGURES}
    assert {"detr_architecture.svg", "detr_overview.svg", "matching.svg"} <= names, names


@pytest.mark.parametrize("figure", ENGLISH_FIGURES, ids=_ids(ENGLISH_FIGURES))
def test_every_english_figure_has_a_korean_twin(figure):
    assert _twin_of(figure).is_file(), f"{_rel(figure)} has no Korean twin {_rel(_twin_of(figure))}"


def test_every_korean_figure_is_the_twin_of_an_english_one():
    orphans = [
        _rel(p) for folder in KOREAN_FOLDERS for p in folder.glob("*.svg")
        if not (folder.parent / p.name).is_file()
    ]
    assert not orphans, f"Korean figures without an English original: {orphans}"


# --- a twin is a Korean SVG -------------------------------------------------------------------

TWINS = [(f, _twin_of(f)) for f in ENGLISH_FIGURES if _twin_of(f).is_file()]
TWIN_IDS = [_rel(twin) for _, twin in TWINS]


@pytest.mark.parametrize(("figure", "twin"), TWINS, ids=TWIN_IDS)
def test_a_twin_is_a_well_formed_svg_with_a_view_box(figure, twin):
    root = ET.parse(twin).getroot()  # raises on malformed XML
    assert root.tag == f"{SVG}svg", f"{_rel(twin)}: root element is {root.tag}, not an SVG <svg>"
    view_box = root.get("viewBox")
    assert view_box, f"{_rel(twin)} has no viewBox"
    numbers = [float(n) for n in view_box.replace(",", " ").split()]
    assert len(numbers) == 4 and numbers[2] > 0 and numbers[3] > 0, f"{_rel(twin)}: viewBox {view_box!r}"


@pytest.mark.parametrize(("figure", "twin"), TWINS, ids=TWIN_IDS)
def test_a_twin_is_marked_korean_and_has_a_korean_title(figure, twin):
    root = ET.parse(twin).getroot()
    assert root.get(XML_LANG) == "ko", f'{_rel(twin)}: <svg> needs xml:lang="ko"'
    if _title(figure):
        assert _HANGUL.search(_title(twin)), f"{_rel(twin)}: the <title> is not in Korean: {_title(twin)!r}"
    for el in root.iter():
        label = el.get("aria-label")
        if label:
            assert _HANGUL.search(label), f"{_rel(twin)}: aria-label not in Korean: {label!r}"


@pytest.mark.parametrize(("figure", "twin"), TWINS, ids=TWIN_IDS)
def test_a_twin_has_korean_labels(figure, twin):
    labels = _labels(twin)
    assert any(_HANGUL.search(label) for label in labels), f"{_rel(twin)}: no label is in Korean"


@pytest.mark.parametrize(("figure", "twin"), TWINS, ids=TWIN_IDS)
def test_a_twin_asks_for_a_korean_font_first(figure, twin):
    families = _font_families(twin)
    assert families, f"{_rel(twin)} declares no font-family"
    for names in families:
        assert names[0] in KOREAN_FONTS, f"{_rel(twin)}: font-family {', '.join(names)!r} starts with {names[0]!r}"
    assert any(TEST_MACHINE_FONT in names for names in families), f"{_rel(twin)} never asks for {TEST_MACHINE_FONT}"


@pytest.mark.parametrize(("figure", "twin"), TWINS, ids=TWIN_IDS)
def test_a_twin_draws_the_same_shapes_as_its_english_figure(figure, twin):
    def shapes(path):
        root = ET.parse(path).getroot()
        return {tag: sum(1 for _ in root.iter(f"{SVG}{tag}")) for tag in SHAPES}

    assert shapes(twin) == shapes(figure), f"{_rel(twin)} and {_rel(figure)} draw different shapes"


# --- no English label left untranslated ------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "english"),
    [
        ("dense anchors", True),
        ("N learned object queries", True),
        ("Add & LayerNorm (norm3)", False),  # one prose word beside a name: too little to tell
        ("layer1", False),
        ("3 × H × W", False),
        ("conv 7×7 /2", False),
        ("maxpool /2", False),
        ("linear1, ReLU, linear2", False),
        ("cross_attn = multihead_attn", False),
        ("loss.backward()", False),
        ("model(samples)", False),
        ("sin y/f₀", False),
        ("hs [6, B, 100, 256]", False),
        ("앵커 기반 검출기(Faster R-CNN, RetinaNet, YOLO)", False),
    ],
)
def test_the_untranslated_label_check_tells_prose_from_kept_terms(label, english):
    assert _is_english_prose(label) is english


@pytest.mark.parametrize("figure", ENGLISH_FIGURES, ids=_ids(ENGLISH_FIGURES))
def test_the_untranslated_label_check_recognises_each_english_figure(figure):
    assert any(_is_english_prose(label) for label in _labels(figure)), (
        f"no label of {_rel(figure)} counts as English prose: the check would not catch a twin "
        "left in English"
    )


@pytest.mark.parametrize(("figure", "twin"), TWINS, ids=TWIN_IDS)
def test_no_english_label_is_left_untranslated(figure, twin):
    english_labels = set(_labels(figure))
    left = [
        f"{label!r}" + (" (copied from the English figure)" if label in english_labels else "")
        for label in _labels(twin)
        if _is_english_prose(label)
    ]
    assert not left, f"{_rel(twin)}: labels still in English: " + ", ".join(left)


# --- twins use the term list -----------------------------------------------------------------

TERMS = [t for t in glossary.terms() if t.get("avoid")]


@pytest.mark.parametrize("term", TERMS, ids=lambda t: t["en"])
def test_twins_use_one_term_per_concept(term):
    found = []
    for _, twin in TWINS:
        for text in [_title(twin), *_labels(twin)]:
            for form in term["avoid"]:
                # as in the chapters, an English form may stand in parentheses after the Korean one
                checked = _PARENS.sub(" ", text) if re.search(r"[A-Za-z]", form) else text
                for m in re.finditer(form, checked):
                    found.append(f"{_rel(twin)}: {m.group()!r} in {text!r}")
    assert not found, f"write {term['ko']!r} ({term['en']}):\n" + "\n".join(found)


# --- each edition shows its own figures ------------------------------------------------------


def _pages() -> list[tuple[str, str, Path, str]]:
    """(where, language, folder the references are relative to, markdown) of every page."""
    pages = []
    for lang in booktoc.LANGUAGES:
        folder = ROOT / "book" / lang
        for path in sorted(folder.glob("*.ipynb")):
            nb = booktoc.read_notebook(path)
            for i, cell in enumerate(nb["cells"], start=1):
                if cell["cell_type"] == "markdown":
                    pages.append((f"{_rel(path)} cell {i}", lang, folder, booktoc.cell_source(cell)))
        for path in sorted(folder.glob("*.md")):
            pages.append((_rel(path), lang, folder, path.read_text(encoding="utf-8")))
    intro = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")
    split = intro.index("(korean)=")
    pages.append(("book/intro.md (English part)", "en", ROOT / "book", intro[:split]))
    pages.append(("book/intro.md (Korean part)", "ko", ROOT / "book", intro[split:]))
    return pages


FIGURE_REFS = [
    (where, lang, ref, (folder / ref).resolve())
    for where, lang, folder, text in _pages()
    for m in _FIGURE_REFS.finditer(text)
    for ref in [next(g for g in m.groups() if g)]
]


def test_the_pages_show_figures():
    assert {lang for _, lang, _, _ in FIGURE_REFS} == set(booktoc.LANGUAGES)


def test_every_referenced_figure_exists():
    missing = [f"{where}: {ref}" for where, _, ref, path in FIGURE_REFS if not path.is_file()]
    assert not missing, "figures that do not exist:\n" + "\n".join(missing)


def test_korean_pages_show_the_korean_twins():
    wrong = [
        f"{where}: {ref}" for where, lang, ref, path in FIGURE_REFS
        if lang == "ko" and path.parent not in KOREAN_FOLDERS
    ]
    assert not wrong, (
        "Korean pages showing English figures (use ../../images/ko/<name>.svg, "
        "../figures/ko/<name>.svg):\n" + "\n".join(wrong)
    )


def test_english_pages_show_the_english_figures():
    wrong = [
        f"{where}: {ref}" for where, lang, ref, path in FIGURE_REFS
        if lang == "en" and path.parent in KOREAN_FOLDERS
    ]
    assert not wrong, "English pages showing Korean figures:\n" + "\n".join(wrong)
