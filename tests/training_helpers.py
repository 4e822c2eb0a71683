"""Tiny, fast training set-ups shared by the training tests, and a driver script for subprocesses.

``TinyBoxes`` is a data set of 64x64 images with exactly two boxes each. Equal box counts matter
for the equivalence tests: DETR's classification loss is a weighted *mean* over the queries of
one process, so two processes (or two accumulated micro-batches) reproduce one big batch exactly
only when each part holds the same number of objects. The box losses are exact in any case
(``SetCriterion`` divides by the box count averaged over processes).

Run as a script (``python tests/training_helpers.py OUT [options]``, or under ``torchrun``) it
trains the tiny recipe on ``TinyBoxes`` and saves the final parameters to ``OUT/params.pt``.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # when run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from detr_tutorial.families import build_model  # noqa: E402
from detr_tutorial.recipes import Recipe  # noqa: E402

TINY_MODEL = dict(
    backbone="resnet18",
    pretrained_backbone=False,
    backbone_norm="frozen_bn",  # no batch statistics: processes and micro-batches stay independent
    hidden_dim=32,
    nheads=2,
    enc_layers=1,
    dec_layers=2,
    dim_feedforward=64,
    num_queries=5,
    dropout=0.0,
    aux_loss=True,
)


def default_recipe_model(**overrides: Any) -> dict[str, Any]:
    """The default recipe's model family (``shapes-cpu``: a smallcnn trunk with trainable
    BatchNorm, two-stage queries, box refinement, focal loss, a dense encoder loss), shrunk so a
    step takes milliseconds. Its BatchNorm makes processes depend on each other's images."""
    from detr_tutorial.recipes import get_recipe

    model = dict(get_recipe("shapes-cpu").model_overrides)
    model.update(hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=5)
    model.update(overrides)
    return model


def deformable_model(**overrides: Any) -> dict[str, Any]:
    """A tiny Deformable DETR (frozen-BN ResNet-18 trunk, two-stage proposals with box refinement):
    every part of the family in milliseconds a step. Three levels (8x8, 4x4, 2x2 on 64 px images):
    a fourth, extra level would be 1x1, where GroupNorm normalizes one value per group and its
    input convolution gets only rounding noise as gradient (which Adam turns into lr-sized steps)."""
    model = dict(TINY_MODEL, family="deformable", focal_loss=True, with_box_refine=True, two_stage=True,
                 num_feature_levels=3, enc_n_points=2, dec_n_points=2)
    model.update(overrides)
    return model


def tiny_rtdetr(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A small random RT-DETR (eval mode, initialized from ``seed``) of the shipped model's layout: the small CNN
    trunk at strides 8 and 16, so two levels, a hybrid encoder and a deformable decoder, at test
    sizes (hidden 32, one decoder layer, 10 queries, 3 classes)."""
    torch.manual_seed(seed)
    args = dict(num_classes=3, backbone="smallcnn", backbone_norm="bn", backbone_stride=16, pretrained_backbone=False,
                freeze_stem=None, hidden_dim=32, enc_dim_feedforward=64, dec_dim_feedforward=64, dec_layers=1,
                num_queries=10)
    return build_model("rtdetr-r18", **{**args, **overrides}).eval()


def two_images() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two 64x64 images holding one and two coloured boxes, and their targets."""
    images = torch.zeros(2, 3, 64, 64)
    images[0, 0, 8:24, 10:40] = 2.0  # a red-ish rectangle
    images[1, 1, 30:60, 20:44] = 2.0  # a green-ish one
    images[1, 2, 4:20, 4:20] = 2.0  # and a blue square
    targets = [
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[25 / 64, 16 / 64, 30 / 64, 16 / 64]])},
        {"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[32 / 64, 45 / 64, 24 / 64, 30 / 64], [12 / 64, 12 / 64, 16 / 64, 16 / 64]])},
    ]
    return images, targets


