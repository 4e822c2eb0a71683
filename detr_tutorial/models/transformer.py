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
that official checkpoints load by renaming keys only.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Optional, Union

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

    def _split_heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, heads, L, head_dim]

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = False,
        attn_mask: Optional[Tensor] = None,
        query_extra: Optional[Tensor] = None,
        key_extra: Optional[Tensor] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``query [B, Lq, d]``, ``key/value [B, Lk, d]``, ``key_padding_mask [B, Lk]`` (True = ignore).

        ``attn_mask [Lq, Lk]`` (True = this query may not see this key) blocks pairs for every
        image alike (Group DETR keeps its query groups apart with it).

        ``query_extra [B or 1, Lq, d]`` and ``key_extra [B, Lk, d]`` (already projected) are
        concatenated to the projected queries and keys *per head* (Conditional DETR's spatial
        part): a head's score is then ``q·k + q_extra·k_extra`` over ``2 * head_dim`` channels.

        Returns ``(output [B, Lq, d], weights [B, heads, Lq, Lk] or None)``.
        """
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._split_heads(F.linear(query, w_q, b_q))
        k = self._split_heads(F.linear(key, w_k, b_k))
        v = self._split_heads(F.linear(value, w_v, b_v))
        if query_extra is not None and key_extra is not None:
            q = torch.cat([q, self._split_heads(query_extra.expand(q.shape[0], -1, -1))], dim=-1)
            k = torch.cat([k, self._split_heads(key_extra)], dim=-1)  # [B, heads, L, 2 * head_dim]
        dropout_p = self.dropout if self.training else 0.0
        weights: Optional[Tensor] = None
        blocked: Optional[Tensor] = None  # [B or 1, 1, Lq or 1, Lk], True = masked out
        if key_padding_mask is not None:
            blocked = key_padding_mask[:, None, None, :]
        if attn_mask is not None:
            pairs = attn_mask[None, None]
            blocked = pairs if blocked is None else blocked | pairs
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
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], self.embed_dim)  # [B, Lq, d]
        return self.out_proj(out), weights


class MLP(nn.Module):
    """A few linear layers with ReLU in between (DETR's 3-layer box head, Conditional DETR's
    ``query_scale``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def sine_embed_points(points: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine code of points ``[..., 2]`` given as ``(x, y)`` in ``[0, 1]`` -> ``[..., dim]``.

    The layout of :class:`~detr_tutorial.models.PositionEmbeddingSine` (y half first, sin/cos
    interleaved, coordinates scaled to ``[0, 2π]``), so a point's code lines up with the codes of
    the feature cells around it.
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

    def make_conditional(self) -> None:
        """Add Conditional DETR's projections of the query's spatial code and of the key positions."""
        d = self.cross_attn.embed_dim
        self.ca_qpos_sine_proj = nn.Linear(d, d)
        self.ca_kpos_proj = nn.Linear(d, d)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Optional[Tensor],
        pos: Optional[Tensor],
        query_pos: Optional[Tensor],
        need_weights: bool = False,
        self_attn_mask: Optional[Tensor] = None,
        query_sine: Optional[Tensor] = None,
        is_first: bool = False,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``tgt, query_pos [B, Q, d]``, ``memory, pos [B, HW, d]`` -> ``(tgt [B, Q, d], cross weights)``.

        ``self_attn_mask [Q, Q]`` (True = blocked) limits which queries see each other.
        ``query_sine [B, Q, d]``: the conditional spatial query (Conditional DETR; post-norm only).
        """
        if query_sine is not None:
            # hasattr is decided when TorchScript compiles: a plain layer never compiles this branch
            if hasattr(self, "ca_qpos_sine_proj"):
                return self._forward_conditional(
                    tgt, memory, memory_key_padding_mask, pos, query_pos, need_weights, self_attn_mask, query_sine,
                    is_first,
                )
            raise ValueError("query_sine needs a conditional layer (call make_conditional() first)")
        if self.normalize_before:
            tgt2 = self.norm1(tgt)
            q = k = _with_pos(tgt2, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, k, tgt2, attn_mask=self_attn_mask)[0])
            tgt2 = self.norm2(tgt)
            attn, weights = self.cross_attn(
                _with_pos(tgt2, query_pos), _with_pos(memory, pos), memory, memory_key_padding_mask, need_weights
            )
            tgt = tgt + self.dropout2(attn)
            tgt = tgt + self.dropout3(self._ffn(self.norm3(tgt)))
            return tgt, weights
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, attn_mask=self_attn_mask)[0]))
        attn, weights = self.cross_attn(
            _with_pos(tgt, query_pos), _with_pos(memory, pos), memory, memory_key_padding_mask, need_weights
        )
        tgt = self.norm2(tgt + self.dropout2(attn))
        tgt = self.norm3(tgt + self.dropout3(self._ffn(tgt)))
        return tgt, weights

    def _forward_conditional(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Optional[Tensor],
        pos: Optional[Tensor],
        query_pos: Optional[Tensor],
        need_weights: bool,
        self_attn_mask: Optional[Tensor],
        query_sine: Tensor,
        is_first: bool,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Conditional DETR's cross-attention: content and space matched in separate channels.

        Each head scores a key by ``content_q·content_k + spatial_q·spatial_k``. The spatial query
        is the sine code of the query's reference point, scaled per channel by the decoder
        embedding; the spatial key is the cell's position code. So a query looks near its point
        from the first step, instead of learning to find its place through the content channels.
        """
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, attn_mask=self_attn_mask)[0]))
        content_q = _with_pos(tgt, query_pos) if is_first else tgt  # [B, Q, d]
        content_k = _with_pos(memory, pos) if is_first else memory  # [B, HW, d]
        attn, weights = self.cross_attn(
            content_q, content_k, memory, memory_key_padding_mask, need_weights,
            query_extra=self.ca_qpos_sine_proj(query_sine), key_extra=self.ca_kpos_proj(pos),
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

    def __init__(
        self, layer: TransformerDecoderLayer, num_layers: int, norm: nn.Module, conditional: bool = False
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = norm
        self.conditional = conditional
        if conditional:
            d = layer.cross_attn.embed_dim
            for each in self.layers:
                each.make_conditional()
            # lambda_q: a per-channel scale of the spatial code computed from the decoder embedding;
            # the first layer uses the plain code, so a one-layer decoder has none (an unused
            # parameter would stop DDP: "parameters that were not used in producing loss")
            self.query_scale: Optional[nn.Module] = MLP(d, d, d, 2) if num_layers > 1 else None

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Optional[Tensor],
        pos: Optional[Tensor],
        query_pos: Optional[Tensor],
        need_weights: bool = False,
        self_attn_mask: Optional[Tensor] = None,
        reference: Optional[Tensor] = None,
        refine: Optional[Callable[[Tensor], Tensor]] = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Returns ``(hs [L, B, Q, d], cross-attention weights per layer)``; see :meth:`decode`."""
        hs, weights, _ = self.decode(
            tgt, memory, memory_key_padding_mask, pos, query_pos, need_weights, self_attn_mask, reference, refine
        )
        return hs, weights

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Optional[Tensor],
        pos: Optional[Tensor],
        query_pos: Optional[Tensor],
        need_weights: bool = False,
        self_attn_mask: Optional[Tensor] = None,
        reference: Optional[Tensor] = None,
        refine: Optional[Callable[[Tensor], Tensor]] = None,
    ) -> tuple[Tensor, list[Tensor], Optional[Tensor]]:
        """Returns ``(hs [L, B, Q, d], cross-attention weights per layer, references [L, B, Q, 2 or 4])``.

        ``reference``: the queries' reference points ``(x, y)`` in ``[0, 1]``, shared by every image
        (``[Q, 2]``) or per image (``[B, Q, 2]``), or per-image reference *boxes* ``[B, Q, 4]``
        (``cx, cy, w, h``; two-stage proposals); required by a conditional decoder, ignored
        otherwise. The cross-attention looks at the ``(x, y)`` part. ``refine`` (the box head,
        ``[B, Q, d] -> [B, Q, 4]`` logits): after each layer the reference moves to that layer's
        predicted centre (or box), detached as in Deformable DETR's box refinement, so the next
        layer looks there.
        """
        intermediate, weights, references = [], [], []
        ref = None
        if self.conditional:
            if reference is None:
                raise ValueError("a conditional decoder needs the queries' reference points")
            if reference.dim() == 2:
                reference = reference[None].expand(tgt.shape[0], -1, -1)
            if reference.dim() != 3 or reference.shape[:2] != tgt.shape[:2] or reference.shape[-1] not in (2, 4):
                raise ValueError(
                    f"reference must be [Q, 2], [B, Q, 2] or [B, Q, 4] for B, Q = {tuple(tgt.shape[:2])}, "
                    f"got {list(reference.shape)}"
                )
            ref = reference  # [B, Q, 2 or 4]
        for i, layer in enumerate(self.layers):
            query_sine = None
            if ref is not None:
                references.append(ref)
                point_code = sine_embed_points(ref[..., :2], tgt.shape[-1])  # [B, Q, d]
                query_sine = point_code
                if i > 0 and self.query_scale is not None:
                    query_sine = point_code * self.query_scale(tgt)
            tgt, w = layer(
                tgt, memory, memory_key_padding_mask, pos, query_pos, need_weights, self_attn_mask, query_sine, i == 0
            )
            intermediate.append(self.norm(tgt))
            if refine is not None and ref is not None:
                moved = refine(intermediate[-1])[..., : ref.shape[-1]] + torch.logit(ref)
                ref = moved.sigmoid().clamp(1e-4, 1 - 1e-4).detach()
            if need_weights:
                weights.append(w)
        return torch.stack(intermediate), weights, (torch.stack(references) if references else None)


class Transformer(nn.Module):
    """Encoder + decoder with DETR's conventions (see the module docstring)."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        normalize_before: bool = False,
        position_at_input: bool = False,
        conditional: bool = False,
    ) -> None:
        super().__init__()
        enc_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        self.encoder = TransformerEncoder(
            enc_layer, num_encoder_layers, nn.LayerNorm(d_model) if normalize_before else None
        )
        dec_layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        if conditional and normalize_before:
            raise ValueError("the conditional decoder is post-norm only")
        self.decoder = TransformerDecoder(dec_layer, num_decoder_layers, nn.LayerNorm(d_model), conditional)
        self.d_model = d_model
        self.nhead = nhead
        self.position_at_input = position_at_input
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # as the official code: Xavier for every matrix (attention projections, FFN)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self,
        src: Tensor,
        mask: Tensor,
        query_embed: Tensor,
        pos_embed: Tensor,
        return_attention: bool = False,
        query_mask: Optional[Tensor] = None,
        reference: Union[None, Tensor, Callable[[Tensor, Tensor], Tensor]] = None,
        refine: Optional[Callable[[Tensor], Tensor]] = None,
        fine: Optional[tuple[Tensor, Tensor, Tensor]] = None,
    ) -> dict[str, object]:
        """Run encoder and decoder.

        Args:
            src: projected features ``[B, d, h, w]``.
            mask: padding mask ``[B, h, w]`` (True = padding).
            query_embed: object queries ``[Q, d]``.
            pos_embed: positional encoding ``[B, d, h, w]``.
            query_mask: ``[Q, Q]``, True where query ``i`` may not attend to query ``j`` in the
                decoder's self-attention (``None``: all queries see each other, as in DETR).
            reference: reference points of the queries, ``[Q, 2]`` or ``[B, Q, 2]``, or boxes
                ``[B, Q, 4]`` (conditional decoder only); or a function ``(memory [B, hw, d],
                key_padding_mask [B, hw]) -> [B, Q, 2 or 4]`` that chooses them from the encoder's
                output (two-stage).
            fine: ``(src [B, d, h', w'], mask [B, h', w'], pos [B, d, h', w'])``, a finer feature
                map that the decoder's cross-attention reads besides the encoder's memory (it does
                not go through the encoder: attention over its many cells would cost quadratically).
            refine: the box head, to move each layer's reference points to the previous layer's
                box centres (conditional decoder only).

        Returns a dict with ``hs [L_dec, B, Q, d]``, ``memory [B, d, h, w]`` and, when asked,
        ``enc_attn [L_enc, B, heads, hw, hw]`` and ``dec_attn [L_dec, B, heads, Q, hw]`` (with
        ``fine``, also ``dec_attn_fine [L_dec, B, heads, Q, h'w']``: each query's attention is
        shared between the two maps).
        """
        b, c, h, w = src.shape
        src = src.flatten(2).transpose(1, 2)  # [B, hw, d]
        pos = pos_embed.flatten(2).transpose(1, 2).to(src.dtype)  # [B, hw, d]
        key_padding_mask = mask.flatten(1)  # [B, hw]
        if self.position_at_input:
            # also add the positions to the features once, so the memory's *values* say where each
            # cell is (with pos in queries and keys only, only the attention pattern knows)
            src = src + pos
        query_pos = query_embed[None].expand(b, -1, -1)  # [B, Q, d]
        tgt = torch.zeros_like(query_pos)
        memory, enc_w = self.encoder(src, key_padding_mask, pos, return_attention)
        if callable(reference):
            reference = reference(memory, key_padding_mask)  # [B, Q, 2 or 4], chosen from the memory
        dec_memory, dec_pos, dec_mask = memory, pos, key_padding_mask
        if fine is not None:
            fine_src, fine_mask, fine_pos = fine
            fine_src = fine_src.flatten(2).transpose(1, 2)  # [B, h'w', d]
            fine_pos = fine_pos.flatten(2).transpose(1, 2).to(fine_src.dtype)  # [B, h'w', d]
            if self.position_at_input:
                fine_src = fine_src + fine_pos
            dec_memory = torch.cat([memory, fine_src], dim=1)  # [B, hw + h'w', d]
            dec_pos = torch.cat([pos, fine_pos], dim=1)
            dec_mask = torch.cat([key_padding_mask, fine_mask.flatten(1)], dim=1)
        hs, dec_w, references = self.decoder.decode(
            tgt, dec_memory, dec_mask, dec_pos, query_pos, return_attention, query_mask, reference, refine
        )
        out: dict[str, object] = {"hs": hs, "memory": memory.transpose(1, 2).reshape(b, c, h, w)}
        if references is not None:
            out["references"] = references  # [L_dec, B, Q, 2 or 4]: where each layer's queries looked
        if return_attention:
            out["enc_attn"] = torch.stack(enc_w) if enc_w else src.new_zeros((0, b, self.nhead, h * w, h * w))
            dec_attn = torch.stack(dec_w)  # [L_dec, B, heads, Q, hw (+ h'w')]
            out["dec_attn"] = dec_attn[..., : h * w]
            if fine is not None:
                out["dec_attn_fine"] = dec_attn[..., h * w :]
        return out
