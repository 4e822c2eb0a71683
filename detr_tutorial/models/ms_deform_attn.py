"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021), in plain PyTorch.

DETR's encoder lets every feature cell attend to every other cell: ``S^2`` scores for ``S`` cells,
which is why DETR stops at stride 32. Deformable attention lets each query look at a *few learned
points* instead: for each head ``m``, each feature level ``l`` and each of ``P`` points, the query
predicts an offset from its reference point and a weight; the output is the weighted sum of the
values bilinearly sampled at those points. The cost is ``Lq * M * L * P`` samples, linear in the
number of cells, so the encoder can run on strides 8/16/32/64 at once.

- :func:`ms_deform_attn` — the core: sample and weight, given the locations and weights.
- :class:`MSDeformAttn` — the module: projections that predict the locations and weights from the
  query, the value and output projections, and the official initialization.

Conventions (the official fundamentalvision/Deformable-DETR ones, so that its checkpoints load and
its tensors compare one to one):

- a flattened multi-level map has ``S = sum_l H_l * W_l`` rows: level 0 (the finest) first, each
  level row-major (row ``y * W_l + x``); ``spatial_shapes [L, 2]`` holds ``(H_l, W_l)`` and
  ``level_start_index [L]`` the first row of each level;
- ``value [N, S, M, D]``: ``M`` heads of ``D`` channels; output channel ``m * D + d`` is head ``m``'s;
- ``sampling_locations [N, Lq, M, L, P, 2]``: ``(x, y)`` normalized to ``[0, 1]`` over the whole
  (padded) map of the level, ``(0, 0)`` the top-left corner of the top-left pixel and ``(1, 1)``
  the bottom-right corner of the bottom-right pixel; pixel ``(i, j)``'s centre is at
  ``((j + 0.5) / W, (i + 0.5) / H)``, i.e. a location ``x`` is the pixel coordinate ``x * W - 0.5``.
  Points outside the map read zeros (bilinearly blended with the border pixels near the edge);
