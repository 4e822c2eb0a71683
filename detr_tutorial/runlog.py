"""The training log: one JSON object per line (JSONL), appended as training goes, and its plot.

JSONL survives a crash (every line is complete once written); a resumed run first drops the
records of the steps after its checkpoint (:func:`trim_log`: they are trained again), then appends.
Records carry a ``"kind"``: ``"train"`` (step, epoch, lr, loss and its terms, images per second),
``"eval"`` (step and the COCO metrics) or ``"end"`` (summary).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .language import tr

__all__ = ["JsonlLogger", "read_log", "trim_log", "plot_log"]

PathLike = Union[str, os.PathLike]


def _plain(value: Any) -> Any:
    """JSON-safe version of numbers, tensors and containers (non-finite floats become strings)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class JsonlLogger:
    """Append records to ``path`` (flushed at once). ``enabled=False`` makes it a no-op (ranks > 0)."""

    def __init__(self, path: PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_plain(record), ensure_ascii=False) + "\n")


def read_log(path: PathLike) -> list[dict[str, Any]]:
    """All complete records of a log (a torn last line from a killed run is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def trim_log(path: PathLike, step: int) -> int:
    """Drop the records of steps after ``step`` (and torn lines) from a log; return how many went.

    A run resumed from the checkpoint of ``step`` replays the steps after it: without trimming,
    the log would hold those steps twice (the killed run's and the resumed run's). The file is
    rewritten atomically (temporary file + :func:`os.replace`), so a crash keeps the old log.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    records = read_log(path)
    kept = [r for r in records if not (isinstance(r.get("step"), int) and r["step"] > step)]
    dropped = len(lines) - len(kept)
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in kept:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    return dropped


def plot_log(
    path: PathLike,
    loss_keys: Sequence[str] = ("loss", "loss_ce", "loss_bbox", "loss_giou"),
    metric_keys: Sequence[str] = ("AP", "AP50"),
    title: Optional[str] = None,
):
    """A matplotlib ``Figure``: training losses (left, log scale) and eval mAP (right) against step.

    If a run was resumed, records for steps logged twice are kept once (the later one).
    """
    import matplotlib.pyplot as plt  # lazy: matplotlib is only needed for plotting

    records = read_log(path)
    train = {r["step"]: r for r in records if r.get("kind") == "train"}
    evals = {r["step"]: r for r in records if r.get("kind") == "eval"}
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = sorted(train)
    for key in loss_keys:
        ys = [train[s].get(key) for s in steps]
        pts = [(s, y) for s, y in zip(steps, ys) if isinstance(y, (int, float))]
        if pts:
            ax_loss.plot(*zip(*pts), label=key)
    ax_loss.set_xlabel(tr("step"))
    ax_loss.set_ylabel(tr("loss"))
    if steps:
        ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=8)
    ax_loss.set_title(tr("training loss"))
    esteps = sorted(evals)
    for key in metric_keys:
        pts = [(s, evals[s]["metrics"].get(key)) for s in esteps if key in evals[s].get("metrics", {})]
        if pts:
            ax_map.plot(*zip(*pts), marker="o", label=key)
    ax_map.set_xlabel(tr("step"))
    ax_map.set_ylabel(tr("COCO metric"))
    ax_map.set_ylim(0, 1)
    if esteps:
        ax_map.legend(fontsize=8)
    ax_map.set_title(tr("validation"))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
