"""Bounding-box helpers: format conversions, IoU and generalized IoU.

DETR predicts boxes as normalized ``(cx, cy, w, h)`` (centre form), because an L1 loss on centre,
width and height treats position and size separately; IoU-style measures need corner form
``(x1, y1, x2, y2)``. These helpers convert between the two and compute *pairwise* IoU and GIoU
matrices, the building blocks of the Hungarian matcher's cost and of the GIoU loss.

They agree with ``torchvision.ops`` (tests compare them); we keep our own versions because the
book builds them by hand and because :func:`generalized_box_iou` also returns the IoU matrix.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "elementwise_generalized_box_iou",
    "check_boxes",
]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``; works on any leading shape ``[..., 4]``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``; works on any leading shape ``[..., 4]``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[N, 4]`` corner boxes -> ``[N]``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of corner boxes ``[N, 4]`` x ``[M, 4]``.

    Returns ``(iou [N, M], union [N, M])``; the union is reused by :func:`generalized_box_iou`.
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = (rb - lt).clamp(min=0)  # no overlap -> zero width/height, not negative
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019) of corner boxes -> ``[N, M]``.

    ``GIoU = IoU - (|C| - |A ∪ B|) / |C|`` where ``C`` is the smallest box enclosing both.
    It lies in ``(-1, 1]`` and, unlike IoU, still gives a useful signal for disjoint boxes.
    Degenerate boxes (``x2 < x1`` or ``y2 < y1``) would give NaN or wrong values, so they are
    rejected with a ``ValueError`` rather than silently producing garbage.
    """
    if not (boxes1[:, 2:] >= boxes1[:, :2]).all():
        raise ValueError("generalized_box_iou: boxes1 has boxes with x2 < x1 or y2 < y1")
    if not (boxes2[:, 2:] >= boxes2[:, :2]).all():
        raise ValueError("generalized_box_iou: boxes2 has boxes with x2 < x1 or y2 < y1")
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]  # [N, M]
    return iou - (enclosing - union) / enclosing


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of corresponding corner boxes ``[N, 4]``, ``[N, 4]`` -> ``[N]``.

    The diagonal of :func:`generalized_box_iou` without the ``N x N`` matrix (the loss compares
    each matched pair only).
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area1 + area2 - inter
    wh_c = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    enclosing = wh_c[:, 0] * wh_c[:, 1]
    return inter / union - (enclosing - union) / enclosing


def check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    """Validate normalized ``(cx, cy, w, h)`` target boxes; raise ``ValueError`` naming the problem.

    Checks the shape ``[N, 4]``, finiteness, positive width and height, and that the corners lie in
    ``[0, 1]`` (a small tolerance absorbs float rounding of conversions).
    """
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] (cx, cy, w, h), got {list(boxes.shape)}")
    if boxes.numel() == 0:
        return
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (boxes[:, 2:] <= 0).any():
        bad = torch.nonzero((boxes[:, 2:] <= 0).any(-1)).flatten().tolist()
        raise ValueError(f"{name} has boxes with non-positive width or height at rows {bad}")
    xyxy = box_cxcywh_to_xyxy(boxes)
    eps = 1e-4
    outside = ((xyxy < -eps) | (xyxy > 1 + eps)).any(-1)
    if outside.any():
        bad = torch.nonzero(outside).flatten().tolist()
        raise ValueError(
            f"{name} must be normalized (cx, cy, w, h) with corners inside [0, 1]; rows {bad} are "
            f"outside (first: {boxes[bad[0]].tolist()}). Did you pass pixel or (x1, y1, x2, y2) boxes?"
        )
