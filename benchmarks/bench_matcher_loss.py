"""Time of the Hungarian matcher and of the whole set loss per batch.

    python benchmarks/bench_matcher_loss.py

At the comparison configuration (batch 16, 20 queries, 3 classes, 2 decoder layers with the
auxiliary loss, 128x128 shapes targets), with outputs of a randomly initialized ``detr-tiny``:

* matcher: one ``HungarianMatcher`` call on the last layer's outputs (official: 1.9 ms);
* matcher + loss: ``SetCriterion`` forward on all decoder layers (matching every layer, the
  classification, L1, GIoU and cardinality terms) — the official code's "matcher + loss"
  measured 9 ms per batch on this kind of machine.
The target is ``<= 0.8x`` the official time; the table gives the ratio ours / official.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import command_line, git_commit, machine_info, markdown_table, median_ms, update_section  # noqa: E402

OFFICIAL_MATCHER_MS = 1.9
OFFICIAL_MATCHER_LOSS_MS = 9.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()

    import torch

    from detr_tutorial.config import get_config
    from detr_tutorial.criterion import build_criterion
    from detr_tutorial.data import build_dataset, collate_fn
    from detr_tutorial.models import build_model

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = []
    from detr_tutorial.recipes import RECIPES

    shapes_cpu = RECIPES["shapes-cpu"]
    settings = (
        ("comparison (softmax CE)", "detr-tiny", {}),
        ("focal loss only", "detr-tiny", dict(focal_loss=True)),
        # the recipe's whole loss: focal, class-driven costs and the dense encoder loss
        ("shapes-cpu recipe (+ encoder loss)", shapes_cpu.model, dict(shapes_cpu.model_overrides)),
    )
    for label, preset, overrides in settings:
        overrides.setdefault("pretrained_backbone", False)
        cfg = get_config(preset, num_classes=3, **overrides)
        model, criterion = build_model(cfg), build_criterion(cfg)
        data = build_dataset("shapes", "val", num_images=16)
        samples, targets = collate_fn([data[i] for i in range(16)])
        with torch.no_grad():
            out = model(samples)
        last = {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}
        n_boxes = sum(len(t["labels"]) for t in targets)
        with torch.no_grad():
            matcher_ms = median_ms(lambda: criterion.matcher(last, targets), a.repeats)
            loss_ms = median_ms(lambda: criterion(out, targets), a.repeats)
        rows.append([label, 16, n_boxes, round(matcher_ms, 3), f"{matcher_ms / OFFICIAL_MATCHER_MS:.2f}x",
                     round(loss_ms, 3), f"{loss_ms / OFFICIAL_MATCHER_LOSS_MS:.2f}x"])
    header = ["loss", "batch", "target boxes", "matcher ms", "ours/official (1.9 ms)",
              "matcher + loss ms (2 layers)", "ours/official (9 ms)"]
    table = markdown_table(header, rows)
    machine = machine_info()
    print(table)
    print(machine)
    if a.no_write:
        return
    update_section("matcher-loss", "\n".join([
        "### Matcher and loss time per batch",
        "",
        f"`{command_line()}` (commit {git_commit()}), median of {a.repeats} calls after 3 warm-up calls, "
        f"no gradient, {a.threads} threads.",
        "",
        table,
        "",
        "Ratios below 1 mean faster than the official implementation (target: <= 0.8).",
        "",
        f"Machine: {machine}.",
    ]))


if __name__ == "__main__":
    main()