def overfit_two_images(model: torch.nn.Module, steps: int, lr: float) -> tuple[float, float]:
    """Train ``model`` on :func:`two_images` alone (its family's loss, AdamW, clipping 0.1);
    returns the first loss and the least of the last five."""
    import detr_tutorial as dt

    criterion = dt.build_criterion(model.config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    images, targets = two_images()
    history = []
    for _ in range(steps):
        total = criterion.total(criterion(model(images), targets))
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        history.append(total.item())
    return history[0], min(history[-5:])


class TinyBoxes(Dataset):
    """``n`` random 64x64 images, two boxes each; train split augments with noise and flips.

    The augmentation draws from the global torch and Python generators, as torchvision's
    transforms do, so tests see whether training seeds every sample properly.
    """

    class_names = ("a", "b", "c")
    label_to_cat_id = {0: 1, 1: 2, 2: 3}

    def __init__(self, n: int = 16, size: int = 64, augment: bool = True, seed: int = 0) -> None:
        self.n, self.size, self.augment = n, size, augment
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        centers = torch.rand(n, 2, 2, generator=g) * 0.5 + 0.25
        sizes = torch.rand(n, 2, 2, generator=g) * 0.3 + 0.1
        self.boxes = torch.cat([centers, sizes], dim=-1)  # [n, 2, 4] cxcywh
        self.labels = torch.randint(0, 3, (n, 2), generator=g)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        image, boxes = self.images[i].clone(), self.boxes[i].clone()
        if self.augment:
            image = image + 0.1 * torch.randn_like(image)
            if random.random() < 0.5:
                image = image.flip(-1)
                boxes[:, 0] = 1 - boxes[:, 0]
        target = {
            "labels": self.labels[i].clone(),
            "boxes": boxes,
            "image_id": torch.tensor(i),
            "orig_size": torch.tensor([self.size, self.size]),
            "size": torch.tensor([self.size, self.size]),
        }
        return image, target


def tiny_recipe(**overrides: Any) -> Recipe:
    model = dict(TINY_MODEL, **overrides.pop("model_overrides", {}))
    base = dict(
        name="tiny",
        model="detr-tiny",
        model_overrides=model,
        batch_size=2,
        lr=1e-4,
        lr_backbone=1e-5,
        schedule="step",
        max_steps=4,
        checkpoint_every=0,
        eval_every=0,
        log_every=1,
        num_workers=0,
        seed=7,
    )
    base.update(overrides)
    return Recipe(**base)


def params_of(model_state: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model_state.items()}


def _main() -> None:
    from detr_tutorial.checkpoint import load_checkpoint
    from detr_tutorial.distributed import is_main_process
    from detr_tutorial.train import train

    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--hang-at", type=int, default=0, help="stop making progress after this step")
    p.add_argument("--resume")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--model", choices=["tiny", "default", "deformable"], default="tiny",
                   help="default: the default recipe's model family (default_recipe_model); "
                        "deformable: a tiny Deformable DETR (deformable_model)")
    p.add_argument("--dec-layers", type=int)
    a = p.parse_args()
    torch.set_num_threads(1)
    model = {"tiny": dict, "default": default_recipe_model, "deformable": deformable_model}[a.model]()
    model["dropout"] = a.dropout
    if a.dec_layers is not None:
        model["dec_layers"] = a.dec_layers
    recipe = tiny_recipe(
        max_steps=a.steps,
        batch_size=a.batch_size,
        accum_steps=a.accum,
        checkpoint_every=a.checkpoint_every,
        num_workers=a.workers,
        model_overrides=model,
    )
    out = Path(a.out)

    def hang(info) -> None:
        if a.hang_at and info.step == a.hang_at:
            (out / "hanging").write_text(str(info.step))
            time.sleep(600)  # the test kills us here

    result = train(
        recipe,
        out,
        device="cpu",
        resume=a.resume,
        datasets=(TinyBoxes(16), None),
        final_eval=False,
        progress=False,
        on_step_end=hang,
    )
    if is_main_process():
        state = load_checkpoint(result.final_model)
        torch.save({"model": state["model"], "steps": result.steps}, out / "params.pt")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _main()
