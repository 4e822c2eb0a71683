"""Shared pytest set-up.

Book tests: ``tests/tools/booktoc.py`` (importable as ``booktoc``) says which pages the book has;
``html_dir`` is where ``make book`` / ``make test`` put the built site.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "tools"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def html_dir() -> Path:
    """The built book. Missing means the build step did not run: a failure, never a skip.

    ``BOOK_HTML_DIR`` points the tests at another build (e.g. ``jupyter-book build --path-output``).
    """
    path = Path(os.environ.get("BOOK_HTML_DIR", REPO_ROOT / "_build" / "html"))
    if not (path / "index.html").is_file():
        pytest.fail(f"{path} has no index.html: build the book first (`make book`, or run `make test`)")
    return path
