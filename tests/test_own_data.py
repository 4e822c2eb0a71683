"""The CPU recipe on a user's own COCO-format folder: both splits at the recipe's image size.

The folder is drawn here (not the shapes data set): 128-px images of filled rectangles and
ellipses, 10 categories with the non-contiguous ids 100, 102, ..., 118 listed out of order.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from detr_tutorial.data.transforms import ImageSizes
from detr_tutorial.recipes import get_recipe
from detr_tutorial.train import build_datasets, image_sizes

CATEGORY_IDS = list(range(100, 120, 2))  # 10 classes
TINY = [
    "--set", "model.hidden_dim=32", "--set", "model.nheads=2", "--set", "model.enc_layers=1",
    "--set", "model.dec_layers=1", "--set", "model.dim_feedforward=64", "--set", "model.num_queries=8",
    "--set", "batch_size=4", "--set", "num_workers=0", "--set", "amp=none", "--set", "channels_last=false",
]  # fmt: skip


def write_split(root: Path, split: str, n: int, seed: int, size: int = 128) -> None:
    """``root/annotations/instances_{split}.json`` and ``root/{split}/*.png``: ``n`` images of
    1-3 shapes each, category ids from :data:`CATEGORY_IDS`."""
    rng = random.Random(seed)
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        image = Image.new("RGB", (size, size), (20, 20, 20))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(1, 3)):
            w, h = rng.randint(16, 48), rng.randint(16, 48)
            x, y = rng.randint(0, size - w), rng.randint(0, size - h)
            cat = rng.choice(CATEGORY_IDS)
            colour = (40 + 20 * CATEGORY_IDS.index(cat), 255 - 20 * CATEGORY_IDS.index(cat), 128)
            shape = draw.rectangle if cat % 4 == 0 else draw.ellipse
            shape([x, y, x + w - 1, y + h - 1], fill=colour)
            annotations.append({"id": len(annotations) + 1, "image_id": 1000 + i, "category_id": cat,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        image.save(root / split / f"{i:03d}.png")
        images.append({"id": 1000 + i, "file_name": f"{i:03d}.png", "width": size, "height": size})
    categories = [{"id": c, "name": f"class{c}"} for c in reversed(CATEGORY_IDS)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


@pytest.fixture(scope="module")
def own_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("my_folder")
    write_split(root, "train", 8, seed=0)
    write_split(root, "val", 4, seed=1)
    return root


def cpu_recipe_on_a_folder(**overrides):
    """What ``train --recipe shapes-cpu --data-dir DIR`` trains: the recipe on the folder data set."""
    return get_recipe("shapes-cpu", dataset="folder", **overrides)


def test_the_cpu_recipe_states_the_image_size_it_was_made_for():
    assert get_recipe("shapes-cpu").image_size == 128


def test_the_cpu_recipe_sizes_both_splits_of_a_folder_at_its_image_size():
    sizes = image_sizes(cpu_recipe_on_a_folder())
    assert sizes["train"].shorter == (128,) and sizes["val"].shorter == (128,)  # not the folder preset's 800


def test_the_images_of_both_splits_come_out_at_the_recipes_size(own_folder):
    train_set, val_set = build_datasets(cpu_recipe_on_a_folder(), str(own_folder))
    assert list(train_set.class_names) == [f"class{c}" for c in CATEGORY_IDS]
    # (after the random crop torchvision's RandomShortestSize floors a side: 127 px now and then)
    assert all(abs(min(train_set[i][0].shape[-2:]) - 128) <= 1 for i in range(len(train_set)))
    assert {tuple(val_set[i][0].shape[-2:]) for i in range(len(val_set))} == {(128, 128)}


def test_another_image_size_resizes_both_splits(own_folder):
    train_set, val_set = build_datasets(cpu_recipe_on_a_folder(image_size=96), str(own_folder))
    assert all(abs(min(train_set[i][0].shape[-2:]) - 96) <= 1 for i in range(len(train_set)))
    assert tuple(val_set[0][0].shape[-2:]) == (96, 96)


def test_a_split_size_option_overrides_the_image_size_for_that_split_only():
    sizes = image_sizes(cpu_recipe_on_a_folder(dataset_options={"val_size": 160}))
    assert sizes["train"] == ImageSizes((128,), 1333) and sizes["val"] == ImageSizes((160,), 1333)


def test_a_recipe_without_image_size_keeps_the_data_sets_preset_sizes():
    sizes = image_sizes(get_recipe("coco-r50"))
    assert sizes["train"].shorter == tuple(range(480, 801, 32)) and sizes["val"].shorter == (800,)


@pytest.mark.parametrize("bad", [0, -128, 12.5, "128", True])
def test_image_size_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        get_recipe("shapes-cpu", image_size=bad)


def test_train_logs_the_sizes_and_warns_when_evaluation_is_outside_the_training_sizes(caplog):
    from detr_tutorial.train import _log_image_sizes

    with caplog.at_level(logging.INFO, logger="detr_tutorial.train"):
        _log_image_sizes(cpu_recipe_on_a_folder(dataset_options={"val_size": 800}))
    assert "training at shorter side 128 px (longer side at most 1333 px); evaluation at shorter side 800 px" in caplog.text
    assert any(r.levelno == logging.WARNING and "outside the training sizes" in r.message for r in caplog.records)


def test_train_on_an_own_folder_with_the_cpu_recipe_uses_its_size_for_both_splits(own_folder, tmp_path, capsys, caplog):
    """``python -m detr_tutorial train --recipe shapes-cpu --data-dir my_folder``, 2 tiny steps."""
    from detr_tutorial.checkpoint import load_checkpoint
    from detr_tutorial.cli import main

    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="detr_tutorial.train"):
        code = main(["train", "--recipe", "shapes-cpu", "--data-dir", str(own_folder), "--max-steps", "2",
                     "--output-dir", str(out), "--no-progress", *TINY])
    assert code == 0, capsys.readouterr().err[-2000:]
    line = "image sizes (folder data set): training at shorter side 128 px (longer side at most 1333 px); " \
           "evaluation at shorter side 128 px (longer side at most 1333 px)"
    assert line in caplog.text
    assert not any(r.levelno >= logging.WARNING and "outside" in r.message for r in caplog.records)
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert start["kind"] == "start" and start["image_sizes"]["val"].startswith("shorter side 128 px")
    state = load_checkpoint(out / "model_final.pth")
    assert {int(k): v for k, v in state["label_map"].items()} == dict(enumerate(CATEGORY_IDS))
    trained = json.loads((out / "metrics.json").read_text())
    assert trained["step"] == 2
    # ``eval`` scores the model at the size it was trained for, as the end of training did
    code = main(["eval", "--checkpoint", str(out / "model_final.pth"), "--dataset", "folder", "--data-dir",
                 str(own_folder), "--split", "val", "--json", str(tmp_path / "eval.json"), "--no-progress"])
    assert code == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated == {k: v for k, v in trained.items() if k in evaluated} and "AP" in evaluated


def test_evaluation_transforms_follow_the_checkpoints_recipe(own_folder):
    from detr_tutorial.data import build_dataset
    from detr_tutorial.train import eval_transforms

    recipe = cpu_recipe_on_a_folder().to_dict()  # as a checkpoint stores it
    val_set = build_dataset("folder", "val", own_folder, transforms=eval_transforms(recipe, "folder"))
    assert tuple(val_set[0][0].shape[-2:]) == (128, 128)
    bigger = build_dataset("folder", "val", own_folder, transforms=eval_transforms(recipe, "folder", val_size=160))
    assert tuple(bigger[0][0].shape[-2:]) == (160, 160)
    preset = build_dataset("folder", "val", own_folder, transforms=eval_transforms(None, "folder"))
    assert tuple(preset[0][0].shape[-2:]) == (800, 800)  # no recipe: the folder preset's size
