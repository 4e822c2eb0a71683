"""Every chapter starts with the same Colab set-up cell, installing from the one repository URL."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("*/[0-9][0-9]_*.ipynb"))


def _repository_url() -> str:
    text = (ROOT / "_config.yml").read_text()
    match = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", text, flags=re.M)
    assert match, "_config.yml must hold repository: url:"
    return match.group(1)


def test_the_repository_url_is_written_in_one_place():
    url = _repository_url()
    assert url.startswith("https://")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_first_code_cell_installs_the_package_only_in_colab(path):
    cells = json.loads(path.read_text())["cells"]
    first = next(c for c in cells if c["cell_type"] == "code")
    source = "".join(first["source"])
    assert '"google.colab" in sys.modules' in source, "the install must run only in Colab"
    assert f"git+{_repository_url()}" in source, "install from _config.yml's repository url"
    assert "torch.cuda.is_available()" in source, "pick the GPU when there is one"