- ``attention_weights [N, Lq, M, L, P]``: for each ``(n, q, m)`` the ``L * P`` weights sum to one
  (the module's softmax; the core takes any weights).

The official code calls a compiled CUDA kernel and keeps this pure-PyTorch version "for debug and
test only". Here the pure-PyTorch version is the implementation, on the CPU and the GPU alike: it
gives the kernel's values (up to float rounding) with autograd's gradients, and needs no build
step. It is slower than the kernel on a GPU and holds each level's samples ``[N*M, D, Lq, P]`` in
memory for the backward pass.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ms_deform_attn", "MSDeformAttn", "level_start_index", "level_starts", "splat_sampling_points"]

Shapes = Union[Tensor, Sequence[Sequence[int]]]


def _shape_list(spatial_shapes: Shapes, name: str = "spatial_shapes") -> list[tuple[int, int]]:
    """``[L, 2]`` int tensor (or a list of ``(H, W)``) -> a list of ``(H, W)`` Python ints.

    Reading the shapes on the host is needed anyway (``split`` and ``view`` take Python ints); the
    official code does the same by iterating over the tensor.
    """
    if isinstance(spatial_shapes, Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
            raise ValueError(f"{name} must be [L, 2] (H, W) per level, got shape {tuple(spatial_shapes.shape)}")
        if spatial_shapes.is_floating_point() or spatial_shapes.is_complex():
            raise ValueError(f"{name} must hold integers (int64 in the official code), got {spatial_shapes.dtype}")
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    else:
        # symbolic sizes (torch.export) stay symbolic: int() would fix the graph to the traced size
        shapes = [tuple(v if isinstance(v, torch.SymInt) else int(v) for v in hw)  # type: ignore[misc]
                  for hw in spatial_shapes]
        if any(len(hw) != 2 for hw in shapes):
            raise ValueError(f"{name} must be a list of (H, W) pairs, got {list(spatial_shapes)}")
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f"{name} must be positive (H, W) per level, got {shapes}")
    return shapes  # type: ignore[return-value]


def level_starts(shapes: Sequence[Sequence[int]]) -> list[int]:
    """The first flattened row of each level, as Python ints: ``[(H, W), ...]`` ->
    ``[0, H_0 W_0, H_0 W_0 + H_1 W_1, ...]`` (symbolic sizes under torch.export stay symbolic)."""
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    return starts


def level_start_index(spatial_shapes: Tensor) -> Tensor:
    """The first flattened row of each level: ``[L, 2]`` ``(H, W)`` -> ``[L]`` int64
    (``0, H_0 W_0, H_0 W_0 + H_1 W_1, ...``), on the device of ``spatial_shapes``."""
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    return torch.cat((areas.new_zeros(1), areas.cumsum(0)[:-1]))


def ms_deform_attn(
    value: Tensor, spatial_shapes: Shapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Multi-scale deformable attention core: weighted sum of bilinear samples of ``value``.

    Args:
        value: ``[N, S, M, D]``, the flattened levels (finest first, each row-major), split into heads.
        spatial_shapes: ``[L, 2]`` int64 ``(H_l, W_l)`` (or a list of pairs), ``sum H_l W_l = S``.
        sampling_locations: ``[N, Lq, M, L, P, 2]``, ``(x, y)`` in ``[0, 1]`` per level (outside
            reads zeros).
        attention_weights: ``[N, Lq, M, L, P]``.

    Returns:
        ``[N, Lq, M * D]``: ``out[n, q, m*D + d] = sum_{l, p} w[n, q, m, l, p] * bilinear(value of
        level l, head m, channel d; at location [n, q, m, l, p])``.

    :func:`torch.nn.functional.grid_sample` with ``align_corners=False`` puts ``-1`` and ``+1`` at
    the outer *edges* of the border pixels, exactly as ``0`` and ``1`` of the normalized location
    here, so the grid is ``2 * loc - 1`` (pixel coordinate ``loc * W - 0.5`` either way);
    ``padding_mode="zeros"`` makes the points outside the map read zeros, as in the CUDA kernel.
    Inputs of different floating types are computed in the wider one (bfloat16 locations would
    place a point on a 100-cell map only to within a pixel).
    """
    shapes = _shape_list(spatial_shapes)
    if value.dim() != 4:
        raise ValueError(f"value must be [N, S, M, D], got shape {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "sampling_locations must be [N, Lq, M, L, P, 2] with (x, y) last, got shape "
            f"{tuple(sampling_locations.shape)}"
        )
    if attention_weights.dim() != 5:
        raise ValueError(f"attention_weights must be [N, Lq, M, L, P], got shape {tuple(attention_weights.shape)}")
    n, s, m, d = value.shape
    _, lq, _, nl, p, _ = sampling_locations.shape
    if sampling_locations.shape[0] != n or sampling_locations.shape[2] != m:
        raise ValueError(
            f"sampling_locations [N, Lq, M, L, P, 2] = {tuple(sampling_locations.shape)} must have value's "
            f"N = {n} and M = {m} heads (value [N, S, M, D] = {tuple(value.shape)})"
        )
    if len(shapes) != nl:
        raise ValueError(
            f"spatial_shapes has {len(shapes)} levels {shapes} but sampling_locations [N, Lq, M, L, P, 2] = "
            f"{tuple(sampling_locations.shape)} has L = {nl}"
        )
    if tuple(attention_weights.shape) != (n, lq, m, nl, p):
        raise ValueError(
            f"attention_weights must be [N, Lq, M, L, P] = {(n, lq, m, nl, p)} as sampling_locations "
            f"{tuple(sampling_locations.shape)}, got {tuple(attention_weights.shape)}"
        )
    areas = [h * w for h, w in shapes]
    if sum(areas) != s:
        raise ValueError(
            f"value has S = {s} rows (value [N, S, M, D] = {tuple(value.shape)}) but spatial_shapes {shapes} "
            f"sum to {sum(areas)} cells (sum H*W)"
        )
    dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    dtype = torch.promote_types(dtype, attention_weights.dtype)
    value, sampling_locations, attention_weights = (
        value.to(dtype), sampling_locations.to(dtype), attention_weights.to(dtype)
    )

    grids = 2 * sampling_locations - 1  # [0, 1] -> grid_sample's [-1, 1] (align_corners=False)
    # [N, Lq, M, L, P] -> [N, M, Lq, L, P] -> [N*M, Lq, L, P]
    weights = attention_weights.transpose(1, 2).reshape(n * m, lq, nl, p)
    out = value.new_zeros(n * m, d, lq)
    for lvl, (v_l, (h, w)) in enumerate(zip(value.split(areas, dim=1), shapes)):
        # [N, H*W, M, D] -> [N, M, D, H*W] -> [N*M, D, H, W]
        v_l = v_l.permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # [N, Lq, M, P, 2] -> [N, M, Lq, P, 2] -> [N*M, Lq, P, 2]
        g_l = grids[:, :, :, lvl].transpose(1, 2).reshape(n * m, lq, p, 2)
        sampled = F.grid_sample(v_l, g_l, mode="bilinear", padding_mode="zeros", align_corners=False)  # [N*M, D, Lq, P]
        # weight each level as it is sampled: never holds all levels' samples at once
        out = out + (sampled * weights[:, None, :, lvl]).sum(-1)  # [N*M, D, Lq]
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()  # [N, Lq, M*D]


def splat_sampling_points(locations: Tensor, weights: Tensor, grid_shape: Sequence[int]) -> Tensor:
    """Spread each sampling point's weight bilinearly over the cells of one ``h x w`` grid.

    Deformable attention has no attention *map*: a query reads ``L * P`` bilinear samples per
    head. To draw "where the query put its weight" as a heatmap, each point's weight is given to
    the four cells whose centres surround it, in the bilinear proportions :func:`ms_deform_attn`
    reads them with (``align_corners=False``: location ``x`` is the cell coordinate ``x * w - 0.5``).
    On a level's own grid this is exact, the adjoint of the sampling: ``sum(map * V)`` equals the
    weighted bilinear samples of a map ``V`` of that grid; points of other levels are placed on this
    grid by their location alone. The map is a splat of sampled points, not a softmax over cells.

    Args:
        locations: ``[..., K, 2]`` points ``(x, y)`` in ``[0, 1]`` of the grid's extent.
        weights: ``[..., K]`` their weights.
        grid_shape: ``(h, w)`` of the grid.

    Returns:
        ``[..., h * w]`` (row-major). It sums to the points' total weight, except the parts of points
        within half a cell of the border or outside, which fall off the grid, exactly as the sampling
        reads zeros there.
    """
    h, w = (int(v) for v in grid_shape)
    if locations.shape[-1] != 2 or tuple(locations.shape[:-1]) != tuple(weights.shape):
        raise ValueError(f"locations must be [..., K, 2] and weights [..., K], got {tuple(locations.shape)} "
                         f"and {tuple(weights.shape)}")
    prefix, k = weights.shape[:-1], weights.shape[-1]
    dtype = torch.promote_types(locations.dtype, weights.dtype)
    loc = locations.reshape(-1, k, 2).to(dtype)  # [N, K, 2]
    wts = weights.reshape(-1, k).to(dtype)  # [N, K]
    px, py = loc[..., 0] * w - 0.5, loc[..., 1] * h - 0.5  # cell coordinates (centres at integers)
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    out = wts.new_zeros(wts.shape[0], h * w)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        share = wts * (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
        out.scatter_add_(1, index, share * inside)
    return out.view(*prefix, h * w)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module, with the official parameter names and initialization.

    Args:
        d_model: channels of query, input and output (``C``).
        n_levels: feature levels ``L``.
        n_heads: heads ``M``; ``d_model`` must be divisible by it (``D = d_model / M`` per head).
        n_points: sampling points ``P`` per head and level.

    Parameters: ``sampling_offsets`` (``C -> M*L*P*2``, output index ``((m*L + l)*P + p)*2 + c``,
    ``c = 0`` is x), ``attention_weights`` (``C -> M*L*P``, a softmax over the ``L*P`` entries of a
    head), ``value_proj`` and ``output_proj`` (``C -> C``).

    The official module warns when ``D`` is not a power of two, because its CUDA kernel is faster
    then; there is no kernel here (:func:`ms_deform_attn` is plain PyTorch), so there is no warning
    and no ``im2col_step``.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("n_levels", n_levels), ("n_heads", n_heads), ("n_points", n_points)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads, got d_model={d_model} and n_heads={n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """The official initialization.

        The offsets start query-independent (zero weight): head ``m`` looks in direction
        ``theta_m = 2 pi m / M``, its points at 1, 2, ..., P steps along
        ``(cos, sin) / max(|cos|, |sin|)`` (a ring of squares around the reference point, in pixels
        of each level, or in fractions of the box with box references); all points start equally
        weighted (zero weight and bias before the softmax).
        """
        m, nl, p = self.n_heads, self.n_levels, self.n_points
        thetas = torch.arange(m, dtype=torch.float32) * (2.0 * math.pi / m)
        dirs = torch.stack([thetas.cos(), thetas.sin()], -1)  # [M, 2]
        dirs = dirs / dirs.abs().max(-1, keepdim=True).values  # onto the square: max(|x|, |y|) = 1
        steps = torch.arange(1, p + 1, dtype=torch.float32)  # point p is p + 1 steps out
        grid = dirs[:, None, None, :] * steps[None, None, :, None]  # [M, 1, P, 2]
        with torch.no_grad():
            nn.init.zeros_(self.sampling_offsets.weight)
            self.sampling_offsets.bias.copy_(grid.expand(m, nl, p, 2).reshape(-1))
            nn.init.zeros_(self.attention_weights.weight)
            nn.init.zeros_(self.attention_weights.bias)
            nn.init.xavier_uniform_(self.value_proj.weight)
            nn.init.zeros_(self.value_proj.bias)
            nn.init.xavier_uniform_(self.output_proj.weight)
            nn.init.zeros_(self.output_proj.bias)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, n_points={self.n_points}"

    def _check(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Shapes,
        input_level_start_index: Union[Tensor, Sequence[int]],
        input_padding_mask: Optional[Tensor],
    ) -> None:
        c, nl = self.d_model, self.n_levels
        if query.dim() != 3 or query.shape[-1] != c:
            raise ValueError(f"query must be [N, Lq, d_model={c}], got shape {tuple(query.shape)}")
        n, lq = query.shape[:2]
        if input_flatten.dim() != 3 or input_flatten.shape[0] != n or input_flatten.shape[-1] != c:
            raise ValueError(
                f"input_flatten must be [N={n}, S, d_model={c}] (N as query {tuple(query.shape)}), got shape "
                f"{tuple(input_flatten.shape)}"
            )
        if reference_points.dim() != 4 or tuple(reference_points.shape[:3]) != (n, lq, nl):
            raise ValueError(
                f"reference_points must be [N={n}, Lq={lq}, n_levels={nl}, 2 or 4], got shape "
                f"{tuple(reference_points.shape)}"
            )
        if reference_points.shape[-1] not in (2, 4):
            raise ValueError(
                "the last dim of reference_points must be 2 (points x, y) or 4 (boxes cx, cy, w, h), got shape "
                f"{tuple(reference_points.shape)}"
            )
        shapes = _shape_list(input_spatial_shapes, "input_spatial_shapes")
        if len(shapes) != nl:
            raise ValueError(f"input_spatial_shapes must have n_levels={nl} rows (H, W), got {shapes}")
        s = input_flatten.shape[1]
        if sum(h * w for h, w in shapes) != s:
            raise ValueError(
                f"input_flatten has S = {s} rows (shape {tuple(input_flatten.shape)}) but input_spatial_shapes "
                f"{shapes} sum to {sum(h * w for h, w in shapes)} cells (sum H*W)"
            )
        starts = level_starts(shapes)
        is_tensor = isinstance(input_level_start_index, Tensor)
        given = input_level_start_index.tolist() if is_tensor else list(input_level_start_index)
        if (is_tensor and input_level_start_index.dim() != 1) or given != starts:
            raise ValueError(
                f"input_level_start_index must be the first row of each level, {starts} for input_spatial_shapes "
                f"{shapes}, got {given}"
            )
        if input_padding_mask is not None:
            if tuple(input_padding_mask.shape) != (n, s):
                raise ValueError(
                    f"input_padding_mask must be [N={n}, S={s}] as input_flatten, got shape "
                    f"{tuple(input_padding_mask.shape)}"
                )
            if input_padding_mask.dtype != torch.bool:
                raise ValueError(f"input_padding_mask must be bool (True = padding), got {input_padding_mask.dtype}")

    def sampling(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Shapes,
        input_level_start_index: Union[Tensor, Sequence[int]],
        input_padding_mask: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """What :meth:`forward` hands to :func:`ms_deform_attn` (same arguments as :meth:`forward`).

        Returns:
            ``value [N, S, M, D]`` (``value_proj`` of ``input_flatten``, padded rows zero, split
            into heads), ``sampling_locations [N, Lq, M, L, P, 2]`` and
            ``attention_weights [N, Lq, M, L, P]`` (softmax over each head's ``L * P`` points).
            With point references ``loc = ref + offset / (W_l, H_l)`` (offsets in pixels of each
            level); with box references ``loc = ref_xy + offset / P * ref_wh / 2`` (at the
            initialization, the outermost ring of points lies on the box's border).
        """
        self._check(query, reference_points, input_flatten, input_spatial_shapes, input_level_start_index,
                    input_padding_mask)
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        m, nl, p = self.n_heads, self.n_levels, self.n_points

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, nl, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, nl * p).softmax(-1).view(n, lq, m, nl, p)
        # reference points [N, Lq, L, 2|4] broadcast against offsets [N, Lq, M, L, P, 2]
        ref = reference_points[:, :, None, :, None, :]
        if reference_points.shape[-1] == 2:
            if isinstance(input_spatial_shapes, Tensor):
                shapes = input_spatial_shapes.to(device=offsets.device)
            else:
                shapes = torch.tensor(_shape_list(input_spatial_shapes), device=offsets.device)
            normalizer = torch.stack([shapes[:, 1], shapes[:, 0]], -1)  # [L, 2] as (W, H)
            locations = ref + offsets / normalizer[None, None, None, :, None, :]
        else:
            locations = ref[..., :2] + offsets / p * ref[..., 2:] * 0.5
        return value, locations, weights

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Shapes,
        input_level_start_index: Union[Tensor, Sequence[int]],
        input_padding_mask: Optional[Tensor] = None,
        return_sampling: bool = False,
    ) -> Union[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Deformable attention of each query to the multi-level input.

        Args:
            query: ``[N, Lq, C]`` (content plus position, as the caller chooses).
            reference_points: ``[N, Lq, L, 2]`` points ``(x, y)`` in ``[0, 1]`` of each level's
                padded map (top-left ``(0, 0)``), or ``[N, Lq, L, 4]`` boxes ``(cx, cy, w, h)``.
            input_flatten: ``[N, S, C]``, the levels flattened as described in the module docstring.
            input_spatial_shapes: ``[L, 2]`` int64 ``(H_l, W_l)``, or a list of ``(H_l, W_l)``
                (what code traced by ``torch.export`` passes: its sizes are symbolic, and a tensor
                of them would have to be read back as data).
            input_level_start_index: ``[L]`` int64, the first row of each level (checked against
                the shapes; the sampling itself needs only the shapes), or a list of them.
            input_padding_mask: ``[N, S]`` bool, True at padding cells (their values are zeroed),
                or None.

            return_sampling: also return where it read, for pictures of the attention.

        Returns:
            ``[N, Lq, C]``; with ``return_sampling``, the tuple ``(output, sampling_locations
            [N, Lq, M, L, P, 2], attention_weights [N, Lq, M, L, P])`` (see :meth:`sampling`), the
            output being the same tensor either way.
        """
        value, locations, weights = self.sampling(
            query, reference_points, input_flatten, input_spatial_shapes, input_level_start_index, input_padding_mask
        )
        out = self.output_proj(ms_deform_attn(value, input_spatial_shapes, locations, weights))
        return (out, locations, weights) if return_sampling else out
