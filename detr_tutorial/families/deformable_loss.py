"""Deformable DETR's matching, loss and post-processing, as the official code computes them.

Its class heads have one sigmoid output per real class and no "no object" column, so the
package's softmax-era parts are adapted, not rewritten:

- :class:`SigmoidHungarianMatcher`: :class:`~detr_tutorial.matcher.HungarianMatcher` with the
  focal class cost (the official ``alpha * (1-p)^g * -log p - (1-alpha) * p^g * -log(1-p)``),
  over all ``C`` columns;
- :class:`DeformableCriterion`: :class:`~detr_tutorial.criterion.SetCriterion` with the official
  ``loss_labels`` (sigmoid focal loss, summed, over ``num_boxes``, times ``num_queries``),
  ``class_error``, ``cardinality_error``, and the two-stage ``_enc`` terms matched against
  binary targets (every label 0: "is there an object");
- :class:`DeformablePostProcess`: the top 100 (query, class) pairs of each image.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from .. import box_ops
from ..config import DETRConfig
from ..criterion import SetCriterion, _src_permutation_idx, aux_weight_dict
from ..matcher import HungarianMatcher
from ..models.detr import PostProcess
from ..validation import check_outputs, check_targets

__all__ = ["SigmoidHungarianMatcher", "DeformableCriterion", "DeformablePostProcess", "build_criterion",
           "build_postprocess"]


class SigmoidHungarianMatcher(HungarianMatcher):
    """The focal-cost matcher for logits ``[B, Q, C]`` without a "no object" column.

    :class:`HungarianMatcher` (``focal=True``) drops the last column of its logits (its models'
    ∅); a zero column is appended here, so the cost is the official one on every real class.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> None:
        super().__init__(cost_class, cost_bbox, cost_giou, focal=True, focal_alpha=focal_alpha, focal_gamma=focal_gamma)

    def _batched_terms(self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], check: bool = True) -> dict[str, Tensor]:
        logits = outputs["pred_logits"]  # [B, Q, C]
        padded = torch.cat([logits, logits.new_zeros(logits.shape[:2] + (1,))], -1)  # [B, Q, C + 1]
        return super()._batched_terms({"pred_logits": padded, "pred_boxes": outputs["pred_boxes"]}, targets, check)


class DeformableCriterion(SetCriterion):
    """The official Deformable DETR ``SetCriterion`` (see the module docstring).

    Terms, unweighted: ``loss_ce``, ``class_error``, ``loss_bbox``, ``loss_giou``,
    ``cardinality_error``, the same with ``_0 .. _{L-2}`` (aux) and ``_enc`` (two-stage
    proposals, no ``class_error``). :meth:`total` weighs them with ``weight_dict``.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float],
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> None:
        super().__init__(num_classes, matcher, weight_dict, focal=True, focal_alpha=focal_alpha, focal_gamma=focal_gamma)

    def loss_labels(
        self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], indices: list, num_boxes: float, log: bool = True
    ) -> dict[str, Tensor]:
        """``sigmoid_focal_loss`` over every (query, class), averaged over queries, summed over images
        and classes, divided by ``num_boxes``, times ``Q``: the official normalization (per target
        box and class column, not per query)."""
        logits = outputs["pred_logits"]  # [B, Q, C]
        idx = _src_permutation_idx(indices)
        target_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[idx] = target_o
        onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1].to(logits.dtype)  # unmatched: zeros
        loss = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, reduction="none")
        losses = {"loss_ce": loss.mean(1).sum() / num_boxes * logits.shape[1]}
        if log:
            if target_o.numel() == 0:
                losses["class_error"] = logits.new_tensor(100.0)
            else:
                correct = (logits[idx].argmax(-1) == target_o).float().sum(0)
                losses["class_error"] = 100 - correct * (100.0 / target_o.numel())
        return losses

    @torch.no_grad()
    def loss_cardinality(
        self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], indices: list, num_boxes: float, **_: Any
    ) -> dict[str, Tensor]:
        """The official metric, kept as it is: queries whose best class is not the *last real class*
        (DETR's "not ∅" test, carried over to heads that have no ∅ column), minus the targets."""
        logits = outputs["pred_logits"]
        tgt_lengths = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device, dtype=torch.float)
        card_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        return {"cardinality_error": F.l1_loss(card_pred.float(), tgt_lengths)}

    def forward(self, outputs: dict[str, Any], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """All terms (see the class docstring); ``num_boxes`` is the batch's (process-averaged) count."""
        check_outputs(outputs)
        if outputs["pred_logits"].shape[-1] != self.num_classes:
            raise ValueError(
                f"pred_logits has {outputs['pred_logits'].shape[-1]} classes, the criterion expects num_classes = "
                f"{self.num_classes} sigmoid logits (no 'no object' column in this family)"
            )
        check_targets(targets, outputs["pred_logits"].shape[0], self.num_classes)
        num_boxes = self._num_boxes(targets, outputs["pred_logits"].device)
        losses = self._terms(outputs, targets, num_boxes, "", log=True)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._terms(aux, targets, num_boxes, f"_{i}", log=False))
        if "enc_outputs" in outputs:
            binary = copy.deepcopy(list(targets))
            for t in binary:
                t["labels"] = torch.zeros_like(t["labels"])
            losses.update(self._terms(outputs["enc_outputs"], binary, num_boxes, "_enc", log=False))
        return losses

    def _terms(self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], num_boxes: float,
               suffix: str, log: bool) -> dict[str, Tensor]:
        preds = {k: outputs[k] for k in ("pred_logits", "pred_boxes")}
        check_outputs(preds)
        indices = self._match(preds, targets)
        terms: dict[str, Tensor] = {}
        for name in self.losses:
            terms.update(self._group(name, preds, targets, indices, num_boxes, log=log))
        return {k + suffix: v for k, v in terms.items()}


