"""Figure and widget labels follow the book's edition: English, or Korean under ``book/ko/``.

- ``tr`` fills a label's fields in English everywhere but the Korean edition, where it returns the
  catalog's Korean text (same fields) and selects a Korean font for matplotlib.
- A label without a Korean entry stays English, with a warning; text from data (class names,
  ``known_only=True``) is translated when the catalog has it and kept silently otherwise.
- Without an installed Hangul font the labels stay English (boxes instead of letters help nobody).
- Every label the book's code cells and the package's drawing code pass to ``tr`` has a Korean
  entry with the same fields, written with the book's Korean terms (``book/glossary.yml``).
- Figures drawn by the package in the Korean edition carry Korean titles.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import string
from pathlib import Path

import matplotlib
import pytest
import torch

import glossary
from detr_tutorial import language
from detr_tutorial.language import KOREAN, book_language, figure_language, tr

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
HANGUL = re.compile(r"[\uac00-\ud7a3]")


@pytest.fixture
def korean_edition(tmp_path, monkeypatch):
    """Run as a notebook of the Korean edition: the working directory is a folder named ``ko``."""
    folder = tmp_path / "book" / "ko"
    folder.mkdir(parents=True)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.chdir(folder)
    with matplotlib.rc_context():
        yield folder


def test_the_edition_is_the_notebook_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert book_language() == "en"
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "book" / "ko" / "03_encoder.ipynb"))
    assert book_language() == "ko"


def test_english_labels_are_the_templates_filled_in(tmp_path, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tr("image {k}: {n} detections", k=2, n=5) == "image 2: 5 detections"
    assert tr("a label nobody translated") == "a label nobody translated"


@pytest.mark.skipif(language._korean_font() is None, reason="no font with Hangul is installed")
def test_korean_edition_gets_the_catalog_text_and_a_korean_font(korean_edition):
    assert tr("image {k}: {n} detections", k=2, n=5) == "이미지 2: 검출 5개"
    assert tr("circle", known_only=True) == "원"
    assert matplotlib.rcParams["font.family"] == ["DejaVu Sans", language._korean_font()]


def test_a_missing_korean_label_stays_english_with_a_warning(korean_edition, caplog, monkeypatch):
    monkeypatch.setattr(language, "_korean_font", lambda: "DejaVu Sans")
    monkeypatch.setattr(language, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="detr_tutorial.language"):
        assert tr("a label nobody translated") == "a label nobody translated"
        assert tr("dog", known_only=True) == "dog"  # data, not a label: no warning
    assert [r.getMessage() for r in caplog.records] == [
        "no Korean text for the label 'a label nobody translated': it stays English "
        "(add it to detr_tutorial.language.KOREAN)"
    ]


def test_without_a_hangul_font_the_labels_stay_english(korean_edition, monkeypatch):
    monkeypatch.setattr(language, "_korean_font", lambda: None)
    assert figure_language() == "en"
    assert tr("step") == "step"


def test_an_unknown_language_is_an_error():
    with pytest.raises(ValueError, match="lang must be one of en, ko"):
        tr("step", lang="fr")
    with pytest.raises(TypeError, match="English text as a str"):
        tr(3)


# --- the catalog covers every label -------------------------------------------------------------


def _tr_templates(tree: ast.AST) -> list[str]:
    """The English templates passed to ``tr(...)``: literal strings, also in ``a if c else b``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "tr":
            if node.args and not any(k.arg == "known_only" for k in node.keywords):
                found += _strings(node.args[0])
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.IfExp):
            # title = ("..." if c else "..."), then tr(title, ...)
            found += [s for s in _strings(node.value) if "{" in s]
    return found


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def _book_templates() -> dict[str, str]:
    found = {}
    for path in sorted((ROOT / "book" / "en").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                               for line in source.splitlines())
            for text in _tr_templates(ast.parse(source)):
                found.setdefault(text, path.name)
    for path in sorted((ROOT / "detr_tutorial").rglob("*.py")):
        for text in _tr_templates(ast.parse(path.read_text(encoding="utf-8"))):
            found.setdefault(text, str(path.relative_to(ROOT)))
    return found


BOOK_TEMPLATES = _book_templates()


def test_the_book_and_the_package_label_their_figures_through_tr():
    # a guard against the scan finding nothing: every chapter with figures uses tr
    chapters = {where for where in BOOK_TEMPLATES.values() if where.endswith(".ipynb")}
    assert len(chapters) >= 10, sorted(chapters)
    assert any(where.startswith("detr_tutorial/viz") for where in BOOK_TEMPLATES.values())


@pytest.mark.parametrize("text", sorted(BOOK_TEMPLATES), ids=lambda t: t[:40])
def test_every_label_has_a_korean_text_with_the_same_fields(text):
    assert text in KOREAN, f"{text!r} ({BOOK_TEMPLATES[text]}) has no Korean entry in detr_tutorial.language.KOREAN"
    fields = lambda s: sorted(f for _, f, _, _ in string.Formatter().parse(s) if f)
    assert fields(KOREAN[text]) == fields(text)


def test_the_korean_labels_use_the_books_terms():
    found = []
    for term in glossary.terms():
        for form in term.get("avoid", []):
            for english, korean in KOREAN.items():
                if HANGUL.search(korean) and re.search(form, re.sub(r"\([^()]*\)", " ", korean)):
                    found.append(f"{english!r} -> {korean!r}: write {term['ko']!r}, not {form!r}")
    assert not found, "\n".join(found)


# --- the package's figures in the Korean edition --------------------------------------------------


@pytest.mark.skipif(language._korean_font() is None, reason="no font with Hangul is installed")
def test_package_figures_are_labelled_in_korean_in_the_korean_edition(korean_edition):
    from detr_tutorial import viz

    image = torch.rand(3, 64, 96)
    detections = {"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "scores": [0.9], "labels": [0],
                  "query": [3]}
    fig = viz.plot_decoder_attention_grid(image, detections, torch.rand(1, 4, 6),
                                          class_names=["circle"])
    titles = [ax.get_title() for ax in fig.axes]
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "쿼리 3의 어텐션" in titles
    assert "원: 0.90" in texts
