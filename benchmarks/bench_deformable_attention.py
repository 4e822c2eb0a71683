"""Encoder attention cost: DETR's dense self-attention against multi-scale deformable attention.

    python benchmarks/bench_deformable_attention.py            # sides 256..800 px, 5 rounds
    python benchmarks/bench_deformable_attention.py --quick    # sides 256 and 512, 3 rounds

One attention *layer* of the encoder (projections included, no feed-forward, no norm), one image
(batch 1), d_model 256, 8 heads, float32, as in both papers:

* **dense**: ``detr_tutorial.models.transformer.MultiheadAttention`` over all ``HW`` cells of one
  feature map at stride 32, 16 or 8 (queries = keys = cells + positions, values = cells), as DETR's
  encoder does; its ``F.scaled_dot_product_attention`` path, so it computes ``HW x HW`` scores but
  does not keep them (memory linear, compute quadratic);
* **deformable, 1 level**: ``MSDeformAttn(256, n_levels=1, n_heads=8, n_points=4)`` over the same
  single map, every cell a query at its own centre: the apples-to-apples point (same cells, same
  queries, only the attention differs);
* **deformable, 4 levels**: ``MSDeformAttn(256, 4, 8, 4)`` over strides 8/16/32/64 at once
  (``ceil(side / stride)`` cells a side), every cell of every level a query: Deformable DETR's
  encoder, which sees stride-8 detail; the second table sets its cost against dense attention at
  stride 32 (what DETR affords) and at stride 8 (the same detail, densely).

Sampling offsets and attention weights start from the official initialization plus small random
weights (``N(0, 0.01)``), so that the points move with the query as in a trained model.

Times: one forward + backward (``out.backward(g)`` with a fixed random ``g``; the input receives
gradients too, as a layer inside the encoder) and one forward under ``no_grad`` (inference).
All variants of one image side are measured **interleaved**: each round runs every variant once,
in an order rotated every round, so load from other jobs hits them alike; the tables give medians
over the rounds, and each ratio is the median of the per-round ratios (with the 25-75 % range).

Memory: on the CPU, the bytes autograd **saves for the backward pass** (unique storages of the
tensors packed by ``torch.autograd.graph.saved_tensors_hooks``, weights included): a deterministic
count of a training step's activation memory. On CUDA also the peak allocated memory of the
forward + backward above what was allocated before. ``dense scores`` is what the ``heads x HW x HW``
attention matrix alone would take if materialized (the explicit path, e.g. ``need_weights=True`` or
bfloat16 on the CPU).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (RESULTS.md, "threads")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _official import LoadLog, quartiles  # noqa: E402
from _results import command_line, git_commit, machine_info, markdown_table, update_section  # noqa: E402

D_MODEL, HEADS, POINTS = 256, 8, 4
DENSE_STRIDES = (32, 16, 8)
DEFORMABLE_STRIDES = (8, 16, 32, 64)


def _cells(side: int, stride: int) -> int:
    return math.ceil(side / stride)


class Variant:
    """One attention layer on one input: ``train()`` runs forward + backward, ``infer()`` a forward."""

    def __init__(self, name: str, cells: int, forward: Callable, x, g, device) -> None:
        self.name, self.cells, self._forward, self.x, self.g, self.device = name, cells, forward, x, g, device

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train(self) -> float:
        self.x.grad = None
        t = time.perf_counter()
        self._forward().backward(self.g)
        self._sync()
        return time.perf_counter() - t

    def infer(self) -> float:
        import torch

        t = time.perf_counter()
        with torch.no_grad():
            self._forward()
        self._sync()
        return time.perf_counter() - t

    def saved_mb(self) -> float:
        """MB of unique storages autograd saves for the backward pass of one forward."""
        import torch

        storages: dict[int, int] = {}

        def pack(t):
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = self._forward()
        del out
        return sum(storages.values()) / 2**20

    def cuda_peak_mb(self) -> float | None:
        import torch

        if self.device.type != "cuda":
            return None
        self.x.grad = None
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._forward().backward(self.g)
        torch.cuda.synchronize(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - base) / 2**20


def _dense(side: int, stride: int, device) -> Variant:
    import torch

    from detr_tutorial.models.transformer import MultiheadAttention

    n = _cells(side, stride) ** 2
    attn = MultiheadAttention(D_MODEL, HEADS).to(device)
    x = torch.randn(1, n, D_MODEL, device=device, requires_grad=True)
    pos = torch.randn(1, n, D_MODEL, device=device)
    g = torch.randn(1, n, D_MODEL, device=device)

    def forward():
        q = x + pos
        return attn(q, q, x)[0]

    return Variant(f"dense s{stride}", n, forward, x, g, device)


def _reference_points(shapes: list[tuple[int, int]], device):
    """Every cell's centre ``(x, y)`` in ``[0, 1]``, levels concatenated -> ``[1, S, L, 2]`` (the
    same point for every level, as Deformable DETR's encoder without padding)."""
    import torch

    refs = []
    for h, w in shapes:
        ys, xs = torch.meshgrid((torch.arange(h, device=device) + 0.5) / h,
                                (torch.arange(w, device=device) + 0.5) / w, indexing="ij")
        refs.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    return torch.cat(refs)[None, :, None, :].expand(1, -1, len(shapes), 2)


