"""RT-DETR's hybrid encoder (``rtdetr_pytorch/src/zoo/rtdetr/hybrid_encoder.py``).

Three maps of the trunk (strides 8, 16, 32) are projected to ``d`` channels (``input_proj[l]``:
1x1 conv without bias + BatchNorm), then:

1. **AIFI** (attention-based intra-scale feature interaction): one transformer encoder layer
   (post-norm, GELU) over the cells of the *stride-32* map only, with the fixed 2-D sin-cos table
   of :func:`build_2d_sincos_position_embedding` added to queries and keys. Attention over the
   coarsest map is cheap (``(HW/1024)^2``) and the semantic level is where it helps;
2. **CCFM** (CNN-based cross-scale feature fusion): a top-down FPN (``lateral_convs``, nearest
   2x upsampling, concatenation with the finer map, ``fpn_blocks``) then a bottom-up PAN
   (``downsample_convs`` 3x3 stride 2, concatenation, ``pan_blocks``); each block is a
   :class:`CSPRepLayer` of :class:`RepVggBlock` s, SiLU activations.

Output: the ``L`` fused maps ``[B, d, H_l, W_l]``, finest first. Every module is named as in the
official code so its checkpoints load key for key (``encoder.*``).
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..models.transformer import MultiheadAttention

__all__ = ["ConvNormLayer", "RepVggBlock", "CSPRepLayer", "AIFILayer", "HybridEncoder",
           "build_2d_sincos_position_embedding"]


def build_2d_sincos_position_embedding(w: int, h: int, embed_dim: int = 256, temperature: float = 10000.0) -> Tensor:
    """The official table ``[1, w * h, embed_dim]``.

    Row ``k`` is ``[sin(i w_d), cos(i w_d), sin(j w_d), cos(j w_d)]`` (``d < embed_dim / 4``,
    ``w_d = temperature^(-4d / embed_dim)``) with ``i = k // h``, ``j = k % h``: the official meshgrid
    runs over ``(w, h)`` with ``indexing="ij"``. The encoder adds row ``k`` to token ``k`` of the
    *row-major* map (``y = k // w``, ``x = k % w``), so for a non-square map the code a cell gets
    is not its own ``(x, y)``; it is a fixed table all the same and official checkpoints were
    trained with it, so it is kept exactly (for a square map it only swaps the x and y channels).
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"the 2-D sin-cos embedding needs embed_dim divisible by 4, got {embed_dim}")
    # no int(): under torch.export the sizes are symbolic and int() would fix them
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32),
                                    torch.arange(h, dtype=torch.float32), indexing="ij")
    pos_dim = embed_dim // 4
    omega = 1.0 / (temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim))
    out_w = grid_w.flatten()[:, None] @ omega[None]  # [w * h, d / 4]
    out_h = grid_h.flatten()[:, None] @ omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


class ConvNormLayer(nn.Module):
    """``conv`` (no bias unless asked) -> ``norm`` (BatchNorm2d) -> ``act`` (SiLU, or none)."""

    def __init__(self, ch_in: int, ch_out: int, kernel_size: int, stride: int, padding: Optional[int] = None,
                 bias: bool = False, act: bool = False) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(ch_in, ch_out, kernel_size, stride, padding=pad, bias=bias)
        self.norm = nn.BatchNorm2d(ch_out)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class RepVggBlock(nn.Module):
    """``act(conv3x3(x) + conv1x1(x))`` (each with its BatchNorm): RepVGG's training form; the
    two branches can be fused into one 3x3 convolution for deployment (not done here)."""

    def __init__(self, ch_in: int, ch_out: int) -> None:
        super().__init__()
        self.conv1 = ConvNormLayer(ch_in, ch_out, 3, 1, padding=1)
        self.conv2 = ConvNormLayer(ch_in, ch_out, 1, 1, padding=0)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv1(x) + self.conv2(x))


