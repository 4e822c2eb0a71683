"""RT-DETR's matching, loss and post-processing (``rtdetr_criterion.py``, ``matcher.py``,
``rtdetr_postprocessor.py``), returning the package's *unweighted* terms.

- matching: :class:`~detr_tutorial.families.deformable_loss.SigmoidHungarianMatcher`, the focal
  class cost (alpha 0.25, gamma 2) over the sigmoid logits, costs ``2 / 5 / 2`` (the official);
- :class:`RTDETRCriterion`: the **varifocal loss** ``loss_vfl`` (VarifocalNet): binary
  cross-entropy of each (query, class) logit against a *soft* target, the IoU of the matched
  box for the matched class (0 elsewhere), weighted by ``alpha * p^gamma`` on negatives and by the
  target on positives (alpha 0.75, gamma 2): the score learns to be the box's IoU, which is what
  makes the encoder's top-k selection IoU-aware. Plus ``loss_bbox`` (L1) and ``loss_giou``.
  Suffixes as the official: ``_aux_0 .. _aux_{L-2}`` (decoder layers), ``_aux_{L-1}`` (the
  encoder top-k), ``_dn_0 .. _dn_{L-1}`` (denoising queries, matched by construction, the box
  count times the number of groups);
- :class:`RTDETRPostProcess`: the ``num_top_queries`` best (query, class) pairs.

The official criterion returns ``weight_dict``-weighted terms; here they are unweighted and
:meth:`RTDETRCriterion.total` weighs them (every suffix with its base term's weight).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..box_ops import box_cxcywh_to_xyxy, box_iou
from ..config import DETRConfig
from ..criterion import SetCriterion, _src_permutation_idx
from ..validation import check_outputs, check_targets
from .deformable_loss import DeformablePostProcess, SigmoidHungarianMatcher
from .rtdetr_denoising import dn_matched_indices

__all__ = ["RTDETRCriterion", "RTDETRPostProcess", "build_criterion", "build_postprocess"]

_SUFFIX = re.compile(r"_(aux|dn)_\d+$")


class RTDETRCriterion(SetCriterion):
    """The official RT-DETR ``SetCriterion(losses=["vfl", "boxes"])`` (see the module docstring).

    Args:
        num_classes: real classes (sigmoid logits ``[B, Q, C]``).
        matcher: a :class:`SigmoidHungarianMatcher`.
        weight_dict: ``{"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2}`` (suffixed keys fall back to these).
        alpha, gamma: the varifocal loss's (0.75, 2).
    """

    def __init__(self, num_classes: int, matcher: SigmoidHungarianMatcher, weight_dict: dict[str, float],
                 alpha: float = 0.75, gamma: float = 2.0) -> None:
        super().__init__(num_classes, matcher, weight_dict, losses=("boxes",))
        self.losses = ("vfl", "boxes")
        self.alpha, self.gamma = alpha, gamma

    def loss_vfl(self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], indices: list,
                 num_boxes: float) -> dict[str, Tensor]:
        """``loss_vfl``: summed over classes, mean over queries, summed over images, times ``Q / num_boxes``."""
        logits = outputs["pred_logits"]  # [B, Q, C]
        idx = _src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], dim=0).to(src_boxes)
        ious = torch.diag(box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes))[0]).detach()
        target_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[idx] = target_o
        onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1]  # [B, Q, C], unmatched: zeros
        score = torch.zeros(logits.shape[:2], dtype=logits.dtype, device=logits.device)
        score[idx] = ious.to(score.dtype)
        target_score = score[..., None] * onehot  # [B, Q, C]: the IoU at the matched class
        weight = self.alpha * logits.sigmoid().detach().pow(self.gamma) * (1 - onehot) + target_score
        loss = F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="none")
        return {"loss_vfl": loss.mean(1).sum() * logits.shape[1] / num_boxes}

    def _terms(self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], indices: list,
               num_boxes: float, suffix: str) -> dict[str, Tensor]:
        preds = {k: outputs[k] for k in ("pred_logits", "pred_boxes")}
        terms = self.loss_vfl(preds, targets, indices, num_boxes)
        terms.update(self.loss_boxes(preds, targets, indices, num_boxes))
        return {k + suffix: v for k, v in terms.items()}

    def forward(self, outputs: dict[str, Any], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """All terms, unweighted (module docstring); ``num_boxes`` is the batch's, process-averaged, >= 1."""
        check_outputs(outputs)
        if outputs["pred_logits"].shape[-1] != self.num_classes:
            raise ValueError(f"pred_logits has {outputs['pred_logits'].shape[-1]} classes, the criterion expects "
                             f"num_classes = {self.num_classes} sigmoid logits (no 'no object' column in this family)")
        check_targets(targets, outputs["pred_logits"].shape[0], self.num_classes)
        num_boxes = self._num_boxes(targets, outputs["pred_logits"].device)
        main = {k: outputs[k] for k in ("pred_logits", "pred_boxes")}
        losses = self._terms(main, targets, self._match(main, targets), num_boxes, "")
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            check_outputs(aux)
            losses.update(self._terms(aux, targets, self._match(aux, targets), num_boxes, f"_aux_{i}"))
        if "dn_aux_outputs" in outputs:
            meta = outputs["dn_meta"]
            indices = dn_matched_indices(meta, targets)
            for i, aux in enumerate(outputs["dn_aux_outputs"]):
                losses.update(self._terms(aux, targets, indices, num_boxes * meta["dn_num_group"], f"_dn_{i}"))
        return losses

    def weight_for(self, key: str) -> float:
        """The weight of a term: its own entry, else its base term's (``loss_vfl_aux_3`` -> ``loss_vfl``)."""
        if key in self.weight_dict:
            return float(self.weight_dict[key])
        return float(self.weight_dict.get(_SUFFIX.sub("", key), 0.0))


class RTDETRPostProcess(DeformablePostProcess):
    """The official ``RTDETRPostProcessor`` (focal mode): the ``num_top_queries`` best (query, class)
    pairs of each image by sigmoid score, boxes in xyxy pixels of ``target_sizes [B, 2]`` given as
    ``(h, w)`` (the official takes ``(w, h)``), and ``query [K]``, the query of each pair."""

    def __init__(self, num_top_queries: int = 300) -> None:
        super().__init__(num_select=num_top_queries)
        self.num_top_queries = num_top_queries


def build_criterion(cfg: DETRConfig) -> RTDETRCriterion:
    """The official matcher (``set_cost_*``, focal alpha/gamma) and loss (``ce_loss_coef`` weighs ``loss_vfl``);
    ``decoder_aux_coef`` scales the terms of the decoder layers before the last (not the encoder's)."""
    matcher = SigmoidHungarianMatcher(cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou,
                                      focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma)
    weight_dict = {"loss_vfl": cfg.ce_loss_coef, "loss_bbox": cfg.bbox_loss_coef, "loss_giou": cfg.giou_loss_coef}
    if cfg.decoder_aux_coef != 1.0:  # the layers before the last: aux_0 .. aux_{L-2}, dn_0 .. dn_{L-2}
        for i in range(cfg.dec_layers - 1):
            for term, coef in list(weight_dict.items())[:3]:
                for kind in ("aux", "dn"):
                    weight_dict[f"{term}_{kind}_{i}"] = coef * cfg.decoder_aux_coef
    return RTDETRCriterion(cfg.num_classes, matcher, weight_dict, alpha=cfg.vfl_alpha, gamma=cfg.focal_gamma)


def build_postprocess(cfg: DETRConfig) -> RTDETRPostProcess:
    """The official top-``num_top_queries`` post-processing."""
    return RTDETRPostProcess(cfg.num_top_queries)
