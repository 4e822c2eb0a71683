"""What the book is made of: the pages of ``_toc.yml`` and the chapter notebooks on disk.

The book tests (notebook files, build, browser) all derive their list of pages from here, so a
chapter added to ``_toc.yml`` is checked without touching any test. Only the standard library and
PyYAML (a Jupyter Book dependency) are used, so ``check_toc.py`` runs before anything is built.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
LANGUAGES = ("en", "ko")
SOURCE_SUFFIXES = (".ipynb", ".md")


@dataclass(frozen=True)
class Page:
    """One page of the table of contents.

    ``docname`` is the path without suffix as written in ``_toc.yml`` (``book/en/01_backbone``);
    ``source`` is the file it names (a notebook or a Markdown page), or None when it is missing.
    """

    docname: str
    source: Path | None

    @property
    def lang(self) -> str | None:
        """``en`` or ``ko`` for pages of a language part, None for the root page."""
        parts = Path(self.docname).parts
        return parts[1] if len(parts) == 3 and parts[0] == "book" and parts[1] in LANGUAGES else None

    @property
    def stem(self) -> str:
        return Path(self.docname).name

    @property
    def slug(self) -> str:
        """A short unique name, ``en_01_backbone`` or ``intro``: test ids and screenshot names."""
        return f"{self.lang}_{self.stem}" if self.lang else self.stem

    def html_path(self, html_dir: Path) -> Path:
        return html_dir / f"{self.docname}.html"


def load_toc(root: Path = REPO_ROOT) -> dict:
    with open(root / "_toc.yml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def toc_docnames(root: Path = REPO_ROOT) -> list[str]:
    """Every ``root`` and ``file`` entry of ``_toc.yml``, in reading order, suffixes stripped."""
    toc = load_toc(root)
    names: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    names.append(_strip_suffix(node[key]))
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(toc)
    return names


def toc_pages(root: Path = REPO_ROOT) -> list[Page]:
    pages = []
    for docname in toc_docnames(root):
        source = next(
            (root / f"{docname}{suf}" for suf in SOURCE_SUFFIXES if (root / f"{docname}{suf}").is_file()),
            None,
        )
        pages.append(Page(docname, source))
    return pages


def notebooks(root: Path = REPO_ROOT, lang: str | None = None) -> list[Path]:
    """Chapter notebooks of one language (or both), sorted by file name."""
    langs = (lang,) if lang else LANGUAGES
    return sorted(p for lg in langs for p in (root / "book" / lg).glob("*.ipynb"))


def docname_of(path: Path, root: Path = REPO_ROOT) -> str:
    return _strip_suffix(path.resolve().relative_to(root.resolve()).as_posix())


def notebooks_missing_from_toc(root: Path = REPO_ROOT) -> list[Path]:
    listed = set(toc_docnames(root))
    return [nb for nb in notebooks(root) if docname_of(nb, root) not in listed]


def toc_entries_without_file(root: Path = REPO_ROOT) -> list[str]:
    return [page.docname for page in toc_pages(root) if page.source is None]


def read_notebook(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def first_heading(page: Page) -> str | None:
    """Plain text of the first level-1 heading of a page's source (Markdown or notebook).

    Inline markup is reduced to its text the way Sphinx writes the page title:
    ``` `code` ``` -> ``code``, ``**bold**`` -> ``bold``, ``[text](url)`` -> ``text``.
    """
    if page.source is None:
        return None
    if page.source.suffix == ".ipynb":
        texts = [cell_source(c) for c in read_notebook(page.source)["cells"] if c["cell_type"] == "markdown"]
    else:
        texts = [page.source.read_text(encoding="utf-8")]
    in_fence = False
    for text in texts:
        for line in text.splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                in_fence = not in_fence
            if not in_fence and re.match(r"#\s", line):
                return _plain(line[1:].strip())
    return None


def _plain(markdown: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown)  # links
    text = re.sub(r"\{[a-z:]+\}`([^`]*)`", r"\1", text)  # roles
    text = text.replace("`", "").replace("**", "").replace("__", "")
    text = re.sub(r"(?<!\w)[*_](\S[^*_]*?)[*_](?!\w)", r"\1", text)  # *emphasis*
    return " ".join(text.split())


def _strip_suffix(name: str) -> str:
    for suf in SOURCE_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return name
