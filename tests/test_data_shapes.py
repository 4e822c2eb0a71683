"""The synthetic shapes data set: deterministic, boxes on the drawn objects, COCO export."""
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from detr_tutorial.data.shapes import CLASSES, ShapesConfig, ShapesDataset


def pixel_boxes(target):
    """Normalized (cx, cy, w, h) -> absolute (x1, y1, x2, y2) in the transformed image."""
    h, w = target["size"].tolist()
    cx, cy, bw, bh = (target["boxes"] * torch.tensor([w, h, w, h])).unbind(-1)
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)


def test_default_config_is_the_books_data_set():
    cfg = ShapesConfig()
    assert (cfg.image_size, cfg.num_classes, cfg.min_objects, cfg.max_objects) == (128, 3, 1, 6)
    assert (cfg.min_size, cfg.max_size) == (12, 48)
    assert 0 < cfg.empty_fraction < 0.2
    assert len(ShapesDataset("train")) == 4000 and len(ShapesDataset("val")) == 500
    assert ShapesDataset("val").class_names == CLASSES == ("circle", "rectangle", "triangle")


def test_label_info_maps_labels_to_names_and_category_ids():
    assert ShapesDataset("val", num_images=1).label_info() == {
        "class_names": ["circle", "rectangle", "triangle"],
        "label_to_cat_id": {0: 1, 1: 2, 2: 3},
    }


def test_same_index_gives_same_pixels_and_boxes_in_any_order_and_instance():
    forward = ShapesDataset("val", num_images=6)
    backward = ShapesDataset("val", num_images=6)
    first = [forward[i] for i in range(6)]
    second = {i: backward[i] for i in reversed(range(6))}
    for i, (image, target) in enumerate(first):
        image2, target2 = second[i]
        assert torch.equal(image, image2)
        assert torch.equal(target["boxes"], target2["boxes"])
        assert torch.equal(target["labels"], target2["labels"])


def test_train_and_val_splits_hold_different_images():
    train, val = ShapesDataset("train", num_images=3), ShapesDataset("val", num_images=3)
    for i in range(3):
        assert not torch.equal(train[i][0], val[i][0])


def test_image_is_float_rgb_in_unit_range_with_the_target_convention():
    image, target = ShapesDataset("val", num_images=2)[1]
    assert image.shape == (3, 128, 128) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    n = len(target["labels"])
    assert target["boxes"].shape == (n, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].dtype == torch.int64
    assert int(target["image_id"]) == 1
    assert target["orig_size"].tolist() == [128, 128] and target["size"].tolist() == [128, 128]


def test_boxes_lie_inside_the_image_with_sides_in_the_configured_range():
    ds = ShapesDataset("val", num_images=40)
    for i in range(len(ds)):
        boxes = pixel_boxes(ds[i][1])
        assert (boxes >= 0).all() and (boxes <= 128).all()
        sides = boxes[:, 2:] - boxes[:, :2]
        # a drawn side is at most max_size; rasterizing a circle never loses more than a pixel
        assert (sides >= 12 - 1).all() and (sides <= 48 + 1e-4).all()


def test_lone_object_box_is_the_bounding_box_of_its_pixels():
    """Recompute each object's pixels from the image (the colour it was filled with) and
    compare their bounding box with the target box."""
    cfg = ShapesConfig(min_objects=1, max_objects=1, empty_fraction=0.0)
    ds = ShapesDataset("val", config=cfg, num_images=12)
    seen = set()
    for i in range(len(ds)):
        image, target = ds[i]
        color = ds.scene(i).colors[0].astype(np.int16)
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.int16)
        mask = np.abs(pixels - color).max(axis=-1) <= 20  # noise is +-6, background >= 54 away
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        expected = torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)
        torch.testing.assert_close(pixel_boxes(target)[0], expected, atol=1e-3, rtol=0)
        seen.add(int(target["labels"][0]))
    assert seen == {0, 1, 2}


