"""Multi-scale training with one image size per batch (``Recipe.batch_image_sizes``).

A model trained on padded batches of mixed sizes can read an image's size from its padding; a
model trained at one size learns box sizes relative to that image. One size per batch gives
both the scale variety and batches without padding. These tests state the contract: every
process and a resumed run draw the same size for a batch, the data set draws or resizes each
image to it, the trainer's batches are unpadded, and bad settings are refused by name.
"""
import dataclasses

import pytest
import torch

import detr_tutorial as dt
from detr_tutorial.data.shapes import ShapesConfig, ShapesDataset
from detr_tutorial.data.transforms import make_transforms
from detr_tutorial.recipes import FAMILY_STEPS, SHAPES_BATCH_SIZES
from detr_tutorial.sampling import ResumableBatchSampler, SeededSamples
from detr_tutorial.size_sweep import shapes_map_at_sizes
from detr_tutorial.train import build_datasets, image_sizes

SIZES = [96, 120, 150, 176]


def _sizes_of(batches):
    sizes = []
    for batch in batches:
        assert len({item[2] for item in batch}) == 1  # one size per batch
        sizes.append(batch[0][2])
    return sizes


# -- the sampler ------------------------------------------------------------------------------------
def test_every_item_of_a_batch_carries_the_batch_size_drawn_from_the_list():
    s = ResumableBatchSampler(400, 4, seed=3, sizes=SIZES)
    s.set_epoch(0)
    sizes = _sizes_of(s)
    assert set(sizes) == set(SIZES)  # 100 batches draw every size
    assert all(len(item) == 3 for batch in s for item in batch)


def test_all_processes_draw_the_same_size_for_a_global_batch_and_a_resumed_run_too():
    one = ResumableBatchSampler(40, 4, seed=3, sizes=SIZES)
    ranks = [ResumableBatchSampler(40, 2, seed=3, rank=r, world_size=2, sizes=SIZES) for r in range(2)]
    for s in (one, *ranks):
        s.set_epoch(1)
    for big, (a, b) in zip(one, zip(*ranks)):
        assert big == a + b
    one.set_epoch(1, start_batch=4)
    full = ResumableBatchSampler(40, 4, seed=3, sizes=SIZES)
    full.set_epoch(1)
    assert list(one) == list(full)[4:]
    full.set_epoch(2)
    assert _sizes_of(full) != _sizes_of(one)  # each epoch draws anew


def test_without_sizes_the_items_are_the_old_pairs():
    s = ResumableBatchSampler(8, 4, seed=3)
    s.set_epoch(0)
    assert all(len(item) == 2 for batch in s for item in batch)
    assert s.batch_size_px(0) is None


@pytest.mark.parametrize("sizes", [[], [96, 0], [96.0], [True]])
def test_bad_sizes_are_refused(sizes):
    with pytest.raises(ValueError, match="sizes must be a non-empty list of positive ints"):
        ResumableBatchSampler(8, 4, sizes=sizes)


# -- the data sets --------------------------------------------------------------------------------
def test_shapes_draws_an_image_on_the_asked_canvas_with_objects_of_the_configured_pixel_sizes():
    data = ShapesDataset("train", transforms=make_transforms("train", "shapes", resize=False, normalize=False))
    for size in (96, 150, 176):
        image, target = data.sized_item(7, size)
        assert image.shape == (3, size, size)
        assert tuple(target["size"].tolist()) == (size, size)
        sides = target["boxes"][:, 2:] * size  # cxcywh normalized -> pixels
        assert len(sides) and ((sides >= 11.5) & (sides <= 48.5)).all(), sides


def test_shapes_at_its_own_size_is_its_own_image():
    data = ShapesDataset("val", transforms=make_transforms("val", "shapes"))
    a, ta = data[3]
    b, tb = data.sized_item(3, 128)
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])


def test_shapes_refuses_a_canvas_smaller_than_its_largest_object():
    data = ShapesDataset("train")
    with pytest.raises(ValueError, match="cannot draw shapes at 40 px"):
        data.sized_item(0, 40)


def test_other_data_sets_resize_the_shorter_side_and_the_boxes_with_it():
    data = ShapesDataset("val", transforms=make_transforms("val", "shapes", normalize=False))
    image, target = data[0]
    # the base class's resize, on a data set that does not draw at any size
    resized = dt.data.base.DetectionDataset.load_sized(data, 0, 64)
    small, small_target = data._transform(*resized)
    assert small.shape == (3, 64, 64)
    torch.testing.assert_close(small_target["boxes"], target["boxes"])  # normalized boxes keep their place
    assert tuple(small_target["orig_size"].tolist()) == (128, 128)


def test_seeded_samples_load_a_sized_item_under_its_seed():
    data = SeededSamples(ShapesDataset("train", transforms=make_transforms("train", "shapes", resize=False)))
    first = data[(5, 11, 150)]
    assert first[0].shape == (3, 150, 150)
    again = data[(5, 11, 150)]
    assert torch.equal(first[0], again[0])
    flips = {bool(torch.equal(data[(5, s, 150)][0], first[0])) for s in range(12)}
    assert flips == {True, False}  # the seed decides the flip


# -- recipes and the trainer -------------------------------------------------------------------------
def _recipe(**kw):
    base = dt.get_recipe("shapes-cpu").replace(image_size=None, batch_image_sizes=[96, 112], max_steps=2,
                                                batch_size=4, eval_every=0, checkpoint_every=0, num_workers=0)
    return base.replace(**kw)


