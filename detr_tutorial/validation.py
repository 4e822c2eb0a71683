"""Input validation: targets, model outputs and pixels are checked where they enter.

Each check raises an error that names the problem (which image, which key, which shape or value)
instead of letting a bad input fail deep inside a matrix product, or pass silently. The matcher,
the loss and the batching (:mod:`detr_tutorial.nested`) call these; they read no model code.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .box_ops import check_boxes

__all__ = ["check_outputs", "check_targets", "check_pixel_dtype", "check_finite_pixels"]


def check_outputs(outputs: dict[str, Any]) -> None:
    """Validate a model output dict (keys, shapes, finiteness); raise ``ValueError`` naming the problem."""
    for key in ("pred_logits", "pred_boxes"):
        if key not in outputs:
            raise ValueError(f"outputs must contain {key!r}; got keys {sorted(outputs)}")
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if logits.dim() != 3:
        raise ValueError(f"pred_logits must be [B, Q, num_classes + 1], got {list(logits.shape)}")
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or boxes.shape[:2] != logits.shape[:2]:
        raise ValueError(f"pred_boxes must be [B, Q, 4] matching pred_logits {list(logits.shape[:2])}, got {list(boxes.shape)}")
    for key, t in (("pred_logits", logits), ("pred_boxes", boxes)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{key} contains NaN or infinite values (diverged training? check the learning rate)")


def check_targets(targets: Sequence[dict[str, Tensor]], batch_size: int, num_classes: int) -> None:
    """Validate targets: one dict per image with ``labels [N]`` in range and normalized ``boxes [N, 4]``.

    The structure is checked image by image (cheap Python), the values once on the whole batch:
    a per-image check ran ~8 small tensor ops per image, 2.2 ms for a batch of 16, more than the
    matching itself. Only when the batch fails is it checked again image by image, to name the
    image in the error.
    """
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f"targets must be a list of dicts (one per image), got {type(targets).__name__}")
    if len(targets) != batch_size:
        raise ValueError(f"got {len(targets)} target dicts for a batch of {batch_size} images")
    for i, t in enumerate(targets):
        _check_target_structure(t, i)
    if not targets:
        return
    boxes = torch.cat([t["boxes"] for t in targets])  # [sum N, 4]
    labels = torch.cat([t["labels"] for t in targets])  # [sum N]
    try:
        check_boxes(boxes)
        _check_labels(labels, num_classes, "labels")
    except ValueError:
        for i, t in enumerate(targets):  # find the image to name
            check_boxes(t["boxes"], name=f"targets[{i}]['boxes']")
            _check_labels(t["labels"], num_classes, f"targets[{i}]['labels']")
        raise


def _check_target_structure(t: Any, i: int) -> None:
    """Types, keys and shapes of ``targets[i]`` (no tensor values are read)."""
    if not isinstance(t, dict):
        raise TypeError(f"targets[{i}] must be a dict, got {type(t).__name__}")
    missing = [k for k in ("labels", "boxes") if k not in t]
    if missing:
        raise ValueError(f"targets[{i}] is missing key(s) {missing} (needs 'labels' [N] and 'boxes' [N, 4])")
    labels, boxes = t["labels"], t["boxes"]
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets[{i}]['labels'] must be an int64 tensor [N]")
    if not isinstance(boxes, Tensor):
        raise TypeError(f"targets[{i}]['boxes'] must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"targets[{i}]['boxes'] must have shape [N, 4] (cx, cy, w, h), got {list(boxes.shape)}")
    if labels.shape[0] != boxes.shape[0]:
        raise ValueError(f"targets[{i}] has {labels.shape[0]} labels but {boxes.shape[0]} boxes")


def _check_labels(labels: Tensor, num_classes: int, name: str) -> None:
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must be in 0..{num_classes - 1} (the model has {num_classes} classes; "
            f"'no object' is index {num_classes} and never a target), got {labels.tolist()}"
        )


def check_pixel_dtype(dtype: torch.dtype, what: str) -> None:
    """Refuse a dtype the model cannot take as pixels: integers (not yet scaled and normalized)
    and float64 (the weights are float32; PyTorch would fail deep inside the first convolution,
    and a silent cast would hide a copy). ``TypeError`` naming ``what``."""
    if not dtype.is_floating_point:
        raise TypeError(f"{what} must be a float tensor (normalized), got {dtype}")
    if dtype == torch.float64:
        raise TypeError(f"{what} is float64, but the model computes in float32: convert it with .float()")


def check_finite_pixels(pixels: Tensor, what: str) -> None:
    """Refuse NaN or infinite pixels (``ValueError`` naming ``what``): one of them turns every
    attention weight of the image, and so every prediction and the loss, into NaN."""
    bad = int((~torch.isfinite(pixels)).sum())
    if bad:
        raise ValueError(f"{what} has {bad} NaN or infinite pixel value(s)")
