"""Check that _toc.yml and the chapter notebooks agree; exit 1 with the differences if not.

Usage: ``python tests/tools/check_toc.py`` (from anywhere). The same checks run in
``tests/test_notebook_files.py``; this script is the quick version for writers adding a chapter.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import booktoc  # noqa: E402


def main() -> int:
    problems = []
    for nb in booktoc.notebooks_missing_from_toc():
        problems.append(f"{nb.relative_to(booktoc.REPO_ROOT)} is not listed in _toc.yml "
                        f"(add `- file: {booktoc.docname_of(nb)}`)")
    for docname in booktoc.toc_entries_without_file():
        problems.append(f"_toc.yml lists {docname}, but no {docname}.ipynb or .md exists")
    for line in problems:
        print(line)
    if not problems:
        print(f"_toc.yml lists all {len(booktoc.notebooks())} notebooks and every entry exists")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
