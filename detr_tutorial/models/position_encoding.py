"""Positional encodings for the 2-D feature map.

Attention is permutation invariant: without positions, the encoder would see the ``h*w`` feature
cells as a bag. DETR adds a 2-D encoding to queries and keys in *every* attention layer: half of
the channels encode the row (y), half the column (x), so the layout survives flattening.

- :class:`PositionEmbeddingSine` — fixed sines and cosines of the normalized position, computed
  from the padding mask so that every image's valid area spans the same ``[0, 2π]`` range.
- :class:`PositionEmbeddingLearned` — a learned table for rows and one for columns (50 entries
  each), concatenated. Not a 1-D table over flattened positions: that would tie the code of a cell
  to its index ``y*w + x``, which changes meaning whenever the width changes.
- :func:`sine_embed_points` — the sine code of arbitrary points ``(x, y)`` in ``[0, 1]``, laid out
  as :class:`PositionEmbeddingSine`'s (Conditional DETR's spatial queries compare the two).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["PositionEmbeddingSine", "PositionEmbeddingLearned", "build_position_encoding", "sine_embed_points"]


class PositionEmbeddingSine(nn.Module):
    """2-D sine encoding, as in "Attention is all you need" but for rows and columns.

    For a cell at (normalized) row ``y`` and column ``x``, channel pair ``(2i, 2i+1)`` of the
    y-half holds ``sin(y / T^(2i/d)), cos(y / T^(2i/d))`` with ``d = num_pos_feats`` and
    ``T = temperature``; the x-half likewise. Output: ``[B, 2 * num_pos_feats, h, w]``, y first.

    Positions are counted over *valid* cells only (a cumulative sum of the inverted mask), so
    padding does not shift the code of real cells; with ``normalize`` each image's valid extent is
    rescaled to ``(0, scale]``.
    """

    def __init__(
        self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True, scale: float = 2 * math.pi
    ) -> None:
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(f"num_pos_feats must be even (sin/cos pairs), got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, mask: Tensor, extent: Optional[Tensor] = None) -> Tensor:
        """``mask [B, h, w]`` (True = padding) -> ``pos [B, 2*num_pos_feats, h, w]``.

        ``extent [B, 2]``: each image's valid height and width in cells, fractional (e.g. 7.5
        for 120 px at stride 16). With it, ``normalize`` divides by the image's true extent
        instead of the count of valid cells, so a cell's code is a fixed fraction of the image
        whether or not the image's side is a multiple of the stride. Without it (the paper's
        and the official code's encoding) the count is used.
        """
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # [B, h, w]: 1..h_valid down each column
        x_embed = not_mask.cumsum(2, dtype=torch.float32)  # [B, h, w]: 1..w_valid along each row
        if self.normalize:
            eps = 1e-6
            if extent is None:
                y_total, x_total = y_embed[:, -1:, :], x_embed[:, :, -1:]  # [B, 1, w], [B, h, 1]
            else:
                y_total, x_total = extent[:, 0, None, None].float(), extent[:, 1, None, None].float()  # [B, 1, 1]
            y_embed = y_embed / (y_total + eps) * self.scale
            x_embed = x_embed / (x_total + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t  # [B, h, w, d]
        pos_y = y_embed[:, :, :, None] / dim_t
        # interleave: sin on even channels, cos on odd ones
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # [B, 2d, h, w]


class PositionEmbeddingLearned(nn.Module):
    """Learned 2-D encoding: a row table and a column table, concatenated (``[col, row]``).

    Supports feature maps up to ``max_size`` cells per side (50 in the official code, enough for
    1333-pixel images at stride 32).
    """

    def __init__(self, num_pos_feats: int = 128, max_size: int = 50) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        """``mask [B, h, w]`` -> ``pos [B, 2*num_pos_feats, h, w]`` (the mask only gives the size)."""
        b, h, w = mask.shape
        max_size = self.row_embed.num_embeddings
        if h > max_size or w > max_size:
            raise ValueError(f"feature map {h}x{w} exceeds the learned table size {max_size}")
        x_emb = self.col_embed(torch.arange(w, device=mask.device))  # [w, d]
        y_emb = self.row_embed(torch.arange(h, device=mask.device))  # [h, d]
        pos = torch.cat([x_emb[None, :, :].expand(h, w, -1), y_emb[:, None, :].expand(h, w, -1)], dim=-1)
        return pos.permute(2, 0, 1)[None].expand(b, -1, -1, -1)  # [B, 2d, h, w]


def sine_embed_points(points: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine code of points ``[..., 2]`` given as ``(x, y)`` in ``[0, 1]`` -> ``[..., dim]``.

    The layout of :class:`PositionEmbeddingSine` (y half first, sin/cos interleaved, coordinates
    scaled to ``[0, 2π]``), so a point's code lines up with the codes of the feature cells around it.
    """
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=points.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)
    scaled = points.float() * (2 * math.pi)
    pos_x = scaled[..., 0, None] / dim_t
    pos_y = scaled[..., 1, None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(-2)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(-2)
    return torch.cat((pos_y, pos_x), dim=-1).to(points.dtype)


def build_position_encoding(kind: str, hidden_dim: int) -> nn.Module:
    """``"sine"`` or ``"learned"``, each producing ``hidden_dim`` channels."""
    if kind == "sine":
        return PositionEmbeddingSine(hidden_dim // 2, normalize=True)
    if kind == "learned":
        return PositionEmbeddingLearned(hidden_dim // 2)
    raise ValueError(f"position_embedding must be 'sine' or 'learned', got {kind!r}")
