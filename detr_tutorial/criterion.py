"""The set-prediction loss of DETR.

After :class:`~detr_tutorial.matcher.HungarianMatcher` pairs predictions with targets:

- ``loss_ce``: cross-entropy over all ``Q`` queries; matched ones must predict their target's
  class, unmatched ones "no object" (∅). Most queries are ∅, so its weight is ``eos_coef``
  (0.1) to keep the real classes from being drowned out.
- ``loss_bbox``: L1 between matched ``(cx, cy, w, h)`` boxes, and
- ``loss_giou``: ``1 - GIoU`` of the same pairs; both summed and divided by the number of target
  boxes in the batch (averaged over processes when training is distributed).
- ``class_error`` and ``cardinality_error`` are logged metrics, not trained.

The same terms are computed for every earlier decoder layer (``aux_outputs``) with suffixes
``_0 .. _{L-2}``: the auxiliary decoding losses of the paper.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from .box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from .matcher import HungarianMatcher, build_matcher
from .validation import check_outputs, check_targets

__all__ = ["SetCriterion", "build_criterion", "aux_weight_dict", "mean_over_processes"]

_DEFAULT_LOSSES = ("labels", "boxes", "cardinality")


def _src_permutation_idx(indices: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """(batch index, query index) of every matched prediction, for fancy indexing ``[B, Q, ...]``."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx, src_idx


class SetCriterion(nn.Module):
    """DETR's loss (see the module docstring).

    Args:
        num_classes: real classes (the "no object" class is index ``num_classes``).
        matcher: a :class:`HungarianMatcher`.
        weight_dict: weights of the terms, e.g. ``{"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}``;
            auxiliary keys (``loss_ce_0`` ...) default to the weight of their base term.
        eos_coef: relative weight of the "no object" class in the cross-entropy.
        losses: which groups to compute: ``"labels"``, ``"boxes"``, ``"cardinality"``.
        focal: sigmoid focal loss (Deformable DETR) instead of softmax cross-entropy for ``loss_ce``.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Optional[dict[str, float]] = None,
        eos_coef: float = 0.1,
        losses: Sequence[str] = _DEFAULT_LOSSES,
        focal: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        unknown = sorted(set(losses) - set(_DEFAULT_LOSSES))
        if unknown:
            raise ValueError(f"unknown loss group(s) {unknown}; choose from {_DEFAULT_LOSSES}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict if weight_dict is not None else {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2})
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        self.focal = focal
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    # -- the loss groups ------------------------------------------------------------------
    def loss_labels(
        self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], indices: list, num_boxes: float, log: bool = True
    ) -> dict[str, Tensor]:
        src_logits = outputs["pred_logits"]  # [B, Q, C+1]
        idx = _src_permutation_idx(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(src_logits.device)
        target_classes = torch.full(src_logits.shape[:2], self.num_classes, dtype=torch.int64, device=src_logits.device)
        target_classes[idx] = target_classes_o  # [B, Q]: ∅ everywhere except matched queries
        if self.focal:
            onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1].to(src_logits.dtype)  # ∅ = all zeros
            loss_ce = (
                sigmoid_focal_loss(src_logits[..., :-1], onehot, self.focal_alpha, self.focal_gamma, reduction="sum")
                / num_boxes
            )
        else:
            loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight.to(src_logits.dtype))
        losses = {"loss_ce": loss_ce}
        if log:
            matched = src_logits[idx][..., :-1] if self.focal else src_logits[idx]
            if target_classes_o.numel() == 0:
                losses["class_error"] = src_logits.new_tensor(100.0)
            else:
                acc = (matched.argmax(-1) == target_classes_o).float().mean() * 100
                losses["class_error"] = 100 - acc
        return losses

    @torch.no_grad()
    def loss_cardinality(
        self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], indices: list, num_boxes: float, **_: Any
    ) -> dict[str, Tensor]:
        """|number of predicted objects - number of targets|, averaged over images (a metric only)."""
        logits = outputs["pred_logits"]
        tgt_lengths = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device, dtype=torch.float)
        if self.focal:
            card_pred = (logits[..., :-1].sigmoid().max(-1).values > 0.5).sum(1)
        else:
            card_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        return {"cardinality_error": F.l1_loss(card_pred.float(), tgt_lengths)}

    def loss_boxes(
        self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], indices: list, num_boxes: float, **_: Any
    ) -> dict[str, Tensor]:
        idx = _src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]  # [M, 4] matched predictions
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], dim=0).to(src_boxes)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none")
        loss_giou = 1 - elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes))
        return {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": loss_giou.sum() / num_boxes}

    # -- putting it together ---------------------------------------------------------------
    def _num_boxes(self, targets: Sequence[dict[str, Tensor]], device: torch.device) -> float:
        """Target boxes per process, averaged over processes (so every process divides alike), >= 1."""
        return mean_over_processes(float(sum(len(t["labels"]) for t in targets)), device)

    def _group(self, name: str, outputs: dict, targets: Sequence, indices: list, num_boxes: float, log: bool) -> dict:
        if name == "labels":
            return self.loss_labels(outputs, targets, indices, num_boxes, log=log)
        if name == "boxes":
            return self.loss_boxes(outputs, targets, indices, num_boxes)
        return self.loss_cardinality(outputs, targets, indices, num_boxes)

    def forward(self, outputs: dict[str, Any], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """All loss terms, unweighted, keyed as in the official code (aux ones with ``_i``)."""
        check_outputs(outputs)
        check_targets(targets, outputs["pred_logits"].shape[0], self.num_classes)
        if outputs["pred_logits"].shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"pred_logits has {outputs['pred_logits'].shape[-1]} classes but the criterion expects "
                f"num_classes + 1 = {self.num_classes + 1}"
            )
        main = {k: v for k, v in outputs.items() if k in ("pred_logits", "pred_boxes")}
        indices = self._match(main, targets)
        num_boxes = self._num_boxes(targets, outputs["pred_logits"].device)
        losses: dict[str, Tensor] = {}
        for name in self.losses:
            losses.update(self._group(name, main, targets, indices, num_boxes, log=True))
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            check_outputs(aux)
            aux_indices = self._match(aux, targets)
            for name in self.losses:
                terms = self._group(name, aux, targets, aux_indices, num_boxes, log=False)
                losses.update({f"{k}_{i}": v for k, v in terms.items()})
        return losses

    def _match(self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]]) -> list:
        """Hungarian matching of one layer's predictions (targets were validated once in forward)."""
        if isinstance(self.matcher, HungarianMatcher):
            return self.matcher(outputs, targets, check=False)
        return self.matcher(outputs, targets)

    def weight_for(self, key: str) -> float:
        """The weight of a term; ``loss_ce_3`` falls back to ``loss_ce``; metrics weigh 0."""
        if key in self.weight_dict:
            return float(self.weight_dict[key])
        base, _, suffix = key.rpartition("_")
        if suffix.isdigit() and base in self.weight_dict:
            return float(self.weight_dict[base])
        return 0.0

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        """The weighted sum that is back-propagated."""
        terms = [losses[k] * self.weight_for(k) for k in losses if self.weight_for(k) != 0]
        if not terms:
            raise ValueError(f"no weighted loss terms among {sorted(losses)}; weight_dict is {self.weight_dict}")
        return torch.stack(terms).sum()