def test_every_object_stays_mostly_visible():
    cfg = ShapesConfig()
    ds = ShapesDataset("val", num_images=30)
    for i in range(len(ds)):
        scene = ds.scene(i)
        pixels = scene.image.astype(np.int16)
        for mask, color in zip(scene.masks, scene.colors.astype(np.int16)):
            shows_color = np.abs(pixels - color).max(axis=-1) <= 20
            assert (mask & shows_color).sum() >= cfg.min_visible * mask.sum()


def test_boxes_overlap_at_most_max_overlap():
    ds = ShapesDataset("val", num_images=40)
    for i in range(len(ds)):
        boxes = pixel_boxes(ds[i][1])
        iou = box_iou(boxes, boxes) - torch.eye(len(boxes))
        assert (iou <= ds.config.max_overlap + 1e-6).all()


def test_object_counts_and_labels_stay_in_range_and_some_images_are_empty():
    ds = ShapesDataset("val", num_images=120)
    counts = []
    for i in range(len(ds)):
        labels = ds.scene(i).labels
        assert ((labels >= 0) & (labels < 3)).all()
        counts.append(len(labels))
    assert min(counts) == 0 and max(counts) <= 6
    assert 0 < counts.count(0) < 0.2 * len(counts)
    assert len(set(counts) - {0}) >= 4  # several object counts, not a fixed number


def test_empty_fraction_zero_and_one():
    never = ShapesDataset("val", ShapesConfig(empty_fraction=0.0), num_images=30)
    always = ShapesDataset("val", ShapesConfig(empty_fraction=1.0), num_images=5)
    assert all(len(never.scene(i).labels) >= 1 for i in range(30))
    for i in range(5):
        _, target = always[i]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_fewer_classes_use_the_first_class_names():
    ds = ShapesDataset("val", ShapesConfig(num_classes=2), num_images=20)
    assert ds.class_names == ("circle", "rectangle") and ds.num_classes == 2
    assert all(ds.scene(i).labels.max(initial=0) <= 1 for i in range(20))


@pytest.mark.parametrize(
    "kwargs", [{"num_classes": 4}, {"min_objects": 3, "max_objects": 2}, {"min_size": 50, "max_size": 40},
               {"max_size": 200}, {"empty_fraction": 1.5}],
)
def test_invalid_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        ShapesConfig(**kwargs)


def test_unknown_split_and_too_many_images_are_rejected():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("test")
    with pytest.raises(ValueError, match="num_images"):
        ShapesDataset("val", num_images=501)
    with pytest.raises(IndexError):
        ShapesDataset("val", num_images=2)[2]


def test_coco_export_round_trips_through_pycocotools(tmp_path):
    ds = ShapesDataset("val", num_images=8)
    path = ds.write_coco_json(tmp_path / "val.json")
    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert sorted(coco.getImgIds()) == list(range(8))
    for i in range(8):
        _, target = ds[i]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=i))
        assert len(anns) == len(target["labels"])
        for ann, box, label in zip(anns, pixel_boxes(target), target["labels"]):
            x1, y1, x2, y2 = box.tolist()
            assert ann["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)
            assert ann["area"] == pytest.approx((x2 - x1) * (y2 - y1), abs=1e-2)
            assert ann["iscrowd"] == 0 and ann["category_id"] == int(label) + 1
    assert json.loads(path.read_text())["images"][0]["height"] == 128


def test_dataset_coco_object_matches_the_json_export(tmp_path):
    ds = ShapesDataset("val", num_images=5)
    exported = COCO(str(ds.write_coco_json(tmp_path / "gt.json")))
    assert ds.coco.dataset["annotations"] == exported.dataset["annotations"]
    assert ds.get_coco_api() is ds.coco


def test_export_writes_a_coco_folder_of_pngs(tmp_path):
    ds = ShapesDataset("val", num_images=3)
    ann_file = ds.export(tmp_path)
    assert ann_file == tmp_path / "annotations" / "instances_val.json"
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == [
        "val_000000.png", "val_000001.png", "val_000002.png"
    ]
