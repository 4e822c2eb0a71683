"""The measured results the package ships for the book (``dt.benchmark_results``).

``benchmarks/bench_families.py`` and ``benchmarks/bench_deformable_attention.py`` store them; chapter
10 prints them. These tests hold the stored files to what the benchmarks claim to have run: the
recipes' budgets, the sweep's sizes, complete metrics, a curve that ends where training ended.
"""
from __future__ import annotations

import math

import pytest

import detr_tutorial as dt
from detr_tutorial.stored_results import available_results
from detr_tutorial.recipes import FAMILY_STEPS, SHAPES_BATCH_SIZES
from detr_tutorial.size_sweep import SWEEP_SIZES

FAMILY_RESULTS = [name for name in available_results() if name.startswith("families_")]


def test_an_unknown_name_is_refused_naming_the_stored_ones():
    with pytest.raises(FileNotFoundError, match="no stored benchmark results named 'families_huge'.*families_standard"):
        dt.benchmark_results("families_huge")


def test_the_standard_comparison_and_the_attention_cost_are_stored():
    assert {"families_standard", "deformable_attention"} <= set(available_results())


@pytest.mark.parametrize("name", FAMILY_RESULTS)
def test_each_family_ran_its_recipe_to_the_end_and_was_measured_at_every_size(name):
    results = dt.benchmark_results(name)
    assert name == f"families_{results['variant']}"
    for family, r in results["families"].items():
        recipe = dt.get_recipe(r["recipe"])
        assert r["recipe"] == f"shapes-{family}"
        assert r["steps"] == recipe.max_steps == FAMILY_STEPS[family]
        assert recipe.batch_image_sizes == SHAPES_BATCH_SIZES
        assert [int(size) for size in r["sweep"]] == list(SWEEP_SIZES)
        assert all(0.0 <= ap <= 1.0 for ap in r["sweep"].values())
        assert set(r["metrics_128"]) == {"AP", "AP50", "AP75", "APs", "APm"}
        assert 0.0 <= r["metrics_128"]["AP"] <= r["metrics_128"]["AP50"] <= 1.0
        steps = [p["step"] for p in r["curve"]]
        assert steps == sorted(steps) and steps[-1] == r["steps"], f"{family}: the curve must end at the last step"
        assert r["minutes"] > 0 and r["seconds_per_step"] > 0 and r["images_per_s"] > 0 and r["parameters"] > 0


def test_the_small_object_variant_draws_objects_of_6_to_16_px():
    if "families_small" not in available_results():
        pytest.skip("the small-object variant has not been stored (python benchmarks/bench_families.py --variant small)")
    assert dt.benchmark_results("families_small")["objects_px"] == [6, 16]


def test_the_attention_cost_has_dense_and_deformable_times_at_every_side():
    cpu = dt.benchmark_results("deformable_attention")["devices"]["cpu"]
    assert len(cpu["sides"]) >= 2
    for side, r in cpu["sides"].items():
        for variant in ("dense s32", "deformable s32", "deformable s8", "deformable 4 levels"):
            assert r["train_ms"][variant] > 0 and r["infer_ms"][variant] > 0, (side, variant)
        assert r["cells"]["deformable s8"] == math.ceil(int(side) / 8) ** 2
