"""DETR's transformer: an encoder over the flattened feature map, a decoder over object queries.

Differences from the transformer of "Attention is all you need", all taken from the paper:

- positions are *added to queries and keys in every layer* (not once at the input), and never to
  values: the encoder adds the 2-D feature encoding, the decoder adds the learned object queries;
- the decoder input starts as zeros; the object queries enter only as positional codes;
- the decoder returns every layer's output, each through the same final LayerNorm, so that the
  heads can be applied after every layer (auxiliary losses);
- padding cells of the feature map are removed from every attention by a key-padding mask.

Tensors are batch-first here (``[B, L, d]``); the official code is sequence-first. The attention
parameters keep ``torch.nn.MultiheadAttention``'s layout (``in_proj_weight``, ``out_proj``) so
that official checkpoints load by renaming keys only. The variants of later papers (Conditional
DETR's decoder, ...) live in :mod:`detr_tutorial.families` and build on these classes.
"""
from __future__ import annotations

import copy
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MultiheadAttention",
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "TransformerDecoderLayer",
    "TransformerDecoder",
    "Transformer",
]


class MultiheadAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameters, batch-first.

    The fast path is :func:`torch.nn.functional.scaled_dot_product_attention`; with
    ``need_weights=True`` the weights are computed explicitly and returned per head
    (``[B, nheads, L_q, L_k]``, rows summing to one, padding keys at exactly zero).
    :meth:`project` and :meth:`attend` are the two halves of :meth:`forward`, for variants that
    change the projected queries and keys in between (Conditional DETR appends a spatial part).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def split_heads(self, x: Tensor) -> Tensor:
        """``[B, L, d]`` -> ``[B, heads, L, d / heads]``."""
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, x.shape[-1] // self.num_heads).transpose(1, 2)

    def project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The input projections, split into heads: each ``[B, heads, L, head_dim]``."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        return (
            self.split_heads(F.linear(query, w_q, b_q)),
            self.split_heads(F.linear(key, w_k, b_k)),
            self.split_heads(F.linear(value, w_v, b_v)),
        )

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None, need_weights: bool = False,
        attn_mask: Optional[Tensor] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Scaled dot-product attention of projected heads, then ``out_proj``.

        ``q [B, heads, Lq, e]``, ``k [B, heads, Lk, e]``, ``v [B, heads, Lk, head_dim]`` (``e`` may
        exceed ``head_dim``: the scale is ``1 / sqrt(e)``) -> ``(output [B, Lq, d], weights)``.
        ``attn_mask [Lq, Lk]`` (bool, True = query may not see key, as in ``nn.MultiheadAttention``)
        blocks pairs in every image and head, on top of ``key_padding_mask``.
        """
        dropout_p = self.dropout if self.training else 0.0
        weights: Optional[Tensor] = None
        blocked = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # [B, 1, 1, Lk]
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool or attn_mask.shape != (q.shape[2], k.shape[2]):
                raise ValueError(f"attn_mask must be a bool [Lq, Lk] = [{q.shape[2]}, {k.shape[2]}] mask, got "
                                 f"{attn_mask.dtype} {list(attn_mask.shape)}")
            pairs = attn_mask[None, None]  # [1, 1, Lq, Lk]
            blocked = pairs if blocked is None else blocked | pairs  # [B, 1, Lq, Lk]
        # The explicit path returns the weights; it is also the fast one for bfloat16/float16 on the
        # CPU, where SDPA's fused kernel is several times slower (its backward above all) for
        # DETR's short sequences (benchmarks/RESULTS.md, "attention under CPU autocast").
        if need_weights or (q.device.type == "cpu" and (q.dtype == torch.bfloat16 or q.dtype == torch.float16)):
            scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # [B, heads, Lq, Lk]
            if blocked is not None:
                scores = scores.masked_fill(blocked, float("-inf"))
            probs = scores.softmax(dim=-1)
            out = F.dropout(probs, dropout_p, training=self.training) @ v
            if need_weights:
                weights = probs
        else:
            keep = None if blocked is None else ~blocked  # SDPA: True = take part
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.embed_dim)  # [B, Lq, d]
        return self.out_proj(out), weights

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = False,
        attn_mask: Optional[Tensor] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``query [B, Lq, d]``, ``key/value [B, Lk, d]``, ``key_padding_mask [B, Lk]`` (True = ignore),
        ``attn_mask [Lq, Lk]`` (True = this query may not see this key).

        Returns ``(output [B, Lq, d], weights [B, heads, Lq, Lk] or None)``.
        """
        q, k, v = self.project(query, key, value)
        return self.attend(q, k, v, key_padding_mask, need_weights, attn_mask)


