"""Attention forward + backward on the CPU: PyTorch's fused SDPA kernel against the explicit path.

    python benchmarks/bench_attention.py

``detr_tutorial``'s ``MultiheadAttention`` calls ``F.scaled_dot_product_attention`` in float32,
and switches to the explicit ``softmax(q k^T / sqrt(d)) v`` when its inputs are bfloat16 or
float16 on the CPU (training with ``amp="bf16"``). This script measures why, at the attention
shapes of the ``shapes-cpu`` recipe (batch 32, 8 heads): encoder self-attention over the 8x8
cells, decoder self-attention among the 20 queries, and the conditional cross-attention (query
and key carry content + spatial channels, 2 x 16 per head) over the 8x8 memory. Every row is one
forward and one backward pass, median of ``--repeats``; the ratio is SDPA / explicit, measured
side by side in the same run.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import command_line, git_commit, machine_info, markdown_table, median_ms, update_section  # noqa: E402

SHAPES = (  # name, query length, key length, channels per head
    ("encoder self-attention (8x8 cells)", 64, 64, 16),
    ("decoder self-attention (20 queries)", 20, 20, 16),
    ("conditional cross-attention (20 x 64)", 20, 64, 32),
)


def _explicit(q, k, v, keep):
    import torch

    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for name, lq, lk, hd in SHAPES:
            q = torch.randn(a.batch, 8, lq, hd, dtype=dtype, requires_grad=True)
            k = torch.randn(a.batch, 8, lk, hd, dtype=dtype, requires_grad=True)
            v = torch.randn(a.batch, 8, lk, 16, dtype=dtype, requires_grad=True)
            keep = torch.ones(a.batch, 1, 1, lk, dtype=torch.bool)  # a key-padding mask, as in training
            keep[0, ..., lk // 2 :] = False

            def step(fn):
                return lambda: fn(q, k, v, keep).float().square().sum().backward()

            sdpa = median_ms(step(lambda *t: F.scaled_dot_product_attention(t[0], t[1], t[2], attn_mask=t[3])), a.repeats)
            explicit = median_ms(step(_explicit), a.repeats)
            rows.append([str(dtype).removeprefix("torch."), name, round(sdpa, 2), round(explicit, 2), f"{sdpa / explicit:.2f}x"])
            print(f"{rows[-1][0]:9s} {name:40s} SDPA {sdpa:7.2f} ms  explicit {explicit:7.2f} ms  ratio {rows[-1][-1]}")
    table = markdown_table(["dtype", "attention", "SDPA fwd+bwd (ms)", "explicit fwd+bwd (ms)", "SDPA / explicit"], rows)
    body = (
        "### Attention under CPU autocast: SDPA against the explicit path\n\n"
        f"`{command_line()}` (commit {git_commit()}), batch {a.batch}, 8 heads, median of {a.repeats}.\n"
        f"Machine: {machine_info()}.\n\n{table}\n\n"
        "`MultiheadAttention` uses the explicit path for bfloat16/float16 on the CPU and SDPA otherwise: in float32 the two are close at these short lengths, and SDPA does not hold the `[L, L]` weights in memory (a COCO image at stride 32 has ~1000 cells).\n"
    )
    if not a.no_write:
        update_section("attention", body)


if __name__ == "__main__":
    main()