def mean_over_processes(count: float, device: torch.device) -> float:
    """A per-process count averaged over the processes of a distributed run (itself otherwise), >= 1:
    every process then divides its loss sums by the same number."""
    num = torch.as_tensor([count], device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num)
        world = dist.get_world_size()
    return torch.clamp(num / world, min=1).item()


def aux_weight_dict(cfg: Any) -> dict[str, float]:
    """``loss_ce/bbox/giou`` weights of a config, repeated for every auxiliary decoder layer."""
    weight_dict = {"loss_ce": cfg.ce_loss_coef, "loss_bbox": cfg.bbox_loss_coef, "loss_giou": cfg.giou_loss_coef}
    if cfg.aux_loss:
        for i in range(cfg.dec_layers - 1):
            weight_dict.update({f"{k}_{i}": v for k, v in list(weight_dict.items()) if not k[-1].isdigit()})
    return weight_dict


def build_criterion(cfg: Any) -> SetCriterion:
    """DETR's matcher and loss for a :class:`~detr_tutorial.config.DETRConfig`, aux weights filled in.

    This is the paper family's loss; :func:`detr_tutorial.families.build_criterion` gives every
    family its own (``dt.build_criterion`` is that one).
    """
    return SetCriterion(
        cfg.num_classes,
        build_matcher(cfg),
        weight_dict=aux_weight_dict(cfg),
        eos_coef=cfg.eos_coef,
        focal=cfg.focal_loss,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
    )
