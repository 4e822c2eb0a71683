"""Inference speed of the families: RT-DETR against DETR and Deformable DETR, same width, same input.

    python benchmarks/bench_families_speed.py                 # 512 px, batch 1, 5 rounds
    python benchmarks/bench_families_speed.py --quick         # 320 px, 3 rounds (the CPU run of RESULTS.md)

The three COCO models at their papers' sizes but one hidden width (``--hidden``, 256 as all three
papers) and 80 classes: ``detr-r50`` (ResNet-50, 6 + 6 dense layers, 100 queries),
``deformable-detr`` (ResNet-50, 4 levels, 6 + 6 deformable layers, 300 queries) and ``rtdetr-r50``
(PResNet-50-vd, hybrid encoder, 6 decoder layers, 300 queries; ``eval_spatial_size`` set to the
input); random weights (speed does not depend on them), eval mode, ``torch.no_grad``, float32.
The input is one ``[B, 3, S, S]`` batch, ImageNet-normalized, as ``dt.predict`` feeds it.

Rounds are **interleaved**: each round times every model once (``--repeats`` forwards after one
warm-up), in an order rotated every round, so load from other jobs hits them alike. The table gives
the median images/s over rounds and each ratio to DETR as the median of the per-round ratios.
Runs on the CPU and, when present, on CUDA (synchronized timings).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (RESULTS.md, "threads")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import detr_tutorial as dt  # noqa: E402
from _results import command_line, git_commit, machine_info, markdown_table, update_section  # noqa: E402

MODELS = {"DETR": "detr-r50", "Deformable DETR": "deformable-detr", "RT-DETR": "rtdetr-r50"}


def build(preset: str, hidden: int, size: int, device: str) -> torch.nn.Module:
    extra = {"eval_spatial_size": (size, size)} if preset.startswith("rtdetr") else {}
    model = dt.build_model(preset, num_classes=80, hidden_dim=hidden, pretrained_backbone=False, **extra)
    return model.to(device).eval()


def time_once(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> float:
    """Images per second over ``repeats`` forwards, after one warm-up forward."""
    with torch.no_grad():
        model(images)
        if images.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model(images)
        if images.is_cuda:
            torch.cuda.synchronize()
    return images.shape[0] * repeats / (time.perf_counter() - start)


def measure(device: str, args: argparse.Namespace) -> list[list[object]]:
    """One table row per model: params (M), median images/s, median ratio to DETR."""
    torch.manual_seed(0)
    models = {name: build(preset, args.hidden, args.size, device) for name, preset in MODELS.items()}
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    rates: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            rates[name].append(time_once(models[name], images, args.repeats))
    rows = []
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(rates[name], rates["DETR"]))
        params = sum(p.numel() for p in models[name].parameters()) / 1e6
        rows.append([name, MODELS[name], device, f"{params:.1f}", f"{statistics.median(rates[name]):.2f}", f"{ratio:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="320 px, 3 rounds")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    if args.quick:
        args.size, args.rounds = 320, 3
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = [row for device in devices for row in measure(device, args)]
    header = ["family", "preset", "device", "params (M)", "images/s (median)", "ratio to DETR"]
    table = markdown_table(header, rows)
    print(table)
    if args.no_write:
        return
    body = "\n".join([
        "## Inference speed of the families (RT-DETR, DETR, Deformable DETR)", "",
        f"Input `[{args.batch}, 3, {args.size}, {args.size}]`, hidden {args.hidden}, 80 classes, random weights, "
        f"eval mode, no_grad, float32; {args.rounds} interleaved rounds of {args.repeats} forwards "
        "(`benchmarks/bench_families_speed.py` says how).", "",
        f"Machine: {machine_info()}. Commit {git_commit()}. Command: `{command_line()}`.", "",
        table,
    ])
    update_section("families-speed", body)


if __name__ == "__main__":
    main()