def _deformable(side: int, strides: tuple[int, ...], device) -> Variant:
    import torch

    from detr_tutorial.models.ms_deform_attn import MSDeformAttn, level_start_index

    shapes = [(_cells(side, s), _cells(side, s)) for s in strides]
    n = sum(h * w for h, w in shapes)
    attn = MSDeformAttn(D_MODEL, len(shapes), HEADS, POINTS).to(device)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0.0, 0.01)
        attn.attention_weights.weight.normal_(0.0, 0.01)
    spatial = torch.tensor(shapes, device=device)
    starts = level_start_index(spatial)
    ref = _reference_points(shapes, device)
    x = torch.randn(1, n, D_MODEL, device=device, requires_grad=True)
    pos = torch.randn(1, n, D_MODEL, device=device)
    g = torch.randn(1, n, D_MODEL, device=device)

    def forward():
        return attn(x + pos, ref, x, spatial, starts)

    name = f"deformable s{strides[0]}" if len(strides) == 1 else f"deformable {len(strides)} levels"
    return Variant(name, n, forward, x, g, device)


def _slope(cells: list[int], ms: list[float]) -> float:
    """Least-squares slope of log(time) against log(cells): 1 is linear growth, 2 quadratic."""
    lx, ly = [math.log(c) for c in cells], [math.log(t) for t in ms]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def measure(side: int, device, rounds: int, max_dense_cells: int, load: LoadLog) -> dict:
    """All variants at one image side, interleaved; per-variant medians and per-round ratios."""
    variants = [_dense(side, s, device) for s in DENSE_STRIDES if _cells(side, s) ** 2 <= max_dense_cells]
    variants += [_deformable(side, (s,), device) for s in DENSE_STRIDES]
    variants.append(_deformable(side, DEFORMABLE_STRIDES, device))
    for v in variants:  # warm-up (allocator, kernels)
        v.train()
        v.infer()
    train: dict[str, list[float]] = {v.name: [] for v in variants}
    infer: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            train[v.name].append(v.train() * 1e3)
            infer[v.name].append(v.infer() * 1e3)
        load.sample()
    return dict(
        cells={v.name: v.cells for v in variants},
        train=train, infer=infer,
        saved={v.name: v.saved_mb() for v in variants},
        peak={v.name: v.cuda_peak_mb() for v in variants},
    )


def _ratio(res: dict, mode: str, num: str, den: str) -> tuple[float, float, float]:
    """Median and 25-75 % range of the per-round ratios ``num / den``."""
    rs = [a / b for a, b in zip(res[mode][num], res[mode][den])]
    lo, hi = quartiles(rs)
    return statistics.median(rs), lo, hi