def _with_pos(x: Tensor, pos: Optional[Tensor]) -> Tensor:
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    """Self-attention over feature cells, then a feed-forward network; post-norm by default."""

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1, normalize_before: bool = False
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(
        self, src: Tensor, key_padding_mask: Optional[Tensor], pos: Optional[Tensor], need_weights: bool = False
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``src, pos [B, HW, d]``, ``key_padding_mask [B, HW]`` -> ``(src [B, HW, d], weights)``."""
        if self.normalize_before:
            src2 = self.norm1(src)
            q = k = _with_pos(src2, pos)
            attn, weights = self.self_attn(q, k, src2, key_padding_mask, need_weights)
            src = src + self.dropout1(attn)
            src = src + self.dropout2(self._ffn(self.norm2(src)))
            return src, weights
        q = k = _with_pos(src, pos)
        attn, weights = self.self_attn(q, k, src, key_padding_mask, need_weights)
        src = self.norm1(src + self.dropout1(attn))
        src = self.norm2(src + self.dropout2(self._ffn(src)))
        return src, weights


class TransformerDecoderLayer(nn.Module):
    """Self-attention among queries, cross-attention to the encoder memory, then a feed-forward net.

    ``cross_attn`` is the official code's ``multihead_attn``.
    """

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1, normalize_before: bool = False
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.cross_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Optional[Tensor],
        pos: Optional[Tensor],
        query_pos: Optional[Tensor],
        need_weights: bool = False,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``tgt, query_pos [B, Q, d]``, ``memory, pos [B, HW, d]`` -> ``(tgt [B, Q, d], cross weights)``."""
        if self.normalize_before:
            tgt2 = self.norm1(tgt)
            q = k = _with_pos(tgt2, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, k, tgt2)[0])
            tgt2 = self.norm2(tgt)
            attn, weights = self.cross_attn(
                _with_pos(tgt2, query_pos), _with_pos(memory, pos), memory, memory_key_padding_mask, need_weights
            )
            tgt = tgt + self.dropout2(attn)
            tgt = tgt + self.dropout3(self._ffn(self.norm3(tgt)))
            return tgt, weights
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt)[0]))
        attn, weights = self.cross_attn(
            _with_pos(tgt, query_pos), _with_pos(memory, pos), memory, memory_key_padding_mask, need_weights
        )
        tgt = self.norm2(tgt + self.dropout2(attn))
        tgt = self.norm3(tgt + self.dropout3(self._ffn(tgt)))
        return tgt, weights


