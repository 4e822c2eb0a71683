"""The chapter notebooks as files: what every chapter must satisfy before it is built or run.

- Both editions have the same chapters, and a chapter's code is the same in both languages
  (only the prose is translated), so a fix in one can never be forgotten in the other.
- Notebooks are stored executed, top to bottom, without errors or stderr: the book renders
  stored outputs (``execute_notebooks: off``), and nbval compares cells marked
  ``# NBVAL_CHECK_OUTPUT`` with their stored output, which silently does nothing when the output
  was cleared.
- Every notebook is a page of the book (listed in ``_toc.yml``) and has a title.

These tests are per notebook; the first group also runs when there are no chapters yet.
"""

from __future__ import annotations

import pytest

import booktoc

NOTEBOOKS = booktoc.notebooks()
EN = {p.name: p for p in booktoc.notebooks(lang="en")}
KO = {p.name: p for p in booktoc.notebooks(lang="ko")}
PAIRS = sorted(set(EN) & set(KO))
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def _ids(paths):
    return [booktoc.docname_of(p).removeprefix("book/") for p in paths]


def _code_cells(nb: dict) -> list[tuple[int, dict]]:
    """(number, cell) of each code cell; numbered from 1 over all cells, as the book build does."""
    return [(i, c) for i, c in enumerate(nb["cells"], start=1) if c["cell_type"] == "code"]


def _tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


# --- the book as a whole ---------------------------------------------------------------------


def test_both_editions_have_the_same_chapters():
    assert sorted(EN) == sorted(KO), (
        f"only in book/en: {sorted(set(EN) - set(KO))}; only in book/ko: {sorted(set(KO) - set(EN))}"
    )


def test_every_notebook_is_listed_in_the_toc():
    missing = booktoc.notebooks_missing_from_toc()
    assert not missing, "add to _toc.yml: " + ", ".join(booktoc.docname_of(p) for p in missing)


def test_every_toc_entry_names_an_existing_page():
    assert not booktoc.toc_entries_without_file(), "no such .ipynb/.md file"


def test_both_parts_of_the_toc_list_the_chapters_in_the_same_order():
    pages = booktoc.toc_pages()
    en = [p.stem for p in pages if p.lang == "en"]
    ko = [p.stem for p in pages if p.lang == "ko"]
    assert en and ko, "_toc.yml needs an English and a Korean part"
    assert en == ko


# --- each chapter pair -----------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIRS)
def test_code_cells_are_identical_in_both_languages(name):
    en = [booktoc.cell_source(c) for _, c in _code_cells(booktoc.read_notebook(EN[name]))]
    ko = [booktoc.cell_source(c) for _, c in _code_cells(booktoc.read_notebook(KO[name]))]
    assert len(en) == len(ko), f"{len(en)} code cells in en, {len(ko)} in ko"
    differing = [i for i, (a, b) in enumerate(zip(en, ko), start=1) if a != b]
    assert not differing, f"these code cells differ (the n-th code cell, counting code cells only): {differing}"


def _text_outputs(cell: dict) -> list[str]:
    """The text a cell printed or returned (what nbval compares), without images or widgets.

    The kernel cuts a stream into chunks as time goes by, so consecutive chunks of one stream are
    joined, as nbval joins them before it compares.
    """
    texts: list[str] = []
    previous_stream = None
    for out in cell.get("outputs", []):
        stream = out.get("name") if out.get("output_type") == "stream" else None
        if stream is not None:
            text = booktoc.cell_source({"source": out.get("text", "")})
            if stream == previous_stream:
                texts[-1] += text
            else:
                texts.append(f"{stream}: {text}")
        elif "text/plain" in out.get("data", {}):
            texts.append(booktoc.cell_source({"source": out["data"]["text/plain"]}))
        previous_stream = stream
    return texts


@pytest.mark.parametrize("name", PAIRS)
def test_checked_outputs_are_identical_in_both_languages(name):
    """Cells nbval checks are deterministic and the code is the same, so their stored text must be
    too: a difference means one edition was re-executed after a change and the other was not."""
    def checked(path):
        nb = booktoc.read_notebook(path)
        return [_text_outputs(c) for _, c in _code_cells(nb) if CHECK_MARK in booktoc.cell_source(c)]

    en, ko = checked(EN[name]), checked(KO[name])
    differing = [i for i, (a, b) in enumerate(zip(en, ko), start=1) if a != b]
    assert not differing, f"stored outputs differ in these `{CHECK_MARK}` cells (counting marked cells): {differing}"


# --- each notebook ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_kernelspec_is_python3(path):
    nb = booktoc.read_notebook(path)
    assert nb.get("metadata", {}).get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_every_code_cell_was_executed_top_to_bottom(path):
    """Stored outputs come from one clean run (``jupyter execute --inplace <notebook>``)."""
    nb = booktoc.read_notebook(path)
    counts = [(i, c.get("execution_count")) for i, c in _code_cells(nb) if booktoc.cell_source(c).strip()]
    unexecuted = [i for i, n in counts if n is None]
    assert not unexecuted, f"cells never executed: {unexecuted}"
    numbers = [n for _, n in counts]
    assert numbers == sorted(set(numbers)), f"cells were run out of order: execution counts {numbers}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_cells_checked_by_nbval_have_stored_outputs(path):
    nb = booktoc.read_notebook(path)
    empty = [i for i, c in _code_cells(nb) if CHECK_MARK in booktoc.cell_source(c) and not c.get("outputs")]
    assert not empty, f"cells marked {CHECK_MARK} without a stored output (nbval would check nothing): {empty}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_no_stored_errors(path):
    nb = booktoc.read_notebook(path)
    failing = [
        i for i, c in _code_cells(nb)
        if "raises-exception" not in _tags(c) and any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    assert not failing, f"cells stored with an error (tag `raises-exception` if intended): {failing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_no_stored_stderr(path):
    """The build turns stderr into an error (``stderr_output: warn`` with ``-W``); this says where."""
    nb = booktoc.read_notebook(path)
    noisy = [
        i for i, c in _code_cells(nb)
        if "remove-stderr" not in _tags(c)
        and any(o.get("output_type") == "stream" and o.get("name") == "stderr" for o in c.get("outputs", []))
    ]
    assert not noisy, f"cells with stderr output (silence it, or tag the cell `remove-stderr`): {noisy}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_has_a_title(path):
    page = booktoc.Page(booktoc.docname_of(path), path)
    assert booktoc.first_heading(page), "no `# Title` heading in any markdown cell"
