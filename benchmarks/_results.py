"""Shared by the benchmarks: machine description and updating one section of ``RESULTS.md``.

Each benchmark owns sections delimited by ``<!-- BEGIN name -->`` / ``<!-- END name -->``
markers and replaces only those, so benchmarks can run in any order and re-runs update in place.
"""
from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = """# Benchmark results

Written by the scripts in this folder (each one replaces only its own sections). Every table
says on which machine, with which versions and under which load it was measured. CPU numbers on
a shared machine move with the load: compare ratios measured in the same run, and training
recipes at equal *steps*.
"""


def machine_info() -> str:
    """One line: CPU model, cores, torch threads, load average, Python/torch/torchvision versions."""
    import torch
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {gpu}; "
        f"load average (1/5/15 min) {load}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def git_commit() -> str:
    """The short commit, plus a note when the package's files differ from it (a measurement of an
    uncommitted working tree must not pass for one of the commit)."""
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=root, timeout=10)
        commit = out.stdout.strip() or "unknown"
        # GIT_OPTIONAL_LOCKS=0: a read-only look, never taking the index lock from a concurrent commit
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "detr_tutorial"], capture_output=True,
                               text=True, cwd=root, timeout=10,
                               env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout.strip()
        return f"{commit} + uncommitted changes in detr_tutorial/" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def update_section(name: str, body: str, path: Path = RESULTS, after: str | None = None) -> None:
    """Replace the section ``name`` of ``RESULTS.md`` with ``body``; a new section goes right after
    the section ``after`` when that one exists, else at the end."""
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    anchor = f"<!-- END {after} -->" if after else None
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    elif anchor and anchor in text:
        text = text.replace(anchor, anchor + "\n\n" + block, 1)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def fmt(x: object) -> str:
        return f"{x:.4g}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    return "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3