def _fmt_ratio(r: tuple[float, float, float]) -> str:
    return f"**{r[0]:.2f}x** ({r[1]:.2f}-{r[2]:.2f})"


def report(results: dict[int, dict], device, rounds: int) -> tuple[str, str]:
    cuda = device.type == "cuda"
    rows1, rows2 = [], []
    med = statistics.median
    for side, res in results.items():
        for s in DENSE_STRIDES:
            dense, deform = f"dense s{s}", f"deformable s{s}"
            n = _cells(side, s) ** 2
            has_dense = dense in res["train"]
            row = [side, s, n]
            row += [round(med(res["train"][dense]), 1) if has_dense else "skipped",
                    round(med(res["train"][deform]), 1),
                    _fmt_ratio(_ratio(res, "train", dense, deform)) if has_dense else "",
                    round(med(res["infer"][dense]), 1) if has_dense else "skipped",
                    round(med(res["infer"][deform]), 1),
                    _fmt_ratio(_ratio(res, "infer", dense, deform)) if has_dense else "",
                    round(res["saved"][dense], 1) if has_dense else "", round(res["saved"][deform], 1),
                    round(HEADS * n * n * 4 / 2**20, 1)]
            if cuda:
                row += [round(res["peak"][dense], 1) if has_dense else "", round(res["peak"][deform], 1)]
            rows1.append(row)
        four = "deformable 4 levels"
        row = [side, res["cells"][four], round(med(res["train"][four]), 1), round(med(res["infer"][four]), 1),
               round(res["saved"][four], 1)]
        for s in (32, 8):
            dense = f"dense s{s}"
            row.append(_fmt_ratio(_ratio(res, "train", dense, four)) if dense in res["train"] else "skipped")
        if cuda:
            row.append(round(res["peak"][four], 1))
        rows2.append(row)
    h1 = ["side px", "stride", "cells", "dense fwd+bwd ms", "deformable fwd+bwd ms", "dense / deformable",
          "dense fwd ms", "deformable fwd ms", "dense / deformable (fwd)", "dense saved MB", "deformable saved MB",
          "dense scores MB"]
    h2 = ["side px", "cells (4 levels)", "deformable fwd+bwd ms", "deformable fwd ms", "saved MB",
          "dense s32 / deformable (fwd+bwd)", "dense s8 / deformable (fwd+bwd)"]
    if cuda:
        h1 += ["dense peak MB", "deformable peak MB"]
        h2 += ["peak MB"]
    slopes = []
    for s in DENSE_STRIDES:
        for kind in ("dense", "deformable"):
            name = f"{kind} s{s}"
            pts = [(r["cells"][name], med(r["train"][name])) for r in results.values() if name in r["train"]]
            if len(pts) >= 2:
                slopes.append(f"{name} {_slope(*zip(*pts)):.2f}")
    pts = [(r["cells"]["deformable 4 levels"], med(r["train"]["deformable 4 levels"])) for r in results.values()]
    if len(pts) >= 2:
        slopes.append(f"deformable 4 levels {_slope(*zip(*pts)):.2f}")
    text = (markdown_table(h1, rows1) + "\n\n" + "Deformable DETR's encoder attention (strides 8/16/32/64 at once) "
            "against dense attention at stride 32 (what DETR runs) and at stride 8 (the detail it sees); each query "
            f"samples {len(DEFORMABLE_STRIDES)} x {POINTS} points per head here, {POINTS} in the 1-level rows above:\n\n"
            + markdown_table(h2, rows2))
    growth = ("Growth of the fwd+bwd time with the number of cells (slope of log time against log cells over "
              "the image sides; 1 = linear, 2 = quadratic): " + ", ".join(slopes) + "." if slopes else "")
    return text, growth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", type=int, nargs="+", default=[256, 384, 512, 640, 800])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                   help="all: the CPU, and CUDA when available (default)")
    p.add_argument("--max-dense-cells", type=int, default=10_000,
                   help="skip dense attention above this many cells (its cost grows with their square)")
    p.add_argument("--quick", action="store_true", help="sides 256 and 512, 3 rounds")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.sides, a.rounds = [256, 512], 3

    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    devices = [torch.device("cpu")] if a.device in ("cpu", "all") else []
    if a.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if not devices:
        raise SystemExit("--device cuda: no CUDA device")
    sections = []
    stored = {}
    for device in devices:
        load = LoadLog()
        results = {}
        for side in a.sides:
            results[side] = measure(side, device, a.rounds, a.max_dense_cells, load)
            res = results[side]
            print(f"[{device.type}] side {side}: " + ", ".join(
                f"{k} {statistics.median(v):.1f} ms" for k, v in res["train"].items()), flush=True)
        table, growth = report(results, device, a.rounds)
        stored[device.type] = {
            "machine": machine_info(), "load": load.describe(a.threads), "rounds": a.rounds,
            "sides": {str(side): {
                "cells": res["cells"],
                "train_ms": {k: statistics.median(v) for k, v in res["train"].items()},
                "infer_ms": {k: statistics.median(v) for k, v in res["infer"].items()},
                "saved_mb": res["saved"],
            } for side, res in results.items()},
        }
        print(table)
        print(growth)
        where = (f"device {device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                                            else f", {a.threads} threads, OMP_WAIT_POLICY {os.environ['OMP_WAIT_POLICY']}"))
        sections.append(
            f"#### {device.type.upper()}\n\n"
            f"{where}; median of {a.rounds} interleaved rounds after one warm-up round; batch 1, d_model "
            f"{D_MODEL}, {HEADS} heads, {POINTS} points per head and level, float32. Ratios: dense time / deformable "
            "time, median of the per-round ratios (25-75 % range); above 1: deformable is faster. \"saved MB\": "
            "what autograd keeps for the backward pass (activation memory of a training step); \"dense scores MB\": "
            "the `heads x cells x cells` attention matrix, which SDPA does not keep but the explicit path does."
            + (" \"peak MB\": CUDA peak allocated during forward + backward, above the memory allocated before."
               if device.type == "cuda" else "")
            + f"\n\n{table}\n\n{growth}\n\nMachine: {machine_info()}; {load.describe(a.threads)}.\n"
        )
    body = (
        "### Encoder attention: dense (DETR) against multi-scale deformable (Deformable DETR)\n\n"
        f"`{command_line()}` (commit {git_commit()}). One encoder attention layer (projections included, no "
        "feed-forward) on one image of `side x side` pixels: dense `MultiheadAttention` over the cells of one "
        "feature map (DETR's encoder, SDPA path); `MSDeformAttn` with 1 level at the same stride (same cells and "
        "queries: the apples-to-apples row); and `MSDeformAttn` over strides 8/16/32/64 at once (Deformable "
        "DETR's encoder, second table). `ms_deform_attn` is plain PyTorch (`F.grid_sample` per level), not the "
        "official CUDA kernel. Details in the script's docstring.\n\n" + "\n".join(sections)
    )
    if not a.no_write:
        update_section("deformable-attention", body, after="attention")
        store_results(stored, command_line(), git_commit())


def store_results(stored: dict, command: str, commit: str) -> None:
    """The medians as package data, ``dt.benchmark_results("deformable_attention")`` (chapter 10's
    plot): per device and image side, each variant's cells, fwd+bwd and fwd ms, saved MB."""
    import json

    from detr_tutorial.stored_results import RESULTS_DIR

    data = {"benchmark": "benchmarks/bench_deformable_attention.py", "command": command, "commit": commit,
            "d_model": D_MODEL, "heads": HEADS, "points": POINTS, "devices": stored}
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "deformable_attention.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