class TransformerEncoder(nn.Module):
    """A stack of encoder layers; a final LayerNorm only in the pre-norm variant."""

    def __init__(self, layer: TransformerEncoderLayer, num_layers: int, norm: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = norm

    def forward(
        self, src: Tensor, key_padding_mask: Optional[Tensor], pos: Optional[Tensor], need_weights: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        weights = []
        for layer in self.layers:
            src, w = layer(src, key_padding_mask, pos, need_weights)
            if need_weights and w is not None:  # `is not None` for TorchScript: w is set when asked for
                weights.append(w)
        if self.norm is not None:
            src = self.norm(src)
        return src, weights


class TransformerDecoder(nn.Module):
    """A stack of decoder layers returning *every* layer's output through one shared LayerNorm."""

    def __init__(self, layer: TransformerDecoderLayer, num_layers: int, norm: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = norm

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Optional[Tensor],
        pos: Optional[Tensor],
        query_pos: Optional[Tensor],
        need_weights: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        """Returns ``(hs [L, B, Q, d], cross-attention weights per layer [B, heads, Q, HW])``."""
        intermediate, weights = [], []
        for layer in self.layers:
            tgt, w = layer(tgt, memory, memory_key_padding_mask, pos, query_pos, need_weights)
            intermediate.append(self.norm(tgt))
            if need_weights and w is not None:
                weights.append(w)
        return torch.stack(intermediate), weights


class Transformer(nn.Module):
    """Encoder + decoder with DETR's conventions (see the module docstring).

    A variant's transformer names its own ``decoder_layer`` class and returns its own stack from
    :meth:`_make_decoder`; everything is created in the same order, so a seed gives the same weights.
    """

    decoder_layer: type = TransformerDecoderLayer

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        enc_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        self.encoder = TransformerEncoder(
            enc_layer, num_encoder_layers, nn.LayerNorm(d_model) if normalize_before else None
        )
        self.decoder = self._make_decoder(
            self.decoder_layer(d_model, nhead, dim_feedforward, dropout, normalize_before),
            num_decoder_layers, nn.LayerNorm(d_model),
        )
        self.d_model = d_model
        self.nhead = nhead
        self._reset_parameters()

    def _make_decoder(self, layer: TransformerDecoderLayer, num_layers: int, norm: nn.Module) -> nn.Module:
        """The decoder stack (a variant's transformer returns its own decoder here)."""
        return TransformerDecoder(layer, num_layers, norm)

    def _reset_parameters(self) -> None:
        # as the official code: Xavier for every matrix (attention projections, FFN)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def encode(
        self, src: Tensor, mask: Tensor, pos_embed: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """Flatten the map and run the encoder.

        ``src, pos_embed [B, d, h, w]``, ``mask [B, h, w]`` -> ``memory [B, hw, d]``,
        ``key_padding_mask [B, hw]``, ``pos [B, hw, d]`` and the encoder's attention weights per
        layer (``[B, heads, hw, hw]``, when asked).
        """
        src = src.flatten(2).transpose(1, 2)  # [B, hw, d]
        pos = pos_embed.flatten(2).transpose(1, 2).to(src.dtype)  # [B, hw, d]
        key_padding_mask = mask.flatten(1)  # [B, hw]
        memory, weights = self.encoder(src, key_padding_mask, pos, need_weights)
        return memory, key_padding_mask, pos, weights

    def forward(
        self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor, return_attention: bool = False
    ) -> dict[str, Tensor]:
        """Run encoder and decoder.

        Args:
            src: projected features ``[B, d, h, w]``.
            mask: padding mask ``[B, h, w]`` (True = padding).
            query_embed: object queries ``[Q, d]``.
            pos_embed: positional encoding ``[B, d, h, w]``.

        Returns a dict with ``hs [L_dec, B, Q, d]``, ``memory [B, d, h, w]`` and, when asked,
        ``enc_attn [L_enc, B, heads, hw, hw]`` and ``dec_attn [L_dec, B, heads, Q, hw]``.
        """
        b, c, h, w = src.shape
        memory, key_padding_mask, pos, enc_w = self.encode(src, mask, pos_embed, return_attention)
        query_pos = query_embed[None].expand(b, -1, -1)  # [B, Q, d]
        hs, dec_w = self.decoder(torch.zeros_like(query_pos), memory, key_padding_mask, pos, query_pos, return_attention)
        out = {"hs": hs, "memory": memory.transpose(1, 2).reshape(b, c, h, w)}
        if return_attention:
            out["enc_attn"] = stack_attention(enc_w, (0, b, self.nhead, h * w, h * w), src)
            out["dec_attn"] = torch.stack(dec_w)
        return out


def stack_attention(weights: list[Tensor], empty_shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Per-layer weights stacked ``[L, ...]``; an empty ``[0, ...]`` tensor for zero layers."""
    return torch.stack(weights) if weights else like.new_zeros(empty_shape)
