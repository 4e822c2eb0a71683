"""The conditional family: Conditional DETR's decoder, with a dense encoder head and two-stage queries.

The fast CPU model of the book (the ``shapes-cpu`` recipe, the shipped model) is this family.
It is still DETR: one set of ``num_queries`` predictions per image, one-to-one Hungarian matching,
no anchors and no NMS. What it adds to the paper's model, each as one step of :meth:`forward`:

1. ``encode``: the paper's encoder (optionally with the positions also added to its input);
2. ``dense_predictions``: a head on every encoder cell (``enc_class_embed``, ``enc_bbox_embed``)
   trained by a dense, one-to-many loss (:class:`DenseHeadCriterion`), as Co-DETR's auxiliary
   heads; with ``encoder_cell_units`` it states box sizes in units of its cell;
3. ``reference``: each query's reference, either a point learned from the query
   (``reference_points``, Conditional DETR, Meng et al. 2021) or, with ``two_stage``, the box of
   one of the ``num_queries`` best-scoring cells of the dense head (Deformable DETR's two-stage
   variant with DINO's "mixed" queries: the content queries stay learned);
4. ``decode``: Conditional DETR's decoder layers, whose cross-attention adds a spatial term (the
   sine code of the reference point against the cells' positions); with ``box_refine`` every
   layer moves the reference to the previous layer's box (Deformable DETR's refinement);
5. the heads: each layer's boxes are offsets from its references, in logit space.

The state dict keys are those of the models trained before the families existed (the shipped
checkpoint loads unchanged).
"""
from __future__ import annotations

import copy
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from ..box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from ..config import DETRConfig
from ..criterion import SetCriterion, aux_weight_dict, mean_over_processes
from ..matcher import build_matcher
from ..models.detr import DETR, MLP, build_parts, finish_model, full_precision
from ..models.position_encoding import sine_embed_points
from ..models.transformer import (
    MultiheadAttention,
    Transformer,
    TransformerDecoderLayer,
    _with_pos,
    stack_attention,
)
from ..nested import NestedTensor, to_nested

__all__ = [
    "ConditionalDecoderLayer",
    "ConditionalDecoder",
    "ConditionalTransformer",
    "ConditionalDETR",
    "DenseHeadCriterion",
    "cell_geometry",
    "build_model",
    "build_criterion",
]

_EPS = 1e-4  # references are kept in [eps, 1 - eps] so that their logits stay finite


def conditional_attention(
    attn: MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Optional[Tensor],
    query_extra: Tensor,
    key_extra: Tensor,
    need_weights: bool = False,
) -> tuple[Tensor, Optional[Tensor]]:
    """Cross-attention whose heads score ``q·k + q_extra·k_extra`` over ``2 * head_dim`` channels.

    ``query_extra [B, Lq, d]`` and ``key_extra [B, Lk, d]`` (already projected) are appended to
    the projected queries and keys *per head*: content and space are matched in separate channels.
    """
    q, k, v = attn.project(query, key, value)  # [B, heads, L, head_dim]
    q = torch.cat([q, attn.split_heads(query_extra.expand(q.shape[0], -1, -1))], dim=-1)
    k = torch.cat([k, attn.split_heads(key_extra)], dim=-1)  # [B, heads, Lk, 2 * head_dim]
    return attn.attend(q, k, v, key_padding_mask, need_weights)


