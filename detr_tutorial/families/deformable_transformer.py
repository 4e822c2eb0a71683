"""Deformable DETR's transformer: multi-scale deformable encoder and decoder (Zhu et al., 2021).

The shapes and names are the official fundamentalvision/Deformable-DETR ones, so its checkpoints
load by renaming the trunk only and every intermediate tensor compares one to one:

- the ``L`` levels are flattened finest first into ``S = sum H_l W_l`` rows (``spatial_shapes
  [L, 2]`` as ``(H, W)``, ``level_start_index [L]``), each level's positions get its
  ``level_embed`` row added;
- encoder layer: :class:`~detr_tutorial.models.ms_deform_attn.MSDeformAttn` self-attention around
  each cell's own centre on every level (``self_attn``), then the FFN; post-norm;
- decoder layer: self-attention of the queries (``self_attn``, ``nn.MultiheadAttention``'s
  parameters), then deformable cross-attention around each query's reference (``cross_attn``),
  then the FFN; post-norm; no final LayerNorm (unlike DETR's decoder);
- references live in ``[0, 1]`` of each image's valid area; ``valid_ratios [B, L, 2]`` (``w, h``
  fractions of the padded map that hold the image) rescale them to each level's padded map.

Box refinement and the two-stage variant need the model's heads inside the decoder: the model
hands its ``bbox_embed`` (and ``class_embed``) lists to the decoder, which therefore holds them as
submodules too (the official state dict lists them twice, ``transformer.decoder.bbox_embed.*``).
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.ms_deform_attn import MSDeformAttn, Shapes, _shape_list, level_start_index, level_starts
from ..models.transformer import MultiheadAttention

__all__ = [
    "inverse_sigmoid",
    "DeformableEncoderLayer",
    "DeformableEncoder",
    "DeformableDecoderLayer",
    "DeformableDecoder",
    "DeformableTransformer",
    "valid_ratio",
]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with both clamped to ``>= eps`` (the official ``inverse_sigmoid``)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def valid_ratio(mask: Tensor) -> Tensor:
    """``mask [B, H, W]`` (True = padding) -> ``[B, 2]``: the fraction of the width and of the height
    that hold the image, as ``(w_ratio, h_ratio)``."""
    _, h, w = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)


class _FFN(nn.Module):
    """``linear1 -> relu -> linear2`` with a residual and a post-norm (the layers' last step)."""

    def _ffn_block(self, x: Tensor, dropout_in: nn.Module, dropout_out: nn.Module, norm: nn.Module) -> Tensor:
        return norm(x + dropout_out(self.linear2(dropout_in(F.relu(self.linear1(x))))))


class DeformableEncoderLayer(_FFN):
    """Deformable self-attention over all levels, then the FFN (``d_ffn`` wide); post-norm."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Shapes,
        start_index: Union[Tensor, Sequence[int]], padding_mask: Optional[Tensor],
    ) -> Tensor:
        """``src, pos [B, S, d]``, ``reference_points [B, S, L, 2]`` -> ``[B, S, d]``."""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, start_index, padding_mask)
        src = self.norm1(src + self.dropout1(attn))
        return self._ffn_block(src, self.dropout2, self.dropout3, self.norm2)


class DeformableEncoder(nn.Module):
    """``num_layers`` copies of a :class:`DeformableEncoderLayer`; every cell samples around its centre."""

    def __init__(self, layer: DeformableEncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.num_layers = num_layers

    @staticmethod
    def reference_points(spatial_shapes: Shapes, valid_ratios: Tensor) -> Tensor:
        """Each cell's centre, as a fraction of its image's valid area, seen on every level:
        ``[B, S, L, 2]`` as ``(x, y)`` in each level's padded map (the official formula)."""
        refs = []
        for lvl, (h, w) in enumerate(_shape_list(spatial_shapes)):
            ref_y, ref_x = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=valid_ratios.device) + 0.5,
                torch.arange(w, dtype=torch.float32, device=valid_ratios.device) + 0.5,
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)  # [B, h*w]
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            refs.append(torch.stack((ref_x, ref_y), -1))
        return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]  # [B, S, 1, 2] * [B, 1, L, 2]

    def forward(
        self, src: Tensor, spatial_shapes: Shapes, start_index: Union[Tensor, Sequence[int]], valid_ratios: Tensor,
        pos: Tensor, padding_mask: Optional[Tensor],
    ) -> Tensor:
        """``src, pos [B, S, d]``, ``valid_ratios [B, L, 2]``, ``padding_mask [B, S]`` -> memory ``[B, S, d]``."""
        reference_points = self.reference_points(spatial_shapes, valid_ratios)
        out = src
        for layer in self.layers:
            out = layer(out, pos, reference_points, spatial_shapes, start_index, padding_mask)
        return out


