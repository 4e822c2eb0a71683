"""Multi-scale deformable attention: the core and the module against the official Deformable DETR.

The reference tensors in ``../shared/reference/deformable/`` were written by the official
fundamentalvision/Deformable-DETR code (its ``ms_deform_attn_core_pytorch`` and ``MSDeformAttn``;
see the README there). The other tests are independent: a brute-force bilinear sampler, pixel
centres, hand-computed initial sampling points, and the shape errors.
"""
from __future__ import annotations

import math

import pytest
import torch

from detr_tutorial.models.ms_deform_attn import (MSDeformAttn, level_start_index, ms_deform_attn,
                                                 splat_sampling_points)
from reference_data import reference_path

TOL = 1e-5


def _load(name: str) -> dict:
    return torch.load(reference_path(f"deformable/{name}"), weights_only=True)


def _module_args(io: dict, fmt: str) -> tuple:
    return (io["query"], io[f"reference_points_{fmt}"], io["input_flatten"], io["input_spatial_shapes"],
            io["input_level_start_index"], io["input_padding_mask"])


def _official_module(which: str) -> MSDeformAttn:
    module = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=3).eval()
    module.load_state_dict(_load(f"msda_module_{which}.pth")["model"])
    return module


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# --- the core against the official ms_deform_attn_core_pytorch ------------------------------------

def test_core_equals_official_output_including_points_outside_the_map():
    ref = _load("msda_core.pt")
    loc = ref["sampling_locations"]
    outside = ((loc < 0) | (loc > 1)).any(-1).float().mean().item()
    assert outside > 0.4  # the README: 48.8 % of the points have a coordinate outside [0, 1]
    out = ms_deform_attn(ref["value"], ref["value_spatial_shapes"], loc, ref["attention_weights"])
    assert _max_diff(out, ref["output"]) <= TOL


def test_core_gradients_equal_official_for_value_locations_and_weights():
    ref = _load("msda_core.pt")
    value, loc, weights = (ref[k].clone().requires_grad_()
                           for k in ("value", "sampling_locations", "attention_weights"))
    out = ms_deform_attn(value, ref["value_spatial_shapes"], loc, weights)
    (out * ref["grad_output"]).sum().backward()
    assert _max_diff(value.grad, ref["grad_value"]) <= TOL
    assert _max_diff(loc.grad, ref["grad_sampling_locations"]) <= TOL
    assert _max_diff(weights.grad, ref["grad_attention_weights"]) <= TOL


def test_level_start_index_of_the_official_shapes():
    ref = _load("msda_core.pt")
    assert torch.equal(level_start_index(ref["value_spatial_shapes"]), ref["value_level_start_index"])


# --- the module against the official MSDeformAttn -------------------------------------------------

def test_initialization_equals_official_deterministic_tensors():
    torch.manual_seed(0)
    ours = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=3).state_dict()
    official = _load("msda_module_init.pth")["model"]
    assert set(ours) == set(official)
    for key in ("sampling_offsets.weight", "sampling_offsets.bias", "attention_weights.weight",
                "attention_weights.bias", "value_proj.bias", "output_proj.bias"):
        assert _max_diff(ours[key], official[key]) <= 1e-7, key


@pytest.mark.parametrize("name", ["value_proj", "output_proj"])
def test_initialization_projections_are_xavier_uniform_with_zero_bias(name):
    torch.manual_seed(0)
    ours = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=3).state_dict()
    official = _load("msda_module_init.pth")["model"]
    bound = math.sqrt(6.0 / (32 + 32))  # xavier-uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
    for sd in (ours, official):
        weight = sd[f"{name}.weight"]
        assert weight.shape == official[f"{name}.weight"].shape == (32, 32)
        assert weight.abs().max() <= bound
        assert weight.abs().max() > 0.95 * bound  # 1024 uniform draws: the largest is near the bound
        assert abs(weight.std().item() - bound / math.sqrt(3)) < 0.1 * bound
        assert torch.equal(sd[f"{name}.bias"], torch.zeros(32))


@pytest.mark.parametrize("which", ["init", "perturbed"])
@pytest.mark.parametrize("fmt", ["2d", "4d"])
def test_module_output_equals_official_with_padding_mask(which, fmt):
    io = _load("msda_module_io.pt")
    assert io["input_padding_mask"][1].sum() == 36  # item 1 is padded: the mask takes part
    with torch.no_grad():
        out = _official_module(which)(*_module_args(io, fmt))
    assert _max_diff(out, io[f"{which}_output_{fmt}"]) <= TOL


