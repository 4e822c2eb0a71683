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

from .box_ops import box_cxcywh_to_xyxy
from .matcher import HungarianMatcher, build_matcher, check_outputs, check_targets

__all__ = ["SetCriterion", "build_criterion", "elementwise_generalized_box_iou"]

_DEFAULT_LOSSES = ("labels", "boxes", "cardinality")


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of corresponding corner boxes ``[N, 4]``, ``[N, 4]`` -> ``[N]``.

    The diagonal of :func:`~detr_tutorial.box_ops.generalized_box_iou` without the ``N x N`` matrix.
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area1 + area2 - inter
    wh_c = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    enclosing = wh_c[:, 0] * wh_c[:, 1]
    return inter / union - (enclosing - union) / enclosing


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
        encoder_radius: float = 0.25,
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
        self.encoder_radius = encoder_radius
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

    def loss_encoder(self, enc: dict[str, Tensor], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The dense, one-to-many loss of the encoder head (training only; see ``DETR``).

        Every memory cell whose centre lies within ``encoder_radius`` of an object's size from the
        object's centre (and always the cell holding the centre) must predict that object's class
        and box; a cell near several objects takes the smallest. All other valid cells must say
        "nothing" (sigmoid focal loss). Normalized by the number of positive cells.
        """
        logits, boxes, centres = enc["pred_logits"], enc["pred_boxes"], enc["centres"]
        padding, cell_size = enc["padding"], enc["cell_size"]
        b, hw, c = logits.shape
        target_cls = torch.zeros_like(logits)
        target_box = torch.zeros_like(boxes)
        positive = torch.zeros((b, hw), dtype=torch.bool, device=logits.device)
        for i, t in enumerate(targets):
            gt = t["boxes"].to(boxes)
            if len(gt) == 0:
                continue
            reach = torch.maximum(gt[:, 2:] * self.encoder_radius, cell_size[i] * 0.5)  # [N, 2] as (x, y)
            inside = ((centres[i][:, None, :] - gt[None, :, :2]).abs() <= reach[None]).all(-1)  # [hw, N]
            inside &= ~padding[i][:, None]
            area = torch.where(inside, (gt[:, 2] * gt[:, 3])[None], torch.full_like(inside, float("inf"), dtype=gt.dtype))
            smallest, which = area.min(1)  # [hw]
            pos = torch.isfinite(smallest)
            positive[i] = pos
            target_cls[i, pos, t["labels"].to(logits.device)[which[pos]]] = 1.0
            target_box[i, pos] = gt[which[pos]]
        num_pos = torch.as_tensor([float(positive.sum())], device=logits.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_pos)
            num_pos = num_pos / dist.get_world_size()
        num_pos = torch.clamp(num_pos, min=1).item()
        valid = ~padding
        loss_ce = sigmoid_focal_loss(
            logits[valid], target_cls[valid], self.focal_alpha, self.focal_gamma, reduction="sum"
        ) / num_pos
        src, tgt = boxes[positive], target_box[positive]  # [P, 4]
        loss_bbox = F.l1_loss(src, tgt, reduction="sum") / num_pos
        loss_giou = (1 - elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))).sum() / num_pos
        return {"loss_enc_ce": loss_ce, "loss_enc_bbox": loss_bbox, "loss_enc_giou": loss_giou}

    # -- putting it together ---------------------------------------------------------------
    def _num_boxes(self, targets: Sequence[dict[str, Tensor]], device: torch.device) -> float:
        """Target boxes per process, averaged over processes (so every process divides alike), >= 1."""
        num = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num)
            world = dist.get_world_size()
        return torch.clamp(num / world, min=1).item()

    def _group(
        self, name: str, outputs: dict, targets: Sequence, indices: list, num_boxes: float, log: bool, groups: int = 1
    ) -> dict:
        if name == "labels":
            return self.loss_labels(outputs, targets, indices, num_boxes, log=log)
        if name == "boxes":
            return self.loss_boxes(outputs, targets, indices, num_boxes)
        if groups > 1:  # count the objects that one group (what inference runs) predicts
            per_group = outputs["pred_logits"].shape[1] // groups
            outputs = {k: v[:, :per_group] for k, v in outputs.items()}
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
        groups = int(outputs.get("query_groups", 1))
        if groups < 1 or outputs["pred_logits"].shape[1] % groups != 0:
            raise ValueError(
                f"query_groups={groups} does not divide the {outputs['pred_logits'].shape[1]} predictions per image"
            )
        main = {k: v for k, v in outputs.items() if k in ("pred_logits", "pred_boxes")}
        indices = self._match(main, targets, groups)
        # Group DETR: every group is a full one-to-one matching; dividing by G averages the groups
        num_boxes = self._num_boxes(targets, outputs["pred_logits"].device) * groups
        losses: dict[str, Tensor] = {}
        for name in self.losses:
            losses.update(self._group(name, main, targets, indices, num_boxes, log=True, groups=groups))
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            check_outputs(aux)
            aux_indices = self._match(aux, targets, groups)
            for name in self.losses:
                terms = self._group(name, aux, targets, aux_indices, num_boxes, log=False, groups=groups)
                losses.update({f"{k}_{i}": v for k, v in terms.items()})
        if "enc_outputs" in outputs:
            losses.update(self.loss_encoder(outputs["enc_outputs"], targets))
        return losses

    def _match(self, outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]], groups: int = 1) -> list:
        """Hungarian matching, separately within each query group; indices into all ``G*Q`` queries."""
        if groups > 1:
            per_group = outputs["pred_logits"].shape[1] // groups
            chunks = [
                self._match(
                    {k: outputs[k][:, g * per_group : (g + 1) * per_group] for k in ("pred_logits", "pred_boxes")},
                    targets,
                )
                for g in range(groups)
            ]
            return [
                (
                    torch.cat([c[b][0] + g * per_group for g, c in enumerate(chunks)]),
                    torch.cat([c[b][1] for c in chunks]),
                )
                for b in range(len(targets))
            ]
        # targets were validated once in forward(); our matcher need not do it again per layer
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


def build_criterion(cfg: Any) -> SetCriterion:
    """The matcher and loss of a :class:`~detr_tutorial.config.DETRConfig`, with aux weights filled in."""
    weight_dict = {"loss_ce": cfg.ce_loss_coef, "loss_bbox": cfg.bbox_loss_coef, "loss_giou": cfg.giou_loss_coef}
    if cfg.aux_loss:
        for i in range(cfg.dec_layers - 1):
            weight_dict.update({f"{k}_{i}": v for k, v in list(weight_dict.items()) if not k[-1].isdigit()})
    if getattr(cfg, "encoder_aux_loss", False):
        coef = cfg.encoder_aux_coef
        weight_dict.update(
            loss_enc_ce=cfg.ce_loss_coef * coef, loss_enc_bbox=cfg.bbox_loss_coef * coef, loss_enc_giou=cfg.giou_loss_coef * coef
        )
    return SetCriterion(
        cfg.num_classes,
        build_matcher(cfg),
        weight_dict=weight_dict,
        eos_coef=cfg.eos_coef,
        focal=cfg.focal_loss,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
        encoder_radius=getattr(cfg, "encoder_aux_radius", 0.25),
    )
