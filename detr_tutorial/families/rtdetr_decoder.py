"""RT-DETR's decoder (``rtdetr_pytorch/src/zoo/rtdetr/rtdetr_decoder.py`` ``RTDETRTransformer``).

From the hybrid encoder's ``L`` maps to boxes, in three steps:

1. **memory**: each map projected again (``input_proj[l]``: 1x1 conv + BatchNorm) and flattened
   level by level, row-major: ``[B, S, d]``, ``S = sum H_l W_l``;
2. **IoU-aware query selection**: every cell has an *anchor* (its centre, size
   ``0.05 * 2^l``, in logit space; ``+inf`` where a coordinate is outside ``(eps, 1 - eps)``,
   and those cells' memory is zeroed); ``enc_output`` (Linear + LayerNorm) and the encoder heads
   score each cell (``enc_score_head``) and regress its box (``enc_bbox_head`` + anchor). The
   ``num_queries`` cells with the best class score become the queries: their (detached)
   ``enc_output`` features are the content, their boxes the initial references. (Training with
   the varifocal loss makes that score IoU-aware: a well-localized box scores high.)
3. **decoder**: ``num_decoder_layers`` post-norm layers (self-attention, deformable
   cross-attention on the memory around each reference box (:class:`MSDeformAttn`), ReLU FFN);
   the query position is ``query_pos_head`` (MLP 4 -> 2d -> d) of the reference box. After each
   layer its own heads give logits and the refined box ``sigmoid(dec_bbox_head[i](x) +
   logit(ref))``, which becomes the next layer's (detached) reference.

In eval mode the decoder stops at layer ``eval_idx`` and returns only its predictions; in training
it returns every layer's, each box taken from the *undetached* previous box (the official "look
forward twice": the gradient of layer ``i``'s box reaches layer ``i - 1``'s head).
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..models.detr import MLP
from ..models.ms_deform_attn import MSDeformAttn, level_starts
from ..models.transformer import MultiheadAttention
from .rtdetr_denoising import contrastive_denoising_group, inverse_sigmoid

__all__ = ["RTDETRDecoderLayer", "RTDETRTransformer", "generate_anchors"]


def generate_anchors(spatial_shapes: Sequence[Sequence[int]], grid_size: float = 0.05, eps: float = 0.01,
                     device: Optional[torch.device] = None, anchor_pixels: Optional[float] = None,
                     strides: Optional[Sequence[int]] = None) -> tuple[Tensor, Tensor]:
    """Anchors ``[1, S, 4]`` (logit space, ``+inf`` where invalid) and ``valid_mask [1, S, 1]``.

    Level ``l``'s anchors are its cells' centres ``((x + 0.5) / W, (y + 0.5) / H)`` with width and
    height ``grid_size * 2^l``, row-major; valid when all four numbers are in ``(eps, 1 - eps)``.
    With ``anchor_pixels`` (and the levels' ``strides``) the width and height are instead
    ``anchor_pixels * 2^l`` pixels of the canvas (``W * stride`` by ``H * stride`` pixels): the same
    size in pixels whatever the canvas, so a cell's box regression need not know the image size.
    """
    if anchor_pixels is not None and (strides is None or len(strides) < len(spatial_shapes)):
        raise ValueError(f"anchor_pixels needs a stride per level: {len(spatial_shapes)} levels, strides {strides}")
    anchors = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        xy = (torch.stack([gx, gy], -1)[None] + 0.5) / torch.tensor([w, h], dtype=torch.float32)
        if anchor_pixels is None:
            wh = torch.ones_like(xy) * grid_size * (2.0 ** lvl)
        else:  # [w, h] of the canvas in pixels -> the anchor's fraction of it
            canvas = torch.tensor([w, h], dtype=torch.float32) * strides[lvl]
            wh = torch.ones_like(xy) * anchor_pixels * (2.0 ** lvl) / canvas
        anchors.append(torch.cat([xy, wh], -1).reshape(-1, h * w, 4))
    anchor = torch.cat(anchors, 1).to(device)
    valid = ((anchor > eps) * (anchor < 1 - eps)).all(-1, keepdim=True)
    anchor = torch.log(anchor / (1 - anchor))
    return torch.where(valid, anchor, torch.inf), valid


class RTDETRDecoderLayer(nn.Module):
    """The official ``TransformerDecoderLayer``: ``[B, Q, d]`` -> ``[B, Q, d]`` (post-norm)."""

    def __init__(self, d_model: int = 256, n_head: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0,
                 n_levels: int = 3, n_points: int = 4) -> None:
        super().__init__()
        # nn.MultiheadAttention's parameters (official weights load as they are), batch-first; its
        # explicit path under CPU autocast (benchmarks/RESULTS.md, "attention under CPU autocast")
        self.self_attn = MultiheadAttention(d_model, n_head, dropout=dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_head, n_points)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: Tensor, reference_points: Tensor, memory: Tensor,
                spatial_shapes: Union[Tensor, Sequence[Sequence[int]]], level_start_index: Union[Tensor, Sequence[int]],
                attn_mask: Optional[Tensor] = None,
                query_pos_embed: Optional[Tensor] = None, return_sampling: bool = False
                ) -> Union[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """``reference_points [B, Q, 4]`` boxes in ``[0, 1]`` (the same box on every level).

        ``return_sampling=True`` returns ``(output, sampling_locations [B, Q, M, L, P, 2],
        attention_weights [B, Q, M, L, P])``: where the cross-attention read (``(x, y)`` in ``[0, 1]``
        of each level's map) and with what weight (summing to 1 over the ``L * P`` points of a query
        and head); the output is the same tensor either way.
        """
        q = k = tgt if query_pos_embed is None else tgt + query_pos_embed
        attn, _ = self.self_attn(q, k, tgt, attn_mask=attn_mask)
        tgt = self.norm1(tgt + self.dropout1(attn))
        query = tgt if query_pos_embed is None else tgt + query_pos_embed
        ref = reference_points[:, :, None].expand(-1, -1, len(spatial_shapes), -1)  # [B, Q, L, 4]
        cross, locations, weights = self.cross_attn(query, ref, memory, spatial_shapes, level_start_index,
                                                    return_sampling=True)
        tgt = self.norm2(tgt + self.dropout2(cross))
        ffn = self.linear2(self.dropout3(F.relu(self.linear1(tgt))))
        out = self.norm3((tgt + self.dropout4(ffn)).clamp(min=-65504, max=65504))
        return (out, locations, weights) if return_sampling else out


class _Decoder(nn.Module):
    """``layers`` and ``eval_idx`` (the official ``TransformerDecoder``)."""

    def __init__(self, layer: RTDETRDecoderLayer, num_layers: int, eval_idx: int = -1) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx


class RTDETRTransformer(nn.Module):
    """Memory, query selection and decoder (see the module docstring); official names throughout.

    Args:
        num_classes: real classes (sigmoid logits, no "no object" column).
        hidden_dim, num_queries, nhead, num_decoder_layers, dim_feedforward, dropout: as named.
        feat_channels: the encoder's channels per level; num_levels: ``L`` (more levels than maps
            add 3x3 stride-2 projections of the last map, as the official).
        num_decoder_points: deformable sampling points per head and level.
        num_denoising, label_noise_ratio, box_noise_scale: the training-time denoising groups
            (:mod:`detr_tutorial.families.rtdetr_denoising`); ``num_denoising=0`` switches them off.
        eval_spatial_size: ``(h, w)``: anchors precomputed for it (other sizes compute theirs).
        eval_idx: the layer whose predictions inference returns (``-1``: the last).
        anchor_pixels: anchors of ``anchor_pixels * 2^l`` pixels (``None``: the official ``0.05 * 2^l``
            of the canvas; see :func:`generate_anchors`).
    """

    def __init__(self, num_classes: int = 80, hidden_dim: int = 256, num_queries: int = 300,
                 feat_channels: Sequence[int] = (256, 256, 256), num_levels: int = 3, num_decoder_points: int = 4,
                 nhead: int = 8, num_decoder_layers: int = 6, dim_feedforward: int = 1024, dropout: float = 0.0,
                 num_denoising: int = 100, label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0,
                 eval_spatial_size: Optional[Sequence[int]] = None, feat_strides: Sequence[int] = (8, 16, 32),
                 eval_idx: int = -1, eps: float = 1e-2, aux_loss: bool = True,
                 anchor_pixels: Optional[float] = None) -> None:
        super().__init__()
        if len(feat_channels) > num_levels:
            raise ValueError(f"num_levels ({num_levels}) must be at least the number of maps ({len(feat_channels)})")
        self.hidden_dim, self.nhead, self.num_levels = hidden_dim, nhead, num_levels
        self.num_classes, self.num_queries, self.eps = num_classes, num_queries, eps
        self.anchor_pixels = anchor_pixels
        self.num_decoder_layers, self.aux_loss = num_decoder_layers, aux_loss
        self.feat_strides = list(feat_strides) + [feat_strides[-1] * 2 ** (i + 1) for i in range(num_levels - len(feat_strides))]
        self.eval_spatial_size = None if eval_spatial_size is None else tuple(eval_spatial_size)
        self._build_input_proj(list(feat_channels))
        layer = RTDETRDecoderLayer(hidden_dim, nhead, dim_feedforward, dropout, num_levels, num_decoder_points)
        self.decoder = _Decoder(layer, num_decoder_layers, eval_idx)
        self.num_denoising, self.label_noise_ratio, self.box_noise_scale = num_denoising, label_noise_ratio, box_noise_scale
        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, num_layers=2)
        self.enc_output = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, num_layers=3)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_decoder_layers))
        self.dec_bbox_head = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4, num_layers=3) for _ in range(num_decoder_layers))
        if self.eval_spatial_size is not None:
            anchors, valid = generate_anchors(self._eval_shapes(), eps=eps, **self._anchor_options())
            self.register_buffer("anchors", anchors, persistent=False)
            self.register_buffer("valid_mask", valid, persistent=False)
        self._reset_parameters()

    def _eval_shapes(self) -> list[list[int]]:
        h, w = self.eval_spatial_size
        return [[int(h / s), int(w / s)] for s in self.feat_strides]

    def _build_input_proj(self, feat_channels: list[int]) -> None:
        self.input_proj = nn.ModuleList()
        for c in feat_channels:
            self.input_proj.append(nn.Sequential(OrderedDict(
                conv=nn.Conv2d(c, self.hidden_dim, 1, bias=False), norm=nn.BatchNorm2d(self.hidden_dim))))
        c = feat_channels[-1]
        for _ in range(self.num_levels - len(feat_channels)):
            self.input_proj.append(nn.Sequential(OrderedDict(
                conv=nn.Conv2d(c, self.hidden_dim, 3, 2, padding=1, bias=False), norm=nn.BatchNorm2d(self.hidden_dim))))
            c = self.hidden_dim

    def _reset_parameters(self) -> None:
        """The official initialization: score biases at prior 0.01, box heads' last layer zero, xavier."""
        bias = -math.log((1 - 0.01) / 0.01)
        nn.init.constant_(self.enc_score_head.bias, bias)
        nn.init.constant_(self.enc_bbox_head.layers[-1].weight, 0)
        nn.init.constant_(self.enc_bbox_head.layers[-1].bias, 0)
        for cls_, reg_ in zip(self.dec_score_head, self.dec_bbox_head):
            nn.init.constant_(cls_.bias, bias)
            nn.init.constant_(reg_.layers[-1].weight, 0)
            nn.init.constant_(reg_.layers[-1].bias, 0)
        nn.init.xavier_uniform_(self.enc_output[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)

    # -- the steps ----------------------------------------------------------------------------------
    def memory(self, feats: Sequence[Tensor]) -> tuple[Tensor, list[list[int]], list[int]]:
        """``memory [B, S, d]``, ``spatial_shapes`` ``[[H_l, W_l], ...]``, ``level_start_index``."""
        proj = [self.input_proj[i](f) for i, f in enumerate(feats)]
        for i in range(len(feats), self.num_levels):
            proj.append(self.input_proj[i](feats[-1] if i == len(feats) else proj[-1]))
        shapes = [[p.shape[2], p.shape[3]] for p in proj]  # no int(): under torch.export they stay symbolic
        starts = level_starts(shapes)
        return torch.cat([p.flatten(2).permute(0, 2, 1) for p in proj], 1), shapes, starts

    def anchors_for(self, shapes: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
        """The precomputed anchors in eval mode at ``eval_spatial_size``, else fresh ones (same values)."""
        if not self.training and self.eval_spatial_size is not None and all(  # no guard on a traced size
                statically_known_true(a == b) for hw, ref in zip(shapes, self._eval_shapes()) for a, b in zip(hw, ref)):
            return self.anchors.to(device), self.valid_mask.to(device)
        return generate_anchors(shapes, eps=self.eps, device=device, **self._anchor_options())

    def _anchor_options(self) -> dict[str, Any]:
        """``generate_anchors``' size options: ``anchor_pixels`` and the levels' strides, when set."""
        if self.anchor_pixels is None:
            return {}
        return {"anchor_pixels": self.anchor_pixels, "strides": self.feat_strides}

    def select_queries(self, memory: Tensor, shapes: list[list[int]]) -> dict[str, Tensor]:
        """IoU-aware query selection: ``enc_outputs_class [B, S, C]``, ``topk_ind [B, Q]``,
        ``target [B, Q, d]`` (detached), ``ref_unact [B, Q, 4]`` (logit space, not detached),
        ``enc_topk_logits [B, Q, C]``, ``enc_topk_bboxes [B, Q, 4]``."""
        anchors, valid = self.anchors_for(shapes, memory.device)
        output_memory = self.enc_output(valid.to(memory.dtype) * memory)
        enc_class = self.enc_score_head(output_memory)
        enc_coord_unact = self.enc_bbox_head(output_memory) + anchors
        _, topk_ind = torch.topk(enc_class.max(-1).values, self.num_queries, dim=1)

        def gather(x: Tensor) -> Tensor:
            return x.gather(1, topk_ind[..., None].repeat(1, 1, x.shape[-1]))

        ref_unact = gather(enc_coord_unact)
        return {"enc_outputs_class": enc_class, "topk_ind": topk_ind, "target": gather(output_memory).detach(),
                "ref_unact": ref_unact, "enc_topk_logits": gather(enc_class), "enc_topk_bboxes": ref_unact.sigmoid()}

    def run_decoder(self, target: Tensor, ref_unact: Tensor, memory: Tensor, shapes: list[list[int]],
                    starts: list[int], attn_mask: Optional[Tensor] = None
                    ) -> tuple[Tensor, Tensor, list[Tensor], list[tuple[Tensor, Tensor]]]:
        """Boxes ``[L', B, Q, 4]``, logits ``[L', B, Q, C]`` (training: every layer; eval: ``eval_idx``'s),
        the layers' outputs (each ``[B, Q, d]``, up to the last one run) and, per layer run, its
        cross-attention's ``(sampling_locations [B, Q, M, L, P, 2], attention_weights [B, Q, M, L, P])``
        (tensors the layer computes anyway; keeping them costs no computation)."""
        # the shapes as Python lists, not tensors: MSDeformAttn would read a tensor back with .tolist(),
        # which torch.export cannot trace (the sizes would become data)
        spatial, level_start = shapes, starts
        output, ref_detach, ref = target, ref_unact.sigmoid(), None
        boxes, logits, outputs, sampling = [], [], [], []
        for i, layer in enumerate(self.decoder.layers):
            output, locations, weights = layer(output, ref_detach, memory, spatial, level_start, attn_mask,
                                               self.query_pos_head(ref_detach), return_sampling=True)
            outputs.append(output)
            sampling.append((locations, weights))
            inter = torch.sigmoid(self.dec_bbox_head[i](output) + inverse_sigmoid(ref_detach))
            if self.training:
                logits.append(self.dec_score_head[i](output))
                boxes.append(inter if i == 0 else torch.sigmoid(self.dec_bbox_head[i](output) + inverse_sigmoid(ref)))
            elif i == self.decoder.eval_idx:
                logits.append(self.dec_score_head[i](output))
                boxes.append(inter)
                break
            ref = inter
            ref_detach = inter.detach() if self.training else inter
        return torch.stack(boxes), torch.stack(logits), outputs, sampling

    def forward_with_intermediates(self, feats: Sequence[Tensor], targets: Optional[Sequence[dict]] = None
                                   ) -> tuple[dict[str, Any], dict[str, Any]]:
        """:meth:`forward`'s outputs, and ``memory``, ``spatial_shapes``, ``level_start_index``,
        the :meth:`select_queries` tensors, ``decoder_layer_outputs``, ``decoder_sampling`` (see
        :meth:`run_decoder`; denoising queries first in training) and ``dn`` (the denoising group)."""
        memory, shapes, starts = self.memory(feats)
        dn_class = dn_box = attn_mask = dn_meta = None
        if self.training and self.num_denoising > 0 and targets is not None:
            dn_class, dn_box, attn_mask, dn_meta = contrastive_denoising_group(
                targets, self.num_classes, self.num_queries, self.denoising_class_embed, self.num_denoising,
                self.label_noise_ratio, self.box_noise_scale)
        sel = self.select_queries(memory, shapes)
        target, ref_unact = sel["target"], sel["ref_unact"]
        if dn_class is not None:
            target, ref_unact = torch.cat([dn_class, target], 1), torch.cat([dn_box, ref_unact], 1)
        out_boxes, out_logits, layer_outputs, sampling = self.run_decoder(target, ref_unact.detach(), memory, shapes,
                                                                          starts, attn_mask)
        if dn_meta is not None:
            dn_boxes, out_boxes = torch.split(out_boxes, dn_meta["dn_num_split"], dim=2)
            dn_logits, out_logits = torch.split(out_logits, dn_meta["dn_num_split"], dim=2)
        out: dict[str, Any] = {"pred_logits": out_logits[-1], "pred_boxes": out_boxes[-1]}
        if self.training and self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": c, "pred_boxes": b} for c, b in zip(out_logits[:-1], out_boxes[:-1])]
            out["aux_outputs"].append({"pred_logits": sel["enc_topk_logits"], "pred_boxes": sel["enc_topk_bboxes"]})
            if dn_meta is not None:
                out["dn_aux_outputs"] = [{"pred_logits": c, "pred_boxes": b} for c, b in zip(dn_logits, dn_boxes)]
                out["dn_meta"] = dn_meta
        inter = dict(sel, memory=memory, spatial_shapes=shapes, level_start_index=starts,
                     decoder_layer_outputs=layer_outputs, decoder_sampling=sampling,
                     dn=(dn_class, dn_box, attn_mask, dn_meta))
        return out, inter

    def forward(self, feats: Sequence[Tensor], targets: Optional[Sequence[dict]] = None) -> dict[str, Any]:
        """``L`` maps ``[B, d, H_l, W_l]`` -> ``pred_logits [B, Q, C]``, ``pred_boxes [B, Q, 4]`` and, in
        training (``aux_loss``), ``aux_outputs`` (decoder layers, then the encoder top-k) and, with
        targets and denoising, ``dn_aux_outputs`` (every layer's denoising queries) and ``dn_meta``."""
        return self.forward_with_intermediates(feats, targets)[0]
