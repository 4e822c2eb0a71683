"""RT-DETR's contrastive denoising groups (the official ``get_contrastive_denoising_training_group``).

During training the decoder also gets *noised copies of the ground truth* as extra queries, which
it must reconstruct (DN-DETR, DINO): a direct, matching-free signal that speeds up training.
With ``G = num_denoising // max_gt`` groups (at least 1) of ``2 * max_gt`` queries each
(``max_gt``: most targets of an image in the batch; images with fewer are padded):

* the first ``max_gt`` queries of a group are **positives**: each box moved and rescaled by at
  most ``box_noise_scale * half its size`` per corner (``|noise| < 1``), to be reconstructed;
* the next ``max_gt`` are **negatives**: the same boxes moved by ``1..2`` times that, to be
  scored as background ("contrastive");
* a label is replaced by a random class with probability ``label_noise_ratio / 2``;
* labels are embedded with ``denoising_class_embed`` (``num_classes + 1`` rows, the last one
  the padding row), boxes enter in logit space (``inverse_sigmoid``).

The self-attention mask ``[T, T]`` (``T = 2 * max_gt * G + num_queries``, True = may *not* attend):
the matching queries cannot see any denoising query (they would read the answers), and the
queries of one group cannot see another group's.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from ..box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh

__all__ = ["inverse_sigmoid", "denoising_attn_mask", "contrastive_denoising_group", "dn_matched_indices"]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """RT-DETR's ``log(x / (1 - x))`` with ``x`` clipped to ``[0, 1]`` and both sides to ``>= eps``."""
    x = x.clip(min=0.0, max=1.0)
    return torch.log(x.clip(min=eps) / (1 - x).clip(min=eps))


def denoising_attn_mask(max_gt: int, num_group: int, num_queries: int, device: Optional[torch.device] = None) -> Tensor:
    """The ``[T, T]`` bool mask of the module docstring (True: attention not allowed)."""
    group = 2 * max_gt
    num_dn = group * num_group
    mask = torch.zeros(num_dn + num_queries, num_dn + num_queries, dtype=torch.bool, device=device)
    mask[num_dn:, :num_dn] = True  # matching queries cannot see the reconstruction
    for i in range(num_group):
        rows = slice(group * i, group * (i + 1))
        mask[rows, group * (i + 1):num_dn] = True  # later groups
        mask[rows, :group * i] = True  # earlier groups
    return mask


def _padded_targets(targets: Sequence[dict[str, Tensor]], num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Labels ``[B, max_gt]`` (padding: ``num_classes``), boxes ``[B, max_gt, 4]``, valid ``[B, max_gt]``."""
    num_gts = [len(t["labels"]) for t in targets]
    device = targets[0]["labels"].device
    bs, max_gt = len(targets), max(num_gts)
    labels = torch.full([bs, max_gt], num_classes, dtype=torch.int32, device=device)
    boxes = torch.zeros([bs, max_gt, 4], device=device)
    valid = torch.zeros([bs, max_gt], dtype=torch.bool, device=device)
    for i, n in enumerate(num_gts):
        if n > 0:
            labels[i, :n] = targets[i]["labels"]
            boxes[i, :n] = targets[i]["boxes"]
            valid[i, :n] = True
    return labels, boxes, valid


def _noised_boxes(boxes: Tensor, negative: Tensor, box_noise_scale: float) -> Tensor:
    """Corner noise: ``|u| < 1`` of half the size for positives, ``1 <= |u| < 2`` for negatives; clipped
    to the image, back to ``(cx, cy, w, h)``, then logit space. ``boxes [B, T, 4]``, ``negative [B, T, 1]``."""
    known = box_cxcywh_to_xyxy(boxes)
    diff = torch.tile(boxes[..., 2:] * 0.5, [1, 1, 2]) * box_noise_scale
    sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
    part = torch.rand_like(boxes)
    part = (part + 1.0) * negative + part * (1 - negative)
    known = (known + part * sign * diff).clip(min=0.0, max=1.0)
    return inverse_sigmoid(box_xyxy_to_cxcywh(known))


def contrastive_denoising_group(
    targets: Sequence[dict[str, Tensor]], num_classes: int, num_queries: int, class_embed: nn.Embedding,
    num_denoising: int = 100, label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0,
) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[dict[str, Any]]]:
    """The denoising queries of a batch (module docstring), or four ``None`` when there are none.

    Returns ``class queries [B, N_dn, d]``, ``box logits [B, N_dn, 4]``, ``attn_mask [T, T]`` and
    ``dn_meta``: ``dn_positive_idx`` (per image, the positive queries, group by group, target order),
    ``dn_num_group`` ``G`` and ``dn_num_split`` ``[N_dn, num_queries]``. Random numbers are drawn in the
    official order (label noise, then box sign and size), so a seed gives the official groups.
    """
    if num_denoising <= 0:
        return None, None, None, None
    num_gts = [len(t["labels"]) for t in targets]
    max_gt = max(num_gts)
    if max_gt == 0:
        return None, None, None, None
    num_group = max(num_denoising // max_gt, 1)
    labels, boxes, valid = _padded_targets(targets, num_classes)
    device = boxes.device
    labels, boxes, valid = labels.tile([1, 2 * num_group]), boxes.tile([1, 2 * num_group, 1]), valid.tile([1, 2 * num_group])
    negative = torch.zeros([len(targets), max_gt * 2, 1], device=device)
    negative[:, max_gt:] = 1
    negative = negative.tile([1, num_group, 1])  # [B, N_dn, 1]
    positive = (1 - negative).squeeze(-1) * valid
    dn_positive_idx = torch.split(torch.nonzero(positive)[:, 1], [n * num_group for n in num_gts])
    if label_noise_ratio > 0:
        flip = torch.rand_like(labels, dtype=torch.float) < (label_noise_ratio * 0.5)
        new_label = torch.randint_like(flip, 0, num_classes, dtype=labels.dtype)
        labels = torch.where(flip & valid, new_label, labels)
    if box_noise_scale > 0:
        boxes = _noised_boxes(boxes, negative, box_noise_scale)
    else:
        boxes = inverse_sigmoid(boxes)
    meta = {"dn_positive_idx": dn_positive_idx, "dn_num_group": num_group,
            "dn_num_split": [int(max_gt * 2 * num_group), num_queries]}
    return class_embed(labels), boxes, denoising_attn_mask(max_gt, num_group, num_queries, device), meta


def dn_matched_indices(dn_meta: dict[str, Any], targets: Sequence[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """The fixed assignment of the denoising queries: positive query ``k`` of image ``i`` reconstructs
    target ``k mod n_i`` (the official ``get_cdn_matched_indices``)."""
    out = []
    for i, t in enumerate(targets):
        n = len(t["labels"])
        device = t["labels"].device
        if n > 0:
            gt_idx = torch.arange(n, dtype=torch.int64, device=device).tile(dn_meta["dn_num_group"])
            out.append((dn_meta["dn_positive_idx"][i], gt_idx))
        else:
            out.append((torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, dtype=torch.int64, device=device)))
    return out
