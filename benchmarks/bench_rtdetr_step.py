"""One RT-DETR training step on the CPU, with its self-attention as torch's ``nn.MultiheadAttention``
or as the package's ``MultiheadAttention``.

    python benchmarks/bench_rtdetr_step.py

RT-DETR's AIFI encoder layer and its decoder layers hold a self-attention with
``nn.MultiheadAttention``'s parameters. Under bfloat16 autocast on the CPU, torch's module calls
the fused SDPA kernel, whose backward is several times slower than the explicit
``softmax(q k^T / sqrt(d)) v`` at these short lengths ("Attention under CPU autocast" above); the
package's ``MultiheadAttention`` takes the explicit path there. This script builds the model of
the ``shapes-shipped`` recipe twice with the same weights, one with torch's module in every
self-attention, and times full training steps (forward, loss with denoising, backward, AdamW) on
the same shapes batches of 16 images, alternating the two models so that both see the same
machine load. It also checks that the two compute the same outputs in float32.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import command_line, git_commit, machine_info, markdown_table, update_section  # noqa: E402


def _with_torch_attention(model):
    """A copy of ``model`` whose every package ``MultiheadAttention`` is a batch-first
    ``nn.MultiheadAttention`` holding the same weights."""
    import copy

    from torch import nn

    from detr_tutorial.models.transformer import MultiheadAttention

    class TorchAttention(nn.MultiheadAttention):
        """``nn.MultiheadAttention`` called the way the package's module is."""

        def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=False)

    other = copy.deepcopy(model)
    for module in list(other.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MultiheadAttention):
                replacement = TorchAttention(child.embed_dim, child.num_heads, child.dropout, batch_first=True)
                replacement.load_state_dict(child.state_dict())
                setattr(module, name, replacement)
    return other


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed steps of each model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=128, help="canvas side (px)")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()

    import torch

    import detr_tutorial as dt
    from detr_tutorial.data import collate_fn
    from detr_tutorial.data.shapes import ShapesConfig, ShapesDataset
    from detr_tutorial.data.transforms import make_transforms
    from detr_tutorial.train import build_optimizer

    torch.set_num_threads(a.threads)
    recipe = dt.get_recipe("shapes-shipped")
    cfg = dt.get_config(recipe.model, **recipe.model_overrides, num_classes=3)
    torch.manual_seed(0)
    ours = dt.build_model(cfg)
    theirs = _with_torch_attention(ours)
    data = ShapesDataset("val", ShapesConfig(image_size=a.size), make_transforms("val", "shapes"), num_images=64)
    batches = [collate_fn([data[i] for i in range(b * 16, b * 16 + 16)]) for b in range(4)]

    ours.eval(), theirs.eval()
    with torch.no_grad():
        o, t = ours(batches[0][0]), theirs(batches[0][0])
    diff = max(float((o[k] - t[k]).abs().max()) for k in ("pred_logits", "pred_boxes"))

    runs = {}
    for name, model in (("nn.MultiheadAttention (torch)", theirs), ("MultiheadAttention (package)", ours)):
        model.train().to(memory_format=torch.channels_last)
        runs[name] = dict(model=model, criterion=dt.build_criterion(cfg),
                          optimizer=build_optimizer(model, recipe.lr, recipe.lr_backbone, recipe.weight_decay),
                          times=[])

    def step(run, batch):
        images, targets = batch
        images = dt.NestedTensor(images.tensors.contiguous(memory_format=torch.channels_last), images.mask)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = run["model"](images, targets)
        outputs = {k: v.float() if torch.is_tensor(v) else v for k, v in outputs.items()}
        loss = run["criterion"].total(run["criterion"](outputs, targets))
        run["optimizer"].zero_grad(set_to_none=True)
        loss.backward()
        run["optimizer"].step()
        return time.perf_counter() - start

    for i in range(a.steps + 3):  # 3 untimed warm-up steps each, then alternating timed steps
        for run in runs.values():
            seconds = step(run, batches[i % len(batches)])
            if i >= 3:
                run["times"].append(seconds)
    base = statistics.median(runs["nn.MultiheadAttention (torch)"]["times"])
    rows = []
    for name, run in runs.items():
        median = statistics.median(run["times"])
        rows.append([name, round(median * 1e3, 1), f"{median / base:.2f}"])
        print(f"{name:32s} {median * 1e3:7.1f} ms per step  ({median / base:.2f} of torch's)")
    print(f"float32 outputs, largest difference: {diff:.1e}")
    table = markdown_table(["self-attention", "ms per step (median)", "of torch's"], rows)
    body = (
        "### RT-DETR training step: torch's `nn.MultiheadAttention` against the package's\n\n"
        f"`{command_line()}` (commit {git_commit()}): the `shapes-shipped` model, batches of 16 shapes "
        f"images of {a.size} px, bfloat16 autocast, channels-last; forward with denoising, loss, backward, "
        f"AdamW; median of {a.steps} steps each, the two models alternating.\n"
        f"Machine: {machine_info()}.\n\n{table}\n\n"
        f"In float32 (eval mode) the two give the same outputs up to {diff:.1e}. RT-DETR's AIFI and decoder "
        "layers use the package's module from this measurement on; the family comparison's RT-DETR step costs "
        "(\"Families: step cost\", \"Families: standard\") were measured with torch's.\n"
    )
    if not a.no_write:
        update_section("rtdetr-step", body, after="attention")


if __name__ == "__main__":
    main()
