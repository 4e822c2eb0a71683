"""Shared by the benchmarks that run the official facebookresearch/detr code beside ours.

``--official DIR`` is a checkout of https://github.com/facebookresearch/detr fetched by the user
(it is never vendored here). Its top-level packages ``models`` and ``util`` have generic names, so
a benchmark imports them only in a child process (:func:`run_child`), never in the process that
writes ``RESULTS.md``.
"""
from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

OFFICIAL_MODULES = ("util.misc", "util.box_ops", "models.backbone", "models.transformer", "models.matcher",
                    "models.detr")


def import_official(directory: str, modules: tuple[str, ...] = OFFICIAL_MODULES) -> dict[str, ModuleType]:
    """Import the official ``models`` and ``util`` packages from ``directory`` (a checkout).

    Refuses a directory that is not a checkout, a ``models``/``util`` already imported from
    elsewhere, and a module that resolved to a file outside ``directory``.
    """
    root = Path(directory).resolve()
    if not (root / "models" / "detr.py").is_file() or not (root / "util" / "misc.py").is_file():
        raise SystemExit(f"--official {directory}: not a facebookresearch/detr checkout (no models/detr.py, util/misc.py)")
    for top in ("models", "util"):
        if top in sys.modules:
            raise SystemExit(f"a module named {top!r} is already imported ({sys.modules[top]!r}); it would shadow the official one")
    sys.path.insert(0, str(root))
    try:
        mods = {name: importlib.import_module(name) for name in modules}
    finally:
        sys.path.remove(str(root))
    for name, mod in mods.items():
        if not Path(mod.__file__).resolve().is_relative_to(root):
            raise SystemExit(f"{name} was imported from {mod.__file__}, not from {root}")
    return mods


def child_env(wait_policy: str) -> dict[str, str]:
    """The environment of a measuring child: ours, with ``OMP_WAIT_POLICY`` set (``"default"``: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy
    return env


class LoadLog:
    """The 1-minute load average, sampled while the children run (it includes their own threads)."""

    def __init__(self) -> None:
        self.start = os.getloadavg()[0]
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def describe(self, threads: int) -> str:
        hi = max(self.samples, default=self.start)
        shared = ("so other jobs shared the CPU at times" if hi > threads + 0.5 else
                  "so the CPU was not visibly shared with other jobs")
        return (f"1-minute load average {self.start:.2f} at the start, up to {hi:.2f} during the run (which itself "
                f"keeps {threads} threads busy on {os.cpu_count()} cores), {shared}")


def run_child(script: str, args: list[str], env: dict[str, str], load: LoadLog) -> dict | None:
    """Run ``python script *args``, sampling the load meanwhile; return the JSON it printed after
    ``RESULT `` (``None``, with its output on stderr, when it failed)."""
    proc = subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    while True:
        try:
            stdout, stderr = proc.communicate(timeout=5)
            break
        except subprocess.TimeoutExpired:
            load.sample()
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(f"{args} failed:\n{stdout[-1000:]}\n{stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(line[0][len("RESULT "):])


def print_result(result: dict) -> None:
    """What a child prints for :func:`run_child`."""
    print("RESULT " + json.dumps(result))


def quartiles(xs: list[float]) -> tuple[float, float]:
    """The 25 % and 75 % points of ``xs`` (both ``xs[0]`` for a single value)."""
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[0], q[2]
