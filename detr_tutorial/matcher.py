"""Hungarian matching: a one-to-one assignment between predictions and ground-truth objects.

DETR predicts a *set*: the loss must not depend on the order of the ``Q`` queries. For each image
we build a cost matrix ``C [Q, N]`` between the ``Q`` predictions and the ``N`` targets,

``C = cost_class * (-p(class)) + cost_bbox * L1(box) + cost_giou * (-GIoU(box))``,

and find the permutation of least total cost with the Hungarian algorithm
(:func:`scipy.optimize.linear_sum_assignment`). The ``Q - N`` unmatched predictions are trained
to say "no object". Matching is not differentiated: it only decides who is compared to whom.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .validation import check_outputs, check_targets

__all__ = ["HungarianMatcher", "build_matcher"]


class HungarianMatcher(nn.Module):
    """Optimal one-to-one matching of predictions to targets (see the module docstring).

    Args:
        cost_class: weight of the classification cost ``-p(target class)``.
        cost_bbox: weight of the L1 distance between ``(cx, cy, w, h)`` boxes.
        cost_giou: weight of ``-GIoU`` between the boxes.
        focal: use the focal classification cost of Deformable DETR (for focal-loss models).
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        for name, value in (("cost_class", cost_class), ("cost_bbox", cost_bbox), ("cost_giou", cost_giou)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal = focal
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def _batched_terms(
        self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], check: bool = True
    ) -> dict[str, Tensor]:
        """Unweighted cost terms for all predictions against all targets of the batch: ``[B*Q, sum N]``."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if check:
            check_outputs(outputs)
            check_targets(targets, logits.shape[0], logits.shape[-1] - 1)
        out_bbox = boxes.flatten(0, 1).float()  # [B*Q, 4]
        tgt_ids = torch.cat([t["labels"] for t in targets]).to(logits.device)
        tgt_bbox = torch.cat([t["boxes"] for t in targets]).to(out_bbox)
        if self.focal:
            prob = logits.flatten(0, 1).float()[:, :-1].sigmoid()
            a, g = self.focal_alpha, self.focal_gamma
            neg = (1 - a) * prob**g * (-(1 - prob + 1e-8).log())
            pos = a * (1 - prob) ** g * (-(prob + 1e-8).log())
            cost_class = pos[:, tgt_ids] - neg[:, tgt_ids]
        else:
            prob = logits.flatten(0, 1).float().softmax(-1)  # [B*Q, C+1]
            cost_class = -prob[:, tgt_ids]  # 1 - p up to a constant, which the assignment ignores
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
        return {"class": cost_class, "bbox": cost_bbox, "giou": cost_giou}

    def _split(self, matrix: Tensor, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]]) -> list[Tensor]:
        b, q = outputs["pred_logits"].shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        matrix = matrix.view(b, q, -1).cpu()
        return [c[i] for i, c in enumerate(matrix.split(sizes, -1))]  # image i against its own targets

    def cost_terms(self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """Per image, the *unweighted* terms ``{"class", "bbox", "giou"}``, each ``[Q, N_i]`` (for plots)."""
        terms = self._batched_terms(outputs, targets)
        split = {k: self._split(v, outputs, targets) for k, v in terms.items()}
        return [{k: split[k][i] for k in split} for i in range(len(targets))]

    def cost_matrices(
        self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], check: bool = True
    ) -> list[Tensor]:
        """Per image, the weighted cost matrix ``C [Q, N_i]`` that the assignment minimizes."""
        t = self._batched_terms(outputs, targets, check)
        total = self.cost_bbox * t["bbox"] + self.cost_class * t["class"] + self.cost_giou * t["giou"]
        return self._split(total, outputs, targets)

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], check: bool = True
    ) -> list[tuple[Tensor, Tensor]]:
        """Return, per image, ``(pred_idx, tgt_idx)`` int64 tensors of length ``min(Q, N_i)``.

        ``pred_idx`` is sorted increasingly (scipy's order); ``tgt_idx[k]`` is the target matched to
        prediction ``pred_idx[k]``. Images without targets give two empty tensors. ``check=False``
        skips validating the inputs (for callers that already did, like :class:`SetCriterion`).
        """
        indices = []
        for c in self.cost_matrices(outputs, targets, check):
            if c.shape[1] == 0:
                indices.append((torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)))
                continue
            i, j = linear_sum_assignment(c.numpy())
            indices.append((torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, focal={self.focal}"


def build_matcher(cfg: Any) -> HungarianMatcher:
    """The matcher of a :class:`~detr_tutorial.config.DETRConfig` (its ``set_cost_*`` fields)."""
    return HungarianMatcher(
        cost_class=cfg.set_cost_class,
        cost_bbox=cfg.set_cost_bbox,
        cost_giou=cfg.set_cost_giou,
        focal=cfg.focal_loss,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
    )