class DeformableDecoderLayer(_FFN):
    """Query self-attention, deformable cross-attention to the memory, the FFN; post-norm.

    Official names: ``self_attn``/``norm2`` (self), ``cross_attn``/``norm1`` (cross), ``norm3`` (FFN).
    """

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
        spatial_shapes: Shapes, start_index: Union[Tensor, Sequence[int]], padding_mask: Optional[Tensor],
    ) -> Tensor:
        """``tgt, query_pos [B, Q, d]``, ``reference_points [B, Q, L, 2|4]``, ``memory [B, S, d]`` -> ``[B, Q, d]``."""
        q = k = tgt + query_pos
        tgt = self.norm2(tgt + self.dropout2(self.self_attn(q, k, tgt)[0]))
        attn = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, start_index, padding_mask)
        tgt = self.norm1(tgt + self.dropout1(attn))
        return self._ffn_block(tgt, self.dropout3, self.dropout4, self.norm3)


class DeformableDecoder(nn.Module):
    """The decoder stack; with the model's ``bbox_embed`` set, each layer refines the references.

    ``bbox_embed`` / ``class_embed`` are ``None`` or the model's head lists (set by the model).
    """

    def __init__(self, layer: DeformableDecoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.bbox_embed: Optional[nn.ModuleList] = None
        self.class_embed: Optional[nn.ModuleList] = None

    def forward(
        self, tgt: Tensor, reference_points: Tensor, memory: Tensor, spatial_shapes: Shapes,
        start_index: Union[Tensor, Sequence[int]], valid_ratios: Tensor, query_pos: Tensor, padding_mask: Optional[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """``reference_points [B, Q, 2|4]`` in the images' valid areas -> ``hs [L_dec, B, Q, d]`` and
        the reference after each layer ``[L_dec, B, Q, 2|4]`` (unchanged without refinement)."""
        out = tgt
        hs, references = [], []
        for lid, layer in enumerate(self.layers):
            ratios = valid_ratios if reference_points.shape[-1] == 2 else torch.cat([valid_ratios, valid_ratios], -1)
            ref_input = reference_points[:, :, None] * ratios[:, None]  # [B, Q, L, 2|4] in each padded map
            out = layer(out, query_pos, ref_input, memory, spatial_shapes, start_index, padding_mask)
            if self.bbox_embed is not None:  # iterative box refinement: offsets in logit space
                delta = self.bbox_embed[lid](out)
                if reference_points.shape[-1] == 4:
                    moved = delta + inverse_sigmoid(reference_points)
                else:
                    moved = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1)
                reference_points = moved.sigmoid().detach()
            hs.append(out)
            references.append(reference_points)
        return torch.stack(hs), torch.stack(references)


class DeformableTransformer(nn.Module):
    """Encoder, decoder, level embeddings and the query references (see the module docstring).

    Args:
        two_stage: the queries come from the encoder's best proposals (``enc_output``,
            ``pos_trans``); otherwise each learned query predicts its reference point
            (``reference_points``, a linear layer of the query's positional half).
        two_stage_num_proposals: how many proposals become queries (the model's ``num_queries``).
    """

    def __init__(
        self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
        dim_feedforward: int = 1024, dropout: float = 0.1, num_feature_levels: int = 4, dec_n_points: int = 4,
        enc_n_points: int = 4, two_stage: bool = False, two_stage_num_proposals: int = 300,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        enc = DeformableEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points)
        self.encoder = DeformableEncoder(enc, num_encoder_layers)
        dec = DeformableDecoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, dec_n_points)
        self.decoder = DeformableDecoder(dec, num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """The official initialization: xavier for every matrix, then MSDeformAttn's own, a zero bias
        for the reference points, N(0, 1) level embeddings."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    def flatten(
        self, srcs: list[Tensor], masks: list[Tensor], pos: list[Tensor], extents: Optional[list[Tensor]] = None
    ) -> dict[str, Tensor]:
        """Levels ``[B, d, H_l, W_l]`` (masks ``[B, H_l, W_l]``) -> the flattened encoder input:
        ``src, pos [B, S, d]`` (``level_embed`` added to the positions), ``mask [B, S]``,
        ``spatial_shapes [L, 2]``, ``level_start_index [L]``, ``valid_ratios [B, L, 2]``.

        ``extents`` (per level ``[B, 2]``, ``(h, w)`` in cells, fractional): the valid ratios are
        ``extent / (H_l, W_l)`` instead of the valid cells' fraction (``exact_extent`` models)."""
        # scalar_tensor of each side: the same [L, 2] tensor as torch.as_tensor(sizes), without
        # fixing the sizes to the example's under torch.export
        shapes = torch.stack([torch.stack([torch.scalar_tensor(n, dtype=torch.long, device=srcs[0].device)
                                           for n in s.shape[-2:]]) for s in srcs])
        lvl_pos = [p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(pos)]
        if extents is None:
            ratios = torch.stack([valid_ratio(m) for m in masks], 1)  # [B, L, 2]
        else:  # (h, w) cells / (H_l, W_l) -> (w, h) ratios
            ratios = torch.stack([e.flip(-1) / e.new_tensor(s.shape[-2:][::-1]) for e, s in zip(extents, srcs)], 1)
        return {
            "src": torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1),  # [B, S, d]
            "mask": torch.cat([m.flatten(1) for m in masks], 1),  # [B, S]
            "pos": torch.cat(lvl_pos, 1),  # [B, S, d]
            "spatial_shapes": shapes,
            "level_start_index": level_start_index(shapes),
            "valid_ratios": ratios,
        }

    def forward(
        self, srcs: list[Tensor], masks: list[Tensor], pos: list[Tensor], query_embed: Optional[Tensor] = None,
        extents: Optional[list[Tensor]] = None,
    ) -> dict[str, Tensor]:
        """Encode the levels, choose the queries and their references, decode.

        ``query_embed [Q, 2d]`` (not two-stage): the positional half first, then the content half.
        Returns ``memory [B, S, d]``, ``tgt``/``query_pos [B, Q, d]`` (the decoder's input),
        ``init_reference [B, Q, 2|4]``, ``hs [L_dec, B, Q, d]``, ``inter_references [L_dec, B, Q, 2|4]``
        and, two-stage, ``enc_outputs_class [B, S, C]``, ``enc_outputs_coord_unact [B, S, 4]``.
        """
        if not self.two_stage and query_embed is None:
            raise ValueError("a one-stage deformable transformer needs query_embed [Q, 2 * d_model]")
        f = self.flatten(srcs, masks, pos, extents)
        ratios = f["valid_ratios"]
        # the level sizes as Python (or, under torch.export, symbolic) ints, not read back from a
        # tensor: the same numbers, and a graph that stays dynamic in the image size
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        starts = level_starts(shapes)
        memory = self.encoder(f["src"], shapes, starts, ratios, f["pos"], f["mask"])
        out: dict[str, Tensor] = {"memory": memory}
        if self.two_stage:
            out.update(self.two_stage_queries(memory, f["mask"], shapes, extents))
        else:
            query_pos, tgt = torch.split(query_embed, self.d_model, dim=1)
            b = memory.shape[0]
            out["query_pos"], out["tgt"] = query_pos[None].expand(b, -1, -1), tgt[None].expand(b, -1, -1)
            out["init_reference"] = self.reference_points(out["query_pos"]).sigmoid()  # [B, Q, 2]
        out["hs"], out["inter_references"] = self.decoder(
            out["tgt"], out["init_reference"], memory, shapes, starts, ratios, out["query_pos"], f["mask"]
        )
        out["spatial_shapes"], out["valid_ratios"] = f["spatial_shapes"], ratios
        return out

    # -- two-stage ------------------------------------------------------------------------------
    def encoder_proposals(
        self, memory: Tensor, padding_mask: Tensor, spatial_shapes: Shapes, extents: Optional[list[Tensor]] = None
    ) -> tuple[Tensor, Tensor]:
        """One proposal per memory cell: a box around the cell's centre, ``0.05 * 2^l`` wide on level ``l``.

        Returns ``output_memory [B, S, d]`` (``enc_output_norm(enc_output(memory))``, padded and
        invalid cells zeroed first) and ``output_proposals [B, S, 4]`` in logit space, ``+inf`` at
        padded cells and at proposals not inside ``(0.01, 0.99)`` (the official rule).
        """
        b = memory.shape[0]
        proposals, start = [], 0
        for lvl, (h, w) in enumerate(_shape_list(spatial_shapes)):
            mask_l = padding_mask[:, start : start + h * w].view(b, h, w)
            valid_h, valid_w = torch.sum(~mask_l[:, :, 0], 1), torch.sum(~mask_l[:, 0, :], 1)
            grid_y, grid_x = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=memory.device),
                torch.arange(w, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            grid = torch.stack([grid_x, grid_y], -1)  # [h, w, 2] as (x, y)
            if extents is None:
                scale = torch.stack([valid_w, valid_h], 1).view(b, 1, 1, 2)
            else:  # the image's true width and height in cells (exact_extent)
                scale = extents[lvl].flip(-1).view(b, 1, 1, 2)
            grid = (grid[None].expand(b, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * 0.05 * (2.0**lvl)
            proposals.append(torch.cat((grid, wh), -1).view(b, -1, 4))
            start += h * w
        props = torch.cat(proposals, 1)  # [B, S, 4]
        valid = ((props > 0.01) & (props < 0.99)).all(-1, keepdim=True)  # [B, S, 1]
        props = torch.log(props / (1 - props))
        props = props.masked_fill(padding_mask[..., None], float("inf")).masked_fill(~valid, float("inf"))
        cells = memory.masked_fill(padding_mask[..., None], 0.0).masked_fill(~valid, 0.0)
        return self.enc_output_norm(self.enc_output(cells)), props

    def proposal_pos_embed(self, proposals: Tensor) -> Tensor:
        """Sine code of proposal boxes: ``[B, Q, 4]`` logits -> ``[B, Q, 4 * d/2]`` (sin/cos interleaved,
        per coordinate ``cx, cy, w, h``). The official code fixes ``d/2 = 128`` (it runs at d = 256
        only); ``d_model // 2`` is the same there and works at every width."""
        num_pos_feats = self.d_model // 2
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
        dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
        pos = proposals.sigmoid()[:, :, :, None] * (2 * math.pi) / dim_t  # [B, Q, 4, d/2]
        return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4).flatten(2)

    def two_stage_queries(
        self, memory: Tensor, padding_mask: Tensor, spatial_shapes: Shapes, extents: Optional[list[Tensor]] = None
    ) -> dict[str, Tensor]:
        """Score every cell's proposal with the extra heads, keep the ``two_stage_num_proposals`` best
        (by the first class's logit, as the official code); their boxes are the references and
        their sine codes (``pos_trans``) the queries."""
        output_memory, output_proposals = self.encoder_proposals(memory, padding_mask, spatial_shapes, extents)
        n = self.decoder.num_layers
        enc_class = self.decoder.class_embed[n](output_memory)  # [B, S, C]
        enc_coord_unact = self.decoder.bbox_embed[n](output_memory) + output_proposals  # [B, S, 4]
        if enc_class.shape[1] < self.two_stage_num_proposals:
            raise ValueError(
                f"two-stage Deformable DETR keeps {self.two_stage_num_proposals} of the {enc_class.shape[1]} "
                "feature cells of this batch: use larger images or fewer queries"
            )
        top = torch.topk(enc_class[..., 0], self.two_stage_num_proposals, dim=1)[1]  # [B, Q]
        coords = torch.gather(enc_coord_unact, 1, top[..., None].repeat(1, 1, 4)).detach()  # [B, Q, 4]
        pos_trans = self.pos_trans_norm(self.pos_trans(self.proposal_pos_embed(coords)))  # [B, Q, 2d]
        query_pos, tgt = torch.split(pos_trans, self.d_model, dim=2)
        return {
            "enc_outputs_class": enc_class, "enc_outputs_coord_unact": enc_coord_unact,
            "query_pos": query_pos, "tgt": tgt, "init_reference": coords.sigmoid(),
        }