def test_the_training_split_draws_at_the_batch_sizes_and_only_flips():
    recipe = _recipe()
    train, val = build_datasets(recipe)
    assert [type(t).__name__ for t in train.transforms.transforms[:2]] == ["RandomHorizontalFlip", "SanitizeBoundingBoxes"]
    assert str(image_sizes(recipe)["train"]) == "one size per batch, of 96, 112 px (no padding)"
    assert val[0][0].shape == (3, 128, 128)


@pytest.mark.parametrize("change, message", [
    (dict(image_size=128), "set image_size=None"),
    (dict(dataset_options={"train_scales": [128]}), "drop dataset_options \\['train_scales'\\]"),
    (dict(batch_image_sizes=[]), "batch_image_sizes must be a non-empty list"),
    (dict(batch_image_sizes=[128, -1]), "batch_image_sizes must be a non-empty list"),
])
def test_recipes_refuse_settings_that_would_resize_twice_or_are_not_sizes(change, message):
    with pytest.raises(ValueError, match=message):
        _recipe(**change)


def test_training_batches_are_unpadded_and_of_the_drawn_sizes(tmp_path):
    seen = []
    recipe = _recipe(max_steps=4)
    trainer = dt.Trainer(recipe, tmp_path, device="cpu", final_eval=False, progress=False)
    trainer.setup()
    model_forward = trainer.train_model.forward

    def recording_forward(samples, *args, **kwargs):
        seen.append((tuple(samples.tensors.shape[-2:]), bool(samples.mask.any())))
        return model_forward(samples, *args, **kwargs)

    trainer.train_model.forward = recording_forward
    trainer.run()
    assert len(seen) == 4
    drawn = [trainer.sampler.batch_size_px(b, epoch=0) for b in range(4)]
    assert [s for s, _ in seen] == [(d, d) for d in drawn]
    assert not any(padded for _, padded in seen)


def test_a_training_set_without_sized_items_is_refused_by_name(tmp_path):
    from training_helpers import TinyBoxes

    with pytest.raises(ValueError, match="batch_image_sizes needs a training set .* TinyBoxes has none"):
        dt.train(_recipe(), tmp_path, device="cpu", datasets=(TinyBoxes(8), None), final_eval=False, progress=False)


# -- the size sweep ----------------------------------------------------------------------------------
def test_size_sweep_scores_each_canvas_and_refuses_canvases_smaller_than_the_objects():
    model = dt.load_shipped_model()
    table = shapes_map_at_sizes(model, sizes=(128, 150), num_images=20, batch_size=10)
    assert set(table) == {128, 150} and all(0.0 <= m["AP"] <= 1.0 for m in table.values())
    small = dataclasses.replace(ShapesConfig(), max_size=40)
    with pytest.raises(ValueError, match="at least max_size=40 px"):
        shapes_map_at_sizes(model, sizes=(32,), config=small)


# -- the family recipes ------------------------------------------------------------------------------
FAMILY_RECIPES = ["shapes-detr", "shapes-conditional", "shapes-deformable", "shapes-rtdetr"]


@pytest.mark.parametrize("name", FAMILY_RECIPES)
def test_each_family_recipe_builds_its_family_and_trains_on_unpadded_batches(name, tmp_path):
    recipe = dt.get_recipe(name)
    assert recipe.batch_image_sizes == SHAPES_BATCH_SIZES
    assert recipe.max_steps == FAMILY_STEPS[name.split("-")[1]] and recipe.batch_size == 32 and recipe.seed == 42
    small = recipe.replace(max_steps=2, batch_size=2, eval_every=0, checkpoint_every=0, num_workers=0)
    result = dt.train(small, tmp_path, device="cpu", final_eval=False, progress=False)
    assert result.steps == 2
    family = dt.get_config(recipe.model, **recipe.model_overrides).family
    assert family == name.split("-")[1]


def test_family_recipes_share_everything_but_the_model_optimizer_and_step_count():
    recipes = [dt.get_recipe(n).to_dict() for n in FAMILY_RECIPES]
    own = {"name", "description", "model", "model_overrides", "lr", "lr_backbone", "schedule", "warmup_steps",
           "max_steps"}
    shared = [{k: v for k, v in r.items() if k not in own} for r in recipes]
    assert all(s == shared[0] for s in shared)
    trunks = [{k: r["model_overrides"][k] for k in ("backbone", "hidden_dim", "num_queries", "backbone_stride")}
              for r in recipes]
    assert all(t == trunks[0] for t in trunks)


def test_the_shipped_recipe_is_rtdetr_with_pixel_anchors_on_canvases_from_80_px(tmp_path):
    """``shapes-shipped`` (``make shipped-model``): the RT-DETR of the comparison with the changes
    benchmarks/RESULTS.md measured ("Notes: the shipped model"); it trains on unpadded batches."""
    from detr_tutorial.recipes import SHIPPED_BATCH_SIZES

    recipe = dt.get_recipe("shapes-shipped")
    rtdetr = dt.get_recipe("shapes-rtdetr")
    assert recipe.model == rtdetr.model and recipe.model_overrides["anchor_pixels"] == 8.0
    assert {k: v for k, v in recipe.model_overrides.items() if k != "anchor_pixels"} == rtdetr.model_overrides
    assert recipe.batch_image_sizes == SHIPPED_BATCH_SIZES == list(range(80, 177, 8))
    assert (recipe.batch_size, recipe.max_steps, recipe.lr, recipe.seed) == (16, 1800, 2e-3, 42)
    result = dt.train(recipe.replace(batch_size=2, num_workers=0, log_every=1, checkpoint_every=0, eval_every=0),
                      tmp_path, max_steps=2, final_eval=False, progress=False, device="cpu")
    assert result.steps == 2
