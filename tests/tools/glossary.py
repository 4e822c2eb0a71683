"""Render ``book/glossary.md`` from ``book/glossary.yml``, the book's glossary and Korean term list.

``book/glossary.yml`` is the single source: every concept with its English name, the one Korean
term the Korean chapters use for it, a one-line explanation in each language, and (``avoid``) the
other Korean forms of the same concept that the chapters must not use. The page is generated from
it so that the two can never disagree; ``tests/test_book_text.py`` fails when the committed page
differs from what this module renders.

Run ``python tests/tools/glossary.py`` to rewrite the page after editing the YAML file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE = REPO_ROOT / "book" / "glossary.yml"
PAGE = REPO_ROOT / "book" / "glossary.md"


def load(path: Path = SOURCE) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def terms(data: dict | None = None) -> list[dict]:
    """Every term of every section, in order."""
    data = load() if data is None else data
    return [term for section in data["sections"] for term in section["terms"]]


def _ko(text: str) -> str:
    # Korean text is marked as such: browsers choose its line breaking (book.css: keep-all) and
    # screen readers their voice from the attribute.
    return f'<span lang="ko">{text}</span>'


def render(data: dict | None = None) -> str:
    data = load() if data is None else data
    out = [
        f"# {data['title']}",
        "",
        "% Generated from book/glossary.yml by tests/tools/glossary.py: edit the YAML file.",
        "",
        data["intro_en"].strip(),
        "",
        '<div lang="ko">',
        "",
        data["intro_ko"].strip(),
        "",
        "</div>",
    ]
    for section in data["sections"]:
        out += ["", f"## {section['title']}", "",
                f"| English | {_ko('한국어')} | Explanation | {_ko('설명')} |",
                "| --- | --- | --- | --- |"]
        for t in section["terms"]:
            out.append(f"| {t['en']} | {_ko(t['ko'])} | {t['en_note']} | {_ko(t['ko_note'])} |")
    return "\n".join(out) + "\n"


def main() -> int:
    PAGE.write_text(render(), encoding="utf-8")
    print(f"wrote {PAGE.relative_to(REPO_ROOT)} from {SOURCE.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