@pytest.mark.parametrize("which", ["init", "perturbed"])
@pytest.mark.parametrize("fmt", ["2d", "4d"])
def test_module_sampling_intermediates_equal_official(which, fmt):
    io = _load("msda_module_io.pt")
    with torch.no_grad():
        value, loc, weights = _official_module(which).sampling(*_module_args(io, fmt))
    assert _max_diff(value, io[f"{which}_value_{fmt}"]) <= TOL
    assert _max_diff(loc, io[f"{which}_sampling_locations_{fmt}"]) <= TOL
    assert _max_diff(weights, io[f"{which}_attention_weights_{fmt}"]) <= TOL
    assert torch.equal(value[io["input_padding_mask"]], torch.zeros(36, 4, 8))


# --- independent checks ---------------------------------------------------------------------------

def _bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Brute force: ``img [H, W, D]`` at normalized ``(x, y)``; pixel coordinate ``x * W - 0.5``;
    the four neighbours weighted by the area of the opposite rectangle, zero outside the map."""
    h, w, _ = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    total = torch.zeros(img.shape[-1], dtype=img.dtype)
    for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * img[yy, xx]
    return total


def test_core_equals_brute_force_bilinear_sampler_loop():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    n, m, d, lq, p = 2, 2, 3, 3, 2
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    loc = torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    weights = torch.rand(n, lq, m, len(shapes), p, generator=g, dtype=torch.float64)
    expected = torch.zeros(n, lq, m * d, dtype=torch.float64)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                start = 0
                for lvl, (h, w) in enumerate(shapes):
                    img = value[b, start:start + h * w, head].reshape(h, w, d)  # row-major level
                    for pt in range(p):
                        x, y = loc[b, q, head, lvl, pt].tolist()
                        expected[b, q, head * d:(head + 1) * d] += weights[b, q, head, lvl, pt] * _bilinear(img, x, y)
                    start += h * w
    out = ms_deform_attn(value, torch.tensor(shapes), loc, weights)
    assert _max_diff(out, expected) <= 1e-12


def test_one_point_at_a_pixel_centre_reads_that_pixel_exactly():
    h, w, d = 2, 4, 3
    value = torch.arange(h * w * d, dtype=torch.float32).reshape(1, h * w, 1, d)
    for i in range(h):
        for j in range(w):
            loc = torch.tensor([(j + 0.5) / w, (i + 0.5) / h]).view(1, 1, 1, 1, 1, 2)
            out = ms_deform_attn(value, torch.tensor([[h, w]]), loc, torch.ones(1, 1, 1, 1, 1))
            assert torch.equal(out.view(d), value[0, i * w + j, 0])


def test_point_a_pixel_beyond_the_border_reads_zero_and_half_a_pixel_beyond_reads_half():
    value = torch.ones(1, 4, 1, 1)  # one 2x2 level of ones
    shapes = torch.tensor([[2, 2]])
    # x = -0.25 is pixel coordinate -1: a whole pixel left of the first centre; x = 0 is the edge
    loc = torch.tensor([[-0.25, 0.25], [0.0, 0.25], [1.25, 0.75]]).view(1, 3, 1, 1, 1, 2)
    out = ms_deform_attn(value, shapes, loc, torch.ones(1, 3, 1, 1, 1))
    assert torch.equal(out.view(3), torch.tensor([0.0, 0.5, 0.0]))


def test_module_initial_points_ring_the_reference_and_are_equally_weighted():
    # one level of 10 x 20 cells, 4 heads: head m looks along (1, 0), (0, 1), (-1, 0), (0, -1)
    module = MSDeformAttn(d_model=8, n_levels=1, n_heads=4, n_points=2)
    ref = torch.tensor([0.5, 0.25]).view(1, 1, 1, 2)
    _, loc, weights = module.sampling(torch.randn(1, 1, 8), ref, torch.randn(1, 200, 8), torch.tensor([[10, 20]]),
                                      torch.tensor([0]))
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    steps = torch.tensor([1.0, 2.0])
    expected = ref.view(2) + directions[:, None, :] * steps[None, :, None] / torch.tensor([20.0, 10.0])
    assert _max_diff(loc.view(4, 2, 2), expected) <= 1e-6
    assert torch.equal(weights, torch.full((1, 1, 4, 1, 2), 0.5))


def test_module_box_references_put_the_outer_ring_on_the_box_border():
    # 8 heads: diagonal heads point to the box corners; the last point (P steps) reaches the border
    module = MSDeformAttn(d_model=8, n_levels=1, n_heads=8, n_points=2)
    box = torch.tensor([0.5, 0.5, 0.4, 0.2]).view(1, 1, 1, 4)
    _, loc, _ = module.sampling(torch.randn(1, 1, 8), box, torch.randn(1, 12, 8), torch.tensor([[3, 4]]),
                                torch.tensor([0]))
    outer = loc[0, 0, :, 0, -1]  # [M, 2]
    assert _max_diff(outer[0], torch.tensor([0.7, 0.5])) <= 1e-6  # right edge centre
    assert _max_diff(outer[1], torch.tensor([0.7, 0.6])) <= 1e-6  # bottom-right corner
    assert _max_diff(outer[2], torch.tensor([0.5, 0.6])) <= 1e-6  # bottom edge centre


def test_module_padding_cells_do_not_change_the_output():
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=3)
    shapes = torch.tensor([[4, 4], [2, 2]])
    x = torch.randn(1, 20, 16)
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, [3, 7, 11, 15, 17, 19]] = True  # last column of each level
    query, ref = torch.randn(1, 5, 16), torch.rand(1, 5, 2, 2)
    out = module(query, ref, x, shapes, level_start_index(shapes), mask)
    x2 = x.clone()
    x2[mask] = 1e3 * torch.randn(6, 16)
    assert torch.equal(out, module(query, ref, x2, shapes, level_start_index(shapes), mask))


def test_module_backward_reaches_every_parameter():
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    shapes = torch.tensor([[4, 4], [2, 2]])
    out = module(torch.randn(2, 5, 16), torch.rand(2, 5, 2, 2), torch.randn(2, 20, 16), shapes,
                 level_start_index(shapes))
    assert out.shape == (2, 5, 16)
    out.square().sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path is not checked here")
def test_core_on_cuda_equals_cpu():
    ref = _load("msda_core.pt")
    args = (ref["value"], ref["value_spatial_shapes"], ref["sampling_locations"], ref["attention_weights"])
    out = ms_deform_attn(*(a.cuda() for a in args))
    assert _max_diff(out.cpu(), ref["output"]) <= TOL


# --- shape errors name the argument -----------------------------------------------------------

def _core_inputs(s: int = 20, m: int = 2, levels: int = 2) -> dict:
    return dict(value=torch.zeros(1, s, m, 4), spatial_shapes=torch.tensor([[4, 4], [2, 2]][:levels]),
                sampling_locations=torch.zeros(1, 3, m, levels, 2, 2),
                attention_weights=torch.zeros(1, 3, m, levels, 2))


@pytest.mark.parametrize("change, message", [
    (dict(value=torch.zeros(1, 19, 2, 4)), "S = 19"),
    (dict(value=torch.zeros(1, 20, 8)), r"value must be \[N, S, M, D\]"),
    (dict(value=torch.zeros(1, 20, 3, 4)), "M = 3"),
    (dict(spatial_shapes=torch.tensor([[4, 4], [2, 2], [1, 1]])), "3 levels"),
    (dict(spatial_shapes=torch.tensor([4, 4])), r"spatial_shapes must be \[L, 2\]"),
    (dict(sampling_locations=torch.zeros(1, 3, 2, 2, 2, 3)), r"\(x, y\) last"),
    (dict(attention_weights=torch.zeros(1, 3, 2, 2, 3)), "attention_weights must be"),
])
def test_core_shape_errors_name_the_problem(change, message):
    with pytest.raises(ValueError, match=message):
        ms_deform_attn(**{**_core_inputs(), **change})


def test_module_rejects_d_model_not_divisible_by_heads():
    with pytest.raises(ValueError, match="d_model must be divisible by n_heads"):
        MSDeformAttn(d_model=30, n_heads=8)


def _module_inputs() -> dict:
    shapes = torch.tensor([[4, 4], [2, 2]])
    return dict(query=torch.zeros(1, 3, 8), reference_points=torch.zeros(1, 3, 2, 2),
                input_flatten=torch.zeros(1, 20, 8),
                input_spatial_shapes=shapes, input_level_start_index=level_start_index(shapes),
                input_padding_mask=torch.zeros(1, 20, dtype=torch.bool))


@pytest.mark.parametrize("change, message", [
    (dict(query=torch.zeros(1, 3, 6)), r"query must be \[N, Lq, d_model=8\]"),
    (dict(reference_points=torch.zeros(1, 3, 2, 3)), "must be 2 .* or 4"),
    (dict(reference_points=torch.zeros(1, 3, 3, 2)), "n_levels=2"),
    (dict(input_flatten=torch.zeros(1, 21, 8)), "S = 21"),
    (dict(input_spatial_shapes=torch.tensor([[4, 5]])), "n_levels=2 rows"),
    (dict(input_level_start_index=torch.tensor([0, 15])), r"input_level_start_index must be .*\[0, 16\]"),
    (dict(input_padding_mask=torch.zeros(1, 19, dtype=torch.bool)), r"input_padding_mask must be \[N=1, S=20\]"),
    (dict(input_padding_mask=torch.zeros(1, 20)), "must be bool"),
])
def test_module_shape_errors_name_the_argument(change, message):
    module = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2)
    with pytest.raises(ValueError, match=message):
        module(**{**_module_inputs(), **change})


# --- the splat: sampling points as a map, for pictures ------------------------------------------------
def test_splat_is_the_adjoint_of_the_sampling_on_its_own_grid():
    """On a level's own grid the splat gives each cell exactly the weight the sampling gives its
    value: sum(splat * V) is the weighted bilinear sample of V, for any map V (points near and past
    the border included)."""
    torch.manual_seed(0)
    h, w, k = 3, 5, 7
    loc = torch.rand(1, 1, 1, 1, k, 2, dtype=torch.float64) * 1.4 - 0.2  # some points off the map
    weights = torch.rand(1, 1, 1, 1, k, dtype=torch.float64)
    value = torch.randn(1, h * w, 1, 1, dtype=torch.float64)
    sampled = ms_deform_attn(value, torch.tensor([[h, w]]), loc, weights).view(())
    splat = splat_sampling_points(loc.view(k, 2), weights.view(k), (h, w))  # [h * w]
    assert abs(float((splat * value.view(h * w)).sum() - sampled)) <= 1e-12


def test_splat_of_a_point_at_a_cell_centre_puts_its_whole_weight_on_that_cell():
    h, w = 2, 4
    loc = torch.tensor([[(2 + 0.5) / w, (1 + 0.5) / h]])  # centre of cell (1, 2)
    splat = splat_sampling_points(loc, torch.tensor([0.3]), (h, w))
    expected = torch.zeros(h * w)
    expected[1 * w + 2] = 0.3
    assert torch.equal(splat, expected)


def test_splat_halfway_between_two_centres_splits_the_weight_evenly():
    loc = torch.tensor([[0.5, 0.25]])  # between cells (0, 1) and (0, 2) of a 2 x 4 grid
    splat = splat_sampling_points(loc, torch.tensor([1.0]), (2, 4)).view(2, 4)
    assert torch.allclose(splat, torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]))


def test_splat_keeps_the_total_weight_except_what_falls_off_the_grid():
    # a 2 x 2 grid: inside the square of cell centres all weight stays; on the edge (x = 0, half a
    # cell beyond the first centre) half of it is lost; a whole cell beyond, all of it
    loc = torch.tensor([[0.3, 0.6], [0.0, 0.25], [-0.25, 0.5], [0.75, 0.75]])
    weights = torch.tensor([0.4, 0.2, 0.3, 0.1])
    kept = [float(splat_sampling_points(loc[i:i + 1], weights[i:i + 1], (2, 2)).sum()) for i in range(4)]
    assert kept == pytest.approx([0.4, 0.1, 0.0, 0.1])


def test_splat_keeps_leading_dimensions_and_rejects_mismatched_shapes():
    out = splat_sampling_points(torch.rand(2, 3, 5, 2), torch.rand(2, 3, 5), (4, 6))
    assert out.shape == (2, 3, 24)
    with pytest.raises(ValueError, match=r"\[\.\.\., K, 2\]"):
        splat_sampling_points(torch.rand(2, 5, 2), torch.rand(2, 4), (4, 6))


def test_module_return_sampling_gives_the_same_output_and_the_sampling_tensors():
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=3)
    shapes = torch.tensor([[4, 4], [2, 2]])
    args = (torch.randn(1, 5, 8), torch.rand(1, 5, 2, 2), torch.randn(1, 20, 8), shapes, level_start_index(shapes))
    out, loc, weights = module(*args, return_sampling=True)
    _, expected_loc, expected_weights = module.sampling(*args)
    assert torch.equal(out, module(*args))
    assert torch.equal(loc, expected_loc) and torch.equal(weights, expected_weights)
