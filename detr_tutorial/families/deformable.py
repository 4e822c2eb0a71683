"""The deformable family: Deformable DETR (Zhu et al., 2021), equal to the official code.

DETR's dense attention costs ``(hw)^2``, which keeps it on one stride-32 map and makes it slow to
train. Deformable DETR replaces every attention over the image by *deformable* attention (each
query samples a few learned points around a reference, :mod:`detr_tutorial.models.ms_deform_attn`),
which is cheap enough to run on several maps at once:

1. ``multi_scale``: the trunk's stride 8/16/32 maps (ResNet ``layer2/3/4``; the ``smallcnn``
   trunk's stages), each projected to ``d`` channels by ``input_proj[l]`` (1x1 conv + GroupNorm),
   plus extra levels made by 3x3 stride-2 convolutions of the last map (stride 64), their masks
   and Deformable DETR's sine positions (:class:`DeformableSinePosition`);
2. the deformable encoder and decoder (:mod:`detr_tutorial.families.deformable_transformer`);
   the decoder's queries start from learned reference points, or (``two_stage``) from the
   encoder's best-scoring cell proposals;
3. the heads, per decoder layer: sigmoid class logits ``[B, Q, C]`` (no "no object" column: the
   focal loss scores each class on its own) and boxes as offsets from the layer's reference in
   logit space; ``with_box_refine`` gives every layer its own heads and moves the reference to
   the previous layer's box.

Outputs: ``pred_logits [B, Q, C]``, ``pred_boxes [B, Q, 4]``, ``aux_outputs`` and, two-stage,
``enc_outputs`` (every cell's proposal, scored). The loss and the post-processing are in
:mod:`detr_tutorial.families.deformable_loss`. The state dict is the official one but for the trunk
prefix (``backbone.0.body.`` there, ``backbone.body.`` here: ``dt.load_official_state_dict``
renames it).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import DETRConfig
from ..models.detr import DETR, MLP, build_trunk, finish_model, full_precision
from ..models.position_encoding import PositionEmbeddingSine
from ..nested import NestedTensor, to_nested
from .deformable_transformer import DeformableTransformer, inverse_sigmoid

__all__ = ["DeformableSinePosition", "DeformableDETR", "build_model"]


class DeformableSinePosition(PositionEmbeddingSine):
    """Deformable DETR's sine encoding: DETR's, but each cell is coded at its *centre*.

    The normalized coordinate is ``(cumsum - 0.5) / (cumsum at the last row/column + eps) * 2 pi``
    (DETR's is ``cumsum / (last + eps) * 2 pi``, the cell's far edge). Output ``[B, 2 * F, h, w]``,
    channels ``[y (F), x (F)]``, sin/cos interleaved, as :class:`PositionEmbeddingSine`.
    """

    def forward(self, mask: Tensor, extent: Optional[Tensor] = None) -> Tensor:
        """``mask [B, h, w]`` (True = padding) -> ``pos [B, 2 * num_pos_feats, h, w]``.

        ``extent [B, 2]`` (``exact_extent`` models): each image's height and width in cells,
        fractional; ``normalize`` then divides by it instead of the count of valid cells, so a cell
        centre is coded at its true fraction of the image."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # [B, h, w]
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            if extent is None:
                y_total, x_total = y_embed[:, -1:, :], x_embed[:, :, -1:]
            else:
                y_total, x_total = extent[:, 0, None, None].float(), extent[:, 1, None, None].float()  # [B, 1, 1]
            y_embed = (y_embed - 0.5) / (y_total + eps) * self.scale
            x_embed = (x_embed - 0.5) / (x_total + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t  # [B, h, w, F]
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # [B, 2F, h, w]


def _projection(in_channels: int, d: int, extra: bool) -> nn.Sequential:
    """``input_proj[l]``: a 1x1 conv (trunk levels) or a 3x3 stride-2 conv (extra levels), then
    ``GroupNorm(32, d)``; xavier weights, zero bias (official)."""
    conv = nn.Conv2d(in_channels, d, kernel_size=3, stride=2, padding=1) if extra else nn.Conv2d(in_channels, d, 1)
    nn.init.xavier_uniform_(conv.weight, gain=1)
    nn.init.constant_(conv.bias, 0)
    return nn.Sequential(conv, nn.GroupNorm(32, d))


class DeformableDETR(DETR):
    """Deformable DETR (see the module docstring), a :class:`DETR` with the official layout.

    Args:
        backbone: a trunk with ``stages(images, mask)``, ``stage_channels`` (``Backbone``,
            ``SmallCNN``); with one level only its last stage is used.
        position_embedding: a :class:`DeformableSinePosition` of ``d / 2`` features per axis.
        transformer: a :class:`DeformableTransformer` (its ``two_stage`` decides the queries').
        num_classes: real classes (the class heads have exactly that many sigmoid outputs).
        num_queries: queries (two-stage: proposals kept).
        num_feature_levels: ``L``: the trunk's levels plus ``L - len(stages)`` extra ones.
        aux_loss: also return every earlier decoder layer's predictions.
        with_box_refine: iterative bounding-box refinement (each decoder layer has its own heads).
        exact_extent: each level's valid extent is the image's size divided by the level's stride
            (fractional), not the count of cells the image touches (the official rule). With the
            official rule a 146-px image at stride 8 fills 19 cells, so every position, reference
            point and proposal is stretched by 152/146 (4 %); a model trained at multiples of 8
            lost most of its mAP there (0.19 against 0.68 at 152 px, benchmarks/RESULTS.md).
    """

    def __init__(
        self, backbone: nn.Module, position_embedding: nn.Module, transformer: DeformableTransformer,
        num_classes: int, num_queries: int, num_feature_levels: int = 4, aux_loss: bool = True,
        with_box_refine: bool = False, exact_extent: bool = False,
    ) -> None:
        super().__init__(backbone, position_embedding, transformer, num_classes, num_queries, aux_loss)
        d = transformer.d_model
        self.two_stage = transformer.two_stage
        self.with_box_refine = with_box_refine
        self.exact_extent = exact_extent
        self.num_feature_levels = num_feature_levels
        channels = list(backbone.stage_channels) if num_feature_levels > 1 else [backbone.stage_channels[-1]]
        if num_feature_levels < len(channels):
            raise ValueError(
                f"num_feature_levels={num_feature_levels} is fewer than the trunk's {len(channels)} levels "
                f"(strides {backbone.stage_strides}): use 1 (the last map only) or at least {len(channels)}"
            )
        self.trunk_levels = len(channels)
        strides = list(backbone.stage_strides)[-self.trunk_levels :]
        #: each level's stride in pixels: the trunk's, then x2 per extra level
        self.level_strides = strides + [strides[-1] * 2 ** (i + 1) for i in range(num_feature_levels - len(strides))]
        proj = [_projection(c, d, extra=False) for c in channels]
        for i in range(num_feature_levels - len(channels)):
            proj.append(_projection(channels[-1] if i == 0 else d, d, extra=True))
        self.input_proj = nn.ModuleList(proj)
        self.query_embed = None if self.two_stage else nn.Embedding(num_queries, 2 * d)
        self._make_heads(num_classes)

    def _make_heads(self, num_classes: int) -> None:
        """``class_embed``/``bbox_embed`` lists, one entry per decoder layer (+1 for the two-stage
        proposals): clones with box refinement, one shared module otherwise (official init)."""
        d = self.transformer.d_model
        class_embed = nn.Linear(d, num_classes)
        class_embed.bias.data = torch.ones(num_classes) * -math.log((1 - 0.01) / 0.01)  # prior 0.01
        bbox_embed = MLP(d, d, 4, 3)
        nn.init.constant_(bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0)
        decoder = self.transformer.decoder
        num_pred = decoder.num_layers + (1 if self.two_stage else 0)
        if self.with_box_refine:
            self.class_embed = nn.ModuleList([copy.deepcopy(class_embed) for _ in range(num_pred)])
            self.bbox_embed = nn.ModuleList([copy.deepcopy(bbox_embed) for _ in range(num_pred)])
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias.data[2:], -2.0)
            decoder.bbox_embed = self.bbox_embed
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias.data[2:], -2.0)
            self.class_embed = nn.ModuleList([class_embed for _ in range(num_pred)])
            self.bbox_embed = nn.ModuleList([bbox_embed for _ in range(num_pred)])
            decoder.bbox_embed = None
        if self.two_stage:
            decoder.class_embed = self.class_embed
            for box in self.bbox_embed:
                nn.init.constant_(box.layers[-1].bias.data[2:], 0.0)

    # -- the steps --------------------------------------------------------------------------------
    def multi_scale(self, nested: NestedTensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The ``L`` levels: ``srcs`` ``[B, d, H_l, W_l]`` (``input_proj`` outputs), ``masks``
        ``[B, H_l, W_l]`` and positions ``[B, d, H_l, W_l]``, finest first."""
        stages = self.backbone.stages(nested.tensors, nested.mask)[-self.trunk_levels :]
        srcs = [proj(f) for proj, (f, _) in zip(self.input_proj, stages)]
        masks = [m for _, m in stages]
        for lvl in range(self.trunk_levels, self.num_feature_levels):
            src = self.input_proj[lvl](stages[-1][0] if lvl == self.trunk_levels else srcs[-1])
            srcs.append(src)
            masks.append(F.interpolate(nested.mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0])
        extents = self.level_extents(nested)
        pos = [self.position_embedding(m, e).to(s.dtype)
               for s, m, e in zip(srcs, masks, extents or [None] * len(srcs))]
        return srcs, masks, pos

    def level_extents(self, nested: NestedTensor) -> Optional[list[Tensor]]:
        """``exact_extent`` models: per level, each image's ``(height, width)`` in cells ``[B, 2]``,
        its valid pixels divided by the level's stride (fractional); ``None`` otherwise (the
        official rule: the count of valid cells)."""
        if not self.exact_extent:
            return None
        valid = torch.stack([(~nested.mask[:, :, 0]).sum(1), (~nested.mask[:, 0, :]).sum(1)], 1).float()  # [B, 2]
        return [valid / stride for stride in self.level_strides]

    def heads(self, hs: Tensor, init_reference: Tensor, inter_references: Tensor) -> tuple[Tensor, Tensor]:
        """Each decoder layer's class logits ``[L, B, Q, C]`` and boxes ``[L, B, Q, 4]``: the box head's
        output added to the inverse sigmoid of the reference the layer started from."""
        classes, coords = [], []
        with full_precision(hs):  # float32 heads, as DETR's (boxes are sub-pixel coordinates)
            hs = hs.to(self.class_embed[0].weight.dtype)
            for lvl in range(hs.shape[0]):
                reference = inverse_sigmoid(init_reference if lvl == 0 else inter_references[lvl - 1])
                classes.append(self.class_embed[lvl](hs[lvl]))
                delta = self.bbox_embed[lvl](hs[lvl])
                if reference.shape[-1] == 4:
                    coords.append((delta + reference).sigmoid())
                else:
                    coords.append(torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1).sigmoid())
        return torch.stack(classes), torch.stack(coords)

    def forward_with_intermediates(
        self, samples: Union[NestedTensor, Tensor, Sequence[Tensor]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """:meth:`forward`'s outputs and what the model computed on the way: ``srcs``, ``masks``,
        ``pos`` (lists per level) and the transformer's tensors (``memory``, ``tgt``,
        ``query_pos``, ``init_reference``, ``hs``, ``inter_references``, ``valid_ratios``, ...)."""
        nested = to_nested(samples)
        srcs, masks, pos = self.multi_scale(nested)
        query = None if self.query_embed is None else self.query_embed.weight
        t = self.transformer(srcs, masks, pos, query, extents=self.level_extents(nested))
        out = self.set_outputs(*self.heads(t["hs"], t["init_reference"], t["inter_references"]))
        if self.two_stage:
            out["enc_outputs"] = {
                "pred_logits": t["enc_outputs_class"], "pred_boxes": t["enc_outputs_coord_unact"].sigmoid()
            }
        return out, dict(t, srcs=srcs, masks=masks, pos=pos)

    def forward(  # type: ignore[override]
        self, samples: Union[NestedTensor, Tensor, Sequence[Tensor]], return_attention: bool = False
    ) -> dict[str, Any]:
        """``pred_logits [B, Q, C]`` (sigmoid logits), ``pred_boxes [B, Q, 4]``, ``aux_outputs`` and,
        two-stage, ``enc_outputs`` (``[B, S, C]``, ``[B, S, 4]``: every cell's proposal)."""
        if return_attention:
            raise ValueError(
                "Deformable DETR has no attention maps over the image to return: each query samples a few "
                "points (MSDeformAttn.sampling gives their locations and weights)"
            )
        return self.forward_with_intermediates(samples)[0]

    # -- DETR's head management, for lists of heads without a "no object" output --------------------
    def class_heads(self) -> list[nn.Linear]:
        unique: list[nn.Linear] = []
        for head in self.class_embed:
            if all(head is not u for u in unique):
                unique.append(head)
        return unique

    def _replace_class_heads(self, num_classes: int) -> None:
        old = self.class_embed[0].weight
        fresh = nn.Linear(old.shape[1], num_classes).to(old.device, old.dtype)
        fresh.bias.data = torch.full_like(fresh.bias, -math.log((1 - 0.01) / 0.01))
        if self.with_box_refine:
            self.class_embed = nn.ModuleList([copy.deepcopy(fresh) for _ in self.class_embed])
        else:
            self.class_embed = nn.ModuleList([fresh for _ in self.class_embed])
        if self.two_stage:
            self.transformer.decoder.class_embed = self.class_embed

    def __prepare_scriptable__(self) -> nn.Module:
        raise ValueError("the deformable family cannot be compiled with torch.jit.script (use torch.export)")


def build_model(cfg: DETRConfig) -> DeformableDETR:
    """The deformable family's model for a config (what the official ``build()`` makes)."""
    backbone = build_trunk(cfg)
    transformer = DeformableTransformer(
        d_model=cfg.hidden_dim,
        nhead=cfg.nheads,
        num_encoder_layers=cfg.enc_layers,
        num_decoder_layers=cfg.dec_layers,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        num_feature_levels=cfg.num_feature_levels,
        dec_n_points=cfg.dec_n_points,
        enc_n_points=cfg.enc_n_points,
        two_stage=cfg.two_stage,
        two_stage_num_proposals=cfg.num_queries,
    )
    position_embedding = DeformableSinePosition(cfg.hidden_dim // 2, normalize=True)
    model = DeformableDETR(
        backbone, position_embedding, transformer, cfg.num_classes, cfg.num_queries,
        num_feature_levels=cfg.num_feature_levels, aux_loss=cfg.aux_loss, with_box_refine=cfg.with_box_refine,
        exact_extent=cfg.exact_extent,
    )
    return finish_model(model, cfg)