class CSPRepLayer(nn.Module):
    """Cross-stage-partial block: ``conv3(bottlenecks(conv1(x)) + conv2(x))``.

    ``[B, C_in, H, W]`` -> ``[B, C_out, H, W]``; the two 1x1 branches have ``C_out * expansion``
    channels, ``conv3`` (1x1) maps back to ``C_out`` (an identity when ``expansion == 1``).
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3, expansion: float = 1.0) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvNormLayer(in_channels, hidden, 1, 1, act=True)
        self.conv2 = ConvNormLayer(in_channels, hidden, 1, 1, act=True)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, hidden) for _ in range(num_blocks)])
        self.conv3 = ConvNormLayer(hidden, out_channels, 1, 1, act=True) if hidden != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class AIFILayer(nn.Module):
    """The official ``TransformerEncoderLayer`` (post-norm): self-attention with positions on
    queries and keys, then a GELU feed-forward; ``[B, S, d]`` -> ``[B, S, d]``."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 1024, dropout: float = 0.0) -> None:
        super().__init__()
        # nn.MultiheadAttention's parameters (official weights load as they are), batch-first; its
        # explicit path under CPU autocast (benchmarks/RESULTS.md, "attention under CPU autocast")
        self.self_attn = MultiheadAttention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = nn.GELU()

    def attention_weights(self, src: Tensor, pos_embed: Optional[Tensor] = None) -> Tensor:
        """The self-attention weights this layer applies to ``src``: ``[B, heads, S, S]``, rows
        (queries) summing to 1 over the keys. A second call of ``self_attn`` with the same inputs,
        asking for its weights, so :meth:`forward` (which does not ask) stays as it is."""
        q = k = src if pos_embed is None else src + pos_embed
        return self.self_attn(q, k, src, need_weights=True)[1]

    def forward(self, src: Tensor, pos_embed: Optional[Tensor] = None) -> Tensor:
        q = k = src if pos_embed is None else src + pos_embed
        attn, _ = self.self_attn(q, k, src)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class _Encoder(nn.Module):
    """``layers``: the official ``TransformerEncoder`` (no final norm)."""

    def __init__(self, layer: AIFILayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])

    def forward(self, src: Tensor, pos_embed: Optional[Tensor]) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos_embed=pos_embed)
        return src

    def forward_with_attention(self, src: Tensor, pos_embed: Optional[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """:meth:`forward`'s output and each layer's self-attention weights ``[B, heads, S, S]``."""
        weights = []
        for layer in self.layers:
            weights.append(layer.attention_weights(src, pos_embed))
            src = layer(src, pos_embed=pos_embed)
        return src, weights


class HybridEncoder(nn.Module):
    """AIFI + CCFM (see the module docstring), the official ``HybridEncoder``.

    Args:
        in_channels: the trunk's channels per level, finest first.
        feat_strides: their strides (the position table of a size is ``size // stride``).
        hidden_dim: ``d``; nhead, dim_feedforward, dropout: the AIFI layer's.
        num_encoder_layers: AIFI layers (0: CCFM only, the paper's ablation).
        expansion, depth_mult: width of the CSP branches and ``round(3 * depth_mult)`` RepVGG blocks each.
        eval_spatial_size: ``(h, w)`` of the inference input: the position table is built once for it
            (a non-persistent buffer, as the official); other sizes build theirs on the fly (equal values).
    """

    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048), feat_strides: Sequence[int] = (8, 16, 32),
                 hidden_dim: int = 256, nhead: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0,
                 num_encoder_layers: int = 1, pe_temperature: float = 10000.0, expansion: float = 1.0,
                 depth_mult: float = 1.0, eval_spatial_size: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.feat_strides = list(feat_strides)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = [len(self.in_channels) - 1]  # the coarsest map
        self.num_encoder_layers = num_encoder_layers
        self.pe_temperature = pe_temperature
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, 1, bias=False), nn.BatchNorm2d(hidden_dim))  # keys .0, .1 (official)
            for c in self.in_channels
        )
        layer = AIFILayer(hidden_dim, nhead, dim_feedforward, dropout)
        self.encoder = nn.ModuleList(_Encoder(layer, num_encoder_layers) for _ in self.use_encoder_idx)
        blocks = round(3 * depth_mult)
        n = len(self.in_channels) - 1
        self.lateral_convs = nn.ModuleList(ConvNormLayer(hidden_dim, hidden_dim, 1, 1, act=True) for _ in range(n))
        self.fpn_blocks = nn.ModuleList(CSPRepLayer(2 * hidden_dim, hidden_dim, blocks, expansion) for _ in range(n))
        self.downsample_convs = nn.ModuleList(ConvNormLayer(hidden_dim, hidden_dim, 3, 2, act=True) for _ in range(n))
        self.pan_blocks = nn.ModuleList(CSPRepLayer(2 * hidden_dim, hidden_dim, blocks, expansion) for _ in range(n))
        self.eval_spatial_size = None if eval_spatial_size is None else tuple(eval_spatial_size)
        if self.eval_spatial_size is not None:
            for idx in self.use_encoder_idx:
                s = self.feat_strides[idx]
                table = build_2d_sincos_position_embedding(self.eval_spatial_size[1] // s, self.eval_spatial_size[0] // s,
                                                           hidden_dim, pe_temperature)
                self.register_buffer(f"pos_embed{idx}", table, persistent=False)

    def position_table(self, idx: int, h: int, w: int, device: torch.device) -> Tensor:
        """``[1, h * w, d]``: the stored table when it has this size, else a fresh one (same values)."""
        stride = self.feat_strides[idx]
        size = self.eval_spatial_size
        if size is not None and statically_known_true(h == size[0] // stride) and statically_known_true(
                w == size[1] // stride):  # a traced (symbolic) size builds its table: no guard on the size
            return getattr(self, f"pos_embed{idx}").to(device)
        return build_2d_sincos_position_embedding(w, h, self.hidden_dim, self.pe_temperature).to(device)

    def aifi(self, proj_feats: list[Tensor]) -> list[Tensor]:
        """AIFI on the coarsest level: ``[B, d, h, w]`` -> flattened row-major ``[B, h*w, d]`` ->
        encoder layers -> back to ``[B, d, h, w]``; the other levels pass through."""
        return self._aifi(proj_feats, keep_attention=False)[0]

    def _aifi(self, proj_feats: list[Tensor], keep_attention: bool) -> tuple[list[Tensor], list[Tensor]]:
        out, weights = list(proj_feats), []
        if self.num_encoder_layers == 0:
            return out, weights
        for i, idx in enumerate(self.use_encoder_idx):
            h, w = out[idx].shape[2:]
            src = out[idx].flatten(2).permute(0, 2, 1)  # [B, h*w, d]
            pos = self.position_table(idx, h, w, src.device).to(src.dtype)
            if keep_attention:
                memory, layer_weights = self.encoder[i].forward_with_attention(src, pos)
                weights.extend(layer_weights)
            else:
                memory = self.encoder[i](src, pos)
            out[idx] = memory.permute(0, 2, 1).reshape(-1, self.hidden_dim, h, w).contiguous()
        return out, weights

    def ccfm(self, feats: list[Tensor]) -> list[Tensor]:
        """Top-down FPN then bottom-up PAN; ``L`` maps ``[B, d, H_l, W_l]`` in and out, finest first."""
        n = len(self.in_channels)
        inner = [feats[-1]]
        for idx in range(n - 1, 0, -1):
            high = self.lateral_convs[n - 1 - idx](inner[0])
            inner[0] = high
            up = F.interpolate(high, scale_factor=2.0, mode="nearest")
            inner.insert(0, self.fpn_blocks[n - 1 - idx](torch.cat([up, feats[idx - 1]], dim=1)))
        outs = [inner[0]]
        for idx in range(n - 1):
            down = self.downsample_convs[idx](outs[-1])
            outs.append(self.pan_blocks[idx](torch.cat([down, inner[idx + 1]], dim=1)))
        return outs

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """``L`` trunk maps ``[B, C_l, H_l, W_l]`` -> ``L`` fused maps ``[B, d, H_l, W_l]``."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature maps, got {len(feats)}")
        return self.ccfm(self.aifi([proj(f) for proj, f in zip(self.input_proj, feats)]))

    def forward_with_attention(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], Tensor, tuple[int, int]]:
        """:meth:`forward`'s maps, AIFI's self-attention and the grid it attends over.

        Returns the ``L`` fused maps, ``enc_attn [num_encoder_layers, B, heads, hw, hw]`` (each
        AIFI layer's weights over the ``h x w`` cells of the coarsest level, row-major; rows sum to 1;
        an empty first dimension without AIFI layers) and ``(h, w)``. The maps are the values
        :meth:`forward` gives (the weights come from a second, weights-only call of each attention).
        """
        if len(feats) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature maps, got {len(feats)}")
        proj = [p(f) for p, f in zip(self.input_proj, feats)]
        h, w = (int(v) for v in proj[self.use_encoder_idx[-1]].shape[2:])
        fused, weights = self._aifi(proj, keep_attention=True)
        if weights:
            attn = torch.stack(weights)  # [layers, B, heads, hw, hw]
        else:
            heads = self.encoder[0].layers[0].self_attn.num_heads if self.num_encoder_layers else 0
            attn = proj[0].new_zeros(0, proj[0].shape[0], heads, h * w, h * w)
        return self.ccfm(fused), attn, (h, w)