class DeformablePostProcess(PostProcess):
    """The official post-processing: the ``num_select`` (100) best (query, class) pairs per image.

    Sigmoid scores of every query and class, ranked together; a query may appear with several
    classes. Returns per image ``scores [K]``, ``labels [K]``, ``boxes [K, 4]`` (xyxy pixels of
    ``target_sizes [B, 2]`` as ``(h, w)``) and ``query [K]`` (which query each pair is; the official
    code does not return it), ``K = min(num_select, Q * C)``, best first.
    """

    def __init__(self, num_select: int = 100) -> None:
        super().__init__("sigmoid")
        self.num_select = num_select

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], target_sizes: Tensor) -> list[dict[str, Tensor]]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]  # [B, Q, C], [B, Q, 4]
        target_sizes = torch.as_tensor(target_sizes, device=boxes.device)
        if target_sizes.dim() != 2 or target_sizes.shape != (logits.shape[0], 2):
            raise ValueError(f"target_sizes must be [B, 2] = [{logits.shape[0]}, 2] as (h, w), got {list(target_sizes.shape)}")
        prob = logits.sigmoid().view(logits.shape[0], -1)  # [B, Q * C]
        k = min(self.num_select, prob.shape[1])
        scores, flat = torch.topk(prob, k, dim=1)
        query, labels = flat // logits.shape[2], flat % logits.shape[2]
        xyxy = torch.gather(box_ops.box_cxcywh_to_xyxy(boxes), 1, query[..., None].repeat(1, 1, 4))
        img_h, img_w = target_sizes.unbind(1)
        scale = torch.stack([img_w, img_h, img_w, img_h], dim=1)  # [B, 4]
        xyxy = xyxy * scale[:, None, :]
        return [{"scores": s, "labels": l, "boxes": b, "query": q} for s, l, b, q in zip(scores, labels, xyxy, query)]


def build_criterion(cfg: DETRConfig) -> DeformableCriterion:
    """The official matcher (costs ``set_cost_*``) and loss (weights ``*_loss_coef``, repeated with
    ``_i`` for the aux layers and ``_enc`` for the two-stage proposals, as the official build)."""
    matcher = SigmoidHungarianMatcher(cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou,
                                      focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma)
    weight_dict = aux_weight_dict(cfg)
    if cfg.aux_loss:
        weight_dict.update({f"{k}_enc": weight_dict[k] for k in ("loss_ce", "loss_bbox", "loss_giou")})
    return DeformableCriterion(cfg.num_classes, matcher, weight_dict, focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma)


def build_postprocess(cfg: DETRConfig) -> DeformablePostProcess:  # noqa: ARG001 - the same for every config
    """The official top-100 post-processing."""
    return DeformablePostProcess()
