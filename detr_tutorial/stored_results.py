"""The measured numbers the book prints, as the benchmark scripts stored them.

``benchmarks/bench_families.py`` and ``benchmarks/bench_deformable_attention.py`` write, next to
their ``RESULTS.md`` sections, one JSON file each under ``detr_tutorial/results/``: the package
ships them, so a chapter reads the measured figures (in the book build, in Colab, from an
installed wheel) instead of retyping them::

    results = dt.benchmark_results("families_standard")
    results["families"]["rtdetr"]["metrics_128"]["AP"]

A name that was never measured is an error that lists the ones that were.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["RESULTS_DIR", "benchmark_results", "available_results"]

#: where the benchmark scripts store their results (package data)
RESULTS_DIR = Path(__file__).with_name("results")


def available_results() -> list[str]:
    """The names of the stored results (``families_standard``, ``deformable_attention``, ...)."""
    return sorted(p.stem for p in RESULTS_DIR.glob("*.json"))


def benchmark_results(name: str) -> dict[str, Any]:
    """The stored results ``name`` (a JSON object: what was measured, on which machine, by which
    command and commit)."""
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(available_results()) or "none"
        raise FileNotFoundError(
            f"no stored benchmark results named {name!r} (stored: {known}); the benchmarks in "
            "benchmarks/ write them (e.g. python benchmarks/bench_families.py)"
        )
    return json.loads(path.read_text(encoding="utf-8"))