class ConditionalDecoderLayer(TransformerDecoderLayer):
    """The paper's decoder layer (post-norm) with Conditional DETR's spatial cross-attention.

    :meth:`add_spatial_projections` adds ``ca_qpos_sine_proj`` (of the query's spatial code) and
    ``ca_kpos_proj`` (of the key positions); :class:`ConditionalDecoder` calls it on each copy of
    the layer, so every layer draws its own initial biases.
    """

    def add_spatial_projections(self) -> None:
        d = self.cross_attn.embed_dim
        self.ca_qpos_sine_proj = nn.Linear(d, d)
        self.ca_kpos_proj = nn.Linear(d, d)

    def forward(  # type: ignore[override]
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Optional[Tensor],
        pos: Tensor,
        query_pos: Tensor,
        query_sine: Tensor,
        is_first: bool,
        need_weights: bool = False,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``tgt, query_pos, query_sine [B, Q, d]``, ``memory, pos [B, HW, d]`` -> ``(tgt, cross weights)``.

        The spatial query is the sine code of the query's reference point, scaled per channel by
        the decoder embedding; the spatial key is the cell's position code. A query therefore
        looks near its point from the first step, instead of learning where to look through the
        content channels. The first layer also adds the positions to the content part.
        """
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt)[0]))
        content_q = _with_pos(tgt, query_pos) if is_first else tgt  # [B, Q, d]
        content_k = _with_pos(memory, pos) if is_first else memory  # [B, HW, d]
        attn, weights = conditional_attention(
            self.cross_attn, content_q, content_k, memory, memory_key_padding_mask,
            self.ca_qpos_sine_proj(query_sine), self.ca_kpos_proj(pos), need_weights,
        )
        tgt = self.norm2(tgt + self.dropout2(attn))
        tgt = self.norm3(tgt + self.dropout3(self._ffn(tgt)))
        return tgt, weights


class ConditionalDecoder(nn.Module):
    """The stack of conditional layers, their shared LayerNorm and ``query_scale``.

    ``query_scale`` (lambda_q, an MLP of the decoder embedding) scales the spatial code from the
    second layer on; a one-layer decoder has none (an unused parameter would stop DDP).
    """

    def __init__(self, layer: ConditionalDecoderLayer, num_layers: int, norm: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = norm
        for each in self.layers:
            each.add_spatial_projections()
        d = layer.cross_attn.embed_dim
        self.query_scale: Optional[nn.Module] = MLP(d, d, d, 2) if num_layers > 1 else None

    def spatial_query(self, reference: Tensor, tgt: Tensor, index: int) -> Tensor:
        """The spatial query of layer ``index``: the sine code of the reference points ``[B, Q, d]``."""
        code = sine_embed_points(reference[..., :2], tgt.shape[-1])  # [B, Q, d]
        if index > 0 and self.query_scale is not None:
            code = code * self.query_scale(tgt)
        return code


class ConditionalTransformer(Transformer):
    """The paper's encoder with a :class:`ConditionalDecoder` (post-norm). The family model runs
    its steps (:meth:`Transformer.encode`, then :meth:`ConditionalDETR.decode`)."""

    decoder_layer = ConditionalDecoderLayer

    def _make_decoder(self, layer: TransformerDecoderLayer, num_layers: int, norm: nn.Module) -> nn.Module:
        assert isinstance(layer, ConditionalDecoderLayer)
        return ConditionalDecoder(layer, num_layers, norm)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:  # noqa: D401 - a clear refusal
        raise TypeError(
            "the conditional transformer has no one-call forward: its decoder needs each query's reference, "
            "which the model computes between the encoder and the decoder (ConditionalDETR.forward runs the steps)"
        )


class ConditionalDETR(DETR):
    """DETR with Conditional DETR's decoder, a dense encoder head and two-stage queries (see the module).

    Args (besides :class:`DETR`'s):
        two_stage: the references are the boxes of the dense head's ``num_queries`` best cells
            (requires ``dense_head``); otherwise each query learns a reference point.
        box_refine: each decoder layer starts from the previous layer's boxes.
        dense_head: the head on the encoder cells; its predictions are ``enc_outputs`` in
            training mode (its loss: :class:`DenseHeadCriterion`).
        cell_units: the dense head predicts box sizes relative to its cell's size (in logit space)
            and places cells at their exact centres in each image's pixels; cells whose centre is
            off the image are padding and the sine positions are normalized by the image's true
            extent in cells (:func:`cell_geometry`). Without it the head has to guess the image's
            size from the batch padding (a model trained on padded batches drew 128-px validation
            boxes ~10% too small).
        position_at_input: also add the positions to the encoder's input once, so the memory's
            values say where each cell is (a small trunk trained from scratch hardly encodes it).
    """

    def __init__(
        self,
        backbone: nn.Module,
        position_embedding: nn.Module,
        transformer: ConditionalTransformer,
        num_classes: int,
        num_queries: int,
        aux_loss: bool = True,
        *,
        two_stage: bool = False,
        box_refine: bool = False,
        dense_head: bool = False,
        cell_units: bool = False,
        position_at_input: bool = False,
    ) -> None:
        super().__init__(backbone, position_embedding, transformer, num_classes, num_queries, aux_loss)
        if two_stage and not dense_head:
            raise ValueError("two_stage picks its references with the dense encoder head: set dense_head=True")
        hidden_dim = transformer.d_model
        # Conditional DETR's learned reference points s = sigmoid(MLP(query)), as (x, y) in [0, 1]
        self.reference_points = None if two_stage else MLP(hidden_dim, hidden_dim, 2, 2)
        self.enc_class_embed = nn.Linear(hidden_dim, num_classes) if dense_head else None
        self.enc_bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3) if dense_head else None
        self.two_stage = two_stage
        self.box_refine = box_refine
        self.cell_units = cell_units
        self.position_at_input = position_at_input

    def forward(
        self, samples: Union[NestedTensor, Tensor, Sequence[Tensor]], return_attention: bool = False
    ) -> dict[str, Any]:
        """As :meth:`DETR.forward`; also ``enc_outputs`` (the dense head, training mode) and, with
        ``return_attention``, ``reference_points [L_dec, B, Q, 2]``: where each layer looked."""
        nested = to_nested(samples)
        features, mask, pos = self.embed(nested)  # [B, C, h, w], [B, h, w], [B, d, h, w]
        src = self.input_proj(features)  # [B, d, h, w]
        if self.position_at_input:
            src = src + pos
        memory, key_padding_mask, pos_flat, enc_w = self.transformer.encode(src, mask, pos, return_attention)
        dense = None
        if self.enc_class_embed is not None and (self.training or self.two_stage):
            dense = self.dense_predictions(memory, mask, nested.mask)
        reference = self.proposals(dense) if self.two_stage else self.learned_reference(memory.shape[0])
        hs, references, dec_w = self.decode(memory, key_padding_mask, pos_flat, reference, return_attention)
        out = self.set_outputs(self.class_head(hs), self.boxes_from(hs, references))
        if dense is not None and self.training:
            out["enc_outputs"] = dense
        if return_attention:
            b, _, h, w = src.shape
            out["reference_points"] = references[..., :2]
            out["enc_attn"] = stack_attention(enc_w, (0, b, self.transformer.nhead, h * w, h * w), memory)
            out["dec_attn"] = torch.stack(dec_w)
            out["feature_shape"] = (int(h), int(w))
        return out

    def embed(self, nested: NestedTensor) -> tuple[Tensor, Tensor, Tensor]:
        """The trunk's features, the feature mask and the positions (in cell units: exact geometry)."""
        features, mask = self.backbone(nested.tensors, nested.mask)
        if not self.cell_units:
            return features, mask, self.position_embedding(mask).to(features.dtype)
        mask, extent = cell_geometry(nested.mask, features.shape[-2:], self.backbone.stride)
        return features, mask, self.position_embedding(mask, extent).to(features.dtype)

    def learned_reference(self, batch_size: int) -> Tensor:
        """Conditional DETR's reference points ``[B, Q, 2]`` as ``(x, y)``, the same for every image."""
        points = self.reference_points(self.query_embed.weight).sigmoid().clamp(_EPS, 1 - _EPS)  # [Q, 2]
        return points[None].expand(batch_size, -1, -1)

    def decode(
        self, memory: Tensor, key_padding_mask: Tensor, pos: Tensor, reference: Tensor, need_weights: bool
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Run the conditional decoder from ``reference [B, Q, 2 or 4]``.

        Returns ``hs [L, B, Q, d]``, the references each layer looked at ``[L, B, Q, 2 or 4]`` and
        the cross-attention weights per layer (when asked). With ``box_refine`` a layer's
        reference is the previous layer's box (detached, as in Deformable DETR).
        """
        decoder = self.transformer.decoder
        query_pos = self.query_embed.weight[None].expand(memory.shape[0], -1, -1)  # [B, Q, d]
        tgt = torch.zeros_like(query_pos)
        hs, references, weights = [], [], []
        for i, layer in enumerate(decoder.layers):
            references.append(reference)
            query_sine = decoder.spatial_query(reference, tgt, i)
            tgt, w = layer(tgt, memory, key_padding_mask, pos, query_pos, query_sine, i == 0, need_weights)
            hs.append(decoder.norm(tgt))
            if self.box_refine:
                moved = self.box_head(hs[-1])[..., : reference.shape[-1]] + torch.logit(reference)
                reference = moved.sigmoid().clamp(_EPS, 1 - _EPS).detach()
            if need_weights:
                weights.append(w)
        return torch.stack(hs), torch.stack(references), weights

    def boxes_from(self, hs: Tensor, references: Tensor) -> Tensor:
        """Each layer's boxes ``[L, B, Q, 4]``: the head's logits as offsets from the references
        (centres from points, or whole boxes from two-stage proposals)."""
        box_logits = self.box_head(hs)  # [L, B, Q, 4]
        r = references.shape[-1]
        anchor = torch.logit(references.to(box_logits.dtype))
        return torch.cat([box_logits[..., :r] + anchor, box_logits[..., r:]], dim=-1).sigmoid()

    def dense_predictions(self, memory: Tensor, mask: Tensor, image_mask: Tensor) -> dict[str, Tensor]:
        """The dense head on every memory cell ``[B, hw, d]``: class logits and a box around its centre.

        Cell centres are in the normalized coordinates of each image's valid area (padding cells
        get centres beyond 1 and are masked out of the loss); ``mask [B, h, w]`` marks the padding
        cells, ``image_mask [B, H, W]`` the padding pixels.
        """
        b, h, w = mask.shape
        cells = memory.to(self.enc_class_embed.weight.dtype)  # [B, hw, d]
        valid_h, valid_w = self._valid_extent(mask, image_mask, cells.dtype)  # [B], [B] in cells
        ys, xs = torch.meshgrid(
            torch.arange(h, device=cells.device, dtype=cells.dtype) + 0.5,
            torch.arange(w, device=cells.device, dtype=cells.dtype) + 0.5,
            indexing="ij",
        )
        centres = torch.stack(
            [xs.flatten()[None] / valid_w[:, None], ys.flatten()[None] / valid_h[:, None]], dim=-1
        )  # [B, hw, 2] as (x, y)
        with full_precision(cells):  # float32 heads, as for the decoder's boxes
            offsets = self.enc_bbox_embed(cells)  # [B, hw, 4]
            logits = self.enc_class_embed(cells)  # [B, hw, C]
        cell_size = torch.stack([1.0 / valid_w, 1.0 / valid_h], dim=-1)  # [B, 2]
        sizes = offsets[..., 2:]
        if self.cell_units:
            sizes = sizes + torch.logit(cell_size.clamp(_EPS, 1 - _EPS))[:, None, :]  # a cell-sized box at 0
        anchor = torch.logit(centres.clamp(_EPS, 1 - _EPS))
        boxes = torch.cat([offsets[..., :2] + anchor, sizes], dim=-1).sigmoid()
        return {
            "pred_logits": logits,  # [B, hw, C] (sigmoid scores, no "no object")
            "pred_boxes": boxes,  # [B, hw, 4] normalized cxcywh
            "centres": centres,
            "cell_size": cell_size,
            "padding": mask.flatten(1),  # [B, hw]
        }

    def _valid_extent(self, mask: Tensor, image_mask: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Each image's valid height and width in cells ``[B]``: fractional in cell units (120 px at
        stride 16 = 7.5 cells; the stride is the trunk's, never canvas / map side: a 117 px canvas
        gives ceil(117/16) = 8 cells, and 117/8 = 14.6 px would shrink every box by 9 %), else
        the count of valid cells."""
        if self.cell_units:
            stride = float(self.backbone.stride)
            valid_h = (~image_mask[:, :, 0]).sum(1).clamp(min=1).to(dtype) / stride
            valid_w = (~image_mask[:, 0, :]).sum(1).clamp(min=1).to(dtype) / stride
            return valid_h, valid_w
        return (~mask[:, :, 0]).sum(1).clamp(min=1).to(dtype), (~mask[:, 0, :]).sum(1).clamp(min=1).to(dtype)

    def proposals(self, dense: dict[str, Tensor]) -> Tensor:
        """Two-stage: the boxes of the ``num_queries`` highest-scoring memory cells ``[B, Q, 4]``.

        A cell's score is its best class probability; padding cells are never chosen. The boxes
        are detached: the decoder refines them, the dense loss alone trains the encoder head.
        """
        logits, boxes = dense["pred_logits"], dense["pred_boxes"]  # [B, hw, C], [B, hw, 4]
        if logits.shape[1] < self.num_queries:
            raise ValueError(
                f"two-stage DETR picks its {self.num_queries} queries among the feature map's cells, but this "
                f"batch's map has only {logits.shape[1]}: use larger images or fewer queries"
            )
        scores = logits.detach().max(-1).values.masked_fill(dense["padding"], float("-inf"))  # [B, hw]
        top = scores.topk(self.num_queries, dim=1).indices  # [B, Q]
        chosen = torch.gather(boxes.detach(), 1, top[..., None].expand(-1, -1, 4))  # [B, Q, 4]
        return chosen.clamp(_EPS, 1 - _EPS)

    def class_heads(self) -> list[nn.Linear]:
        return [self.class_embed] + ([self.enc_class_embed] if self.enc_class_embed is not None else [])

    def _replace_class_heads(self, num_classes: int) -> None:
        super()._replace_class_heads(num_classes)
        if self.enc_class_embed is not None:  # the dense encoder head predicts the classes too
            enc = self.enc_class_embed
            self.enc_class_embed = nn.Linear(enc.in_features, num_classes).to(enc.weight.device, enc.weight.dtype)


def cell_geometry(image_mask: Tensor, size: Sequence[int], stride: int) -> tuple[Tensor, Tensor]:
    """Which feature cells belong to the image, and the image's extent in cells.

    ``image_mask [B, H, W]`` (True = padding), ``size`` the map's ``(h, w)``, ``stride`` the
    trunk's. A cell belongs to the image when its centre ``(i + 0.5) * stride`` lies on a valid
    pixel: a 129 px side gives 9 cells, the 9th covering one pixel row, and that sliver is padding
    here (the official nearest-neighbour mask keeps it, and a model trained on 128 px images has
    never seen such a cell). Returns ``mask [B, h, w]`` and ``extent [B, 2]``, the valid height and
    width divided by the stride (fractional: 120 px at stride 16 is 7.5 cells).
    """
    h, w = size[0], size[1]  # no int(): under torch.export these are symbolic sizes, int() would fix them
    big_h, big_w = image_mask.shape[-2:]
    rows = ((torch.arange(h, device=image_mask.device) + 0.5) * stride).long()  # [h] centre pixel rows
    cols = ((torch.arange(w, device=image_mask.device) + 0.5) * stride).long()  # [w]
    inside = (rows < big_h)[:, None] & (cols < big_w)[None, :]  # [h, w]: centre on the canvas
    sampled = image_mask[:, rows.clamp(max=big_h - 1)][:, :, cols.clamp(max=big_w - 1)]  # [B, h, w]
    mask = sampled | ~inside[None]
    mask[:, 0, 0] = image_mask[:, 0, 0]  # an image smaller than half a cell keeps its one cell
    valid_h = (~image_mask[:, :, 0]).sum(1).clamp(min=1)  # [B] pixel rows of the image itself
    valid_w = (~image_mask[:, 0, :]).sum(1).clamp(min=1)  # [B]
    extent = torch.stack([valid_h, valid_w], dim=-1).float() / stride  # [B, 2] in cells
    return mask, extent


class DenseHeadCriterion(SetCriterion):
    """DETR's set loss plus the dense, one-to-many loss of the encoder head (``enc_outputs``).

    Every memory cell whose centre lies within ``encoder_radius`` of an object's size from the
    object's centre (and always the cell holding the centre) must predict that object's class and
    box; a cell near several objects takes the smallest. All other valid cells must say
    "nothing" (sigmoid focal loss). Normalized by the number of positive cells. Terms:
    ``loss_enc_ce``, ``loss_enc_bbox``, ``loss_enc_giou``.
    """

    def __init__(self, *args: Any, encoder_radius: float = 0.25, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoder_radius = encoder_radius

    def forward(self, outputs: dict[str, Any], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        losses = super().forward(outputs, targets)
        if "enc_outputs" in outputs:
            losses.update(self.loss_encoder(outputs["enc_outputs"], targets))
        return losses

    def loss_encoder(self, enc: dict[str, Tensor], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        logits, boxes = enc["pred_logits"], enc["pred_boxes"]
        positive, target_cls, target_box = self._dense_targets(enc, targets)
        num_pos = mean_over_processes(float(positive.sum()), logits.device)
        valid = ~enc["padding"]
        loss_ce = sigmoid_focal_loss(
            logits[valid], target_cls[valid], self.focal_alpha, self.focal_gamma, reduction="sum"
        ) / num_pos
        src, tgt = boxes[positive], target_box[positive]  # [P, 4]
        loss_bbox = F.l1_loss(src, tgt, reduction="sum") / num_pos
        loss_giou = (1 - elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))).sum() / num_pos
        return {"loss_enc_ce": loss_ce, "loss_enc_bbox": loss_bbox, "loss_enc_giou": loss_giou}

    def _dense_targets(
        self, enc: dict[str, Tensor], targets: Sequence[dict[str, Tensor]]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Which cells are positive ``[B, hw]``, their one-hot classes ``[B, hw, C]`` and boxes ``[B, hw, 4]``."""
        logits, boxes, centres = enc["pred_logits"], enc["pred_boxes"], enc["centres"]
        padding, cell_size = enc["padding"], enc["cell_size"]
        target_cls = torch.zeros_like(logits)
        target_box = torch.zeros_like(boxes)
        positive = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
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
        return positive, target_cls, target_box


def build_model(cfg: DETRConfig) -> ConditionalDETR:
    """The conditional family's model for a config (same construction order as the paper's DETR)."""
    backbone, position_embedding, transformer = build_parts(cfg, ConditionalTransformer)
    model = ConditionalDETR(
        backbone, position_embedding, transformer, cfg.num_classes, cfg.num_queries, cfg.aux_loss,
        two_stage=cfg.two_stage, box_refine=cfg.box_refine, dense_head=cfg.encoder_aux_loss,
        cell_units=cfg.encoder_cell_units, position_at_input=cfg.position_at_input,
    )
    return finish_model(model, cfg)


def build_criterion(cfg: DETRConfig) -> SetCriterion:
    """DETR's set loss, plus the dense head's terms (weights ``encoder_aux_coef`` x the decoder's)."""
    common = dict(
        weight_dict=aux_weight_dict(cfg), eos_coef=cfg.eos_coef, focal=cfg.focal_loss,
        focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma,
    )
    if not cfg.encoder_aux_loss:
        return SetCriterion(cfg.num_classes, build_matcher(cfg), **common)
    coef = cfg.encoder_aux_coef
    common["weight_dict"].update(
        loss_enc_ce=cfg.ce_loss_coef * coef, loss_enc_bbox=cfg.bbox_loss_coef * coef, loss_enc_giou=cfg.giou_loss_coef * coef
    )
    return DenseHeadCriterion(cfg.num_classes, build_matcher(cfg), encoder_radius=cfg.encoder_aux_radius, **common)
