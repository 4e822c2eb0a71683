"""Augmentation moves the boxes with the image; collate pads a batch and masks the padding.

The sample: a 100 x 80 (w x h) image with two boxes (absolute x1, y1, x2, y2):
box A = (10, 20, 30, 60), label 1; box B = (70, 0, 100, 40), label 2.
"""
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from detr_tutorial.data.base import make_raw_target
from detr_tutorial.data.collate import collate_fn
from detr_tutorial.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomSizeCrop,
    ToDetrTarget,
    crop,
    make_transforms,
)  # fmt: skip

W, H = 100, 80


def sample(color=(255, 255, 255), width=W, height=H):
    image = Image.new("RGB", (width, height), color)
    target = make_raw_target([[10, 20, 30, 60], [70, 0, 100, 40]], [1, 2], image_id=7,
                             height=height, width=width)
    return image, target


def cxcywh(x1, y1, x2, y2, w, h):
    """Hand conversion of one pixel box to normalized (cx, cy, w, h)."""
    return [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]


def test_to_detr_target_normalizes_boxes_and_records_size():
    _image, target = ToDetrTarget()(*sample())
    expected = torch.tensor([[0.2, 0.5, 0.2, 0.5], [0.85, 0.25, 0.3, 0.5]])
    torch.testing.assert_close(target["boxes"], expected)
    assert target["size"].tolist() == [80, 100] and target["orig_size"].tolist() == [80, 100]
    assert target["labels"].tolist() == [1, 2] and int(target["image_id"]) == 7
    assert type(target["boxes"]) is torch.Tensor


def test_to_detr_target_rejects_plain_tensor_boxes():
    image, target = sample()
    target["boxes"] = torch.zeros(0, 4)
    with pytest.raises(TypeError, match="BoundingBoxes"):
        ToDetrTarget()(image, target)


def test_horizontal_flip_mirrors_boxes():
    pipeline = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.ToImage(), ToDetrTarget()])
    _, target = pipeline(*sample())
    # x -> 100 - x: A = (70, 20, 90, 60), B = (0, 0, 30, 40)
    expected = torch.tensor([cxcywh(70, 20, 90, 60, W, H), cxcywh(0, 0, 30, 40, W, H)])
    torch.testing.assert_close(target["boxes"], expected)


def test_horizontal_flip_moves_pixels_with_boxes():
    image = Image.new("RGB", (W, H), (0, 0, 0))
    image.paste((255, 255, 255), (10, 20, 30, 60))  # box A painted white
    pipeline = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.ToImage(), ToDetrTarget()])
    flipped, target = pipeline(image, make_raw_target([[10, 20, 30, 60]], [0], 0, H, W))
    cols = torch.nonzero(flipped[0].amax(0) > 0).flatten()
    rows = torch.nonzero(flipped[0].amax(1) > 0).flatten()
    pixel_box = torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]).float()
    torch.testing.assert_close(pixel_box, torch.tensor([70.0, 20, 90, 60]))
    torch.testing.assert_close(target["boxes"][0], torch.tensor(cxcywh(70, 20, 90, 60, W, H)))


def test_val_resize_sets_the_shorter_side():
    # shorter side 80 -> 40: the image halves, normalized boxes do not change
    image, target = make_transforms("val", "coco", val_size=40)(*sample())
    assert image.shape == (3, 40, 50) and target["size"].tolist() == [40, 50]
    assert target["orig_size"].tolist() == [80, 100]
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.2, 0.5, 0.2, 0.5], [0.85, 0.25, 0.3, 0.5]]))


def test_coco_val_preset_is_800_with_longer_side_capped_at_1333():
    image, target = make_transforms("val", "coco")(*sample(width=30, height=20))
    assert target["size"].tolist() == [800, 1200]  # 20 -> 800, 30 -> 1200 <= 1333
    image, target = make_transforms("val", "coco")(*sample(width=60, height=20))
    # 60 -> 2400 > 1333: the longer side becomes 1333, the shorter int(1333 * 20 / 60) = 444
    assert target["size"].tolist() == [444, 1333] and image.shape == (3, 444, 1333)


def test_multi_scale_resize_picks_a_listed_shorter_side():
    pipeline = make_transforms("train", "coco", scales=[40, 60], crop=False)
    sizes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        _, target = pipeline(*sample())
        sizes.add(min(target["size"].tolist()))
    assert sizes == {40, 60}


def test_crop_clips_boxes_and_sanitize_drops_boxes_cut_away():
    # window top=10, left=5, 40 x 50 (h x w): A (10,20,30,60) -> (5,10,25,50) -> clipped (5,10,25,40);
    # B (70,0,100,40) -> (65,-10,95,30) lies right of the window (x >= 50): it must be dropped.
    pipeline = v2.Compose([
        lambda image, target: crop(image, target, top=10, left=5, height=40, width=50),
        v2.SanitizeBoundingBoxes(), v2.ToImage(), ToDetrTarget(),
    ])  # fmt: skip
    image, target = pipeline(*sample())
    assert image.shape == (3, 40, 50)
    assert target["labels"].tolist() == [1]
    torch.testing.assert_close(target["boxes"], torch.tensor([cxcywh(5, 10, 25, 40, 50, 40)]))


def test_random_size_crop_window_stays_inside_the_image_and_in_range():
    cropper = RandomSizeCrop(30, 60)
    for seed in range(20):
        torch.manual_seed(seed)
        top, left, h, w = cropper.get_params(80, 100)
        assert 30 <= h <= 60 and 30 <= w <= 60
        assert 0 <= top <= 80 - h and 0 <= left <= 100 - w


def test_random_size_crop_rejects_bad_range():
    with pytest.raises(ValueError):
        RandomSizeCrop(50, 40)


def test_coco_train_recipe_never_leaves_a_degenerate_box():
    # small crops (384..600 on a 400..600 px image) often cut boxes away; what is left is valid
    pipeline = make_transforms("train", "coco", scales=[64])
    counts = set()
    for seed in range(15):
        torch.manual_seed(seed)
        image, target = pipeline(*sample())
        boxes = target["boxes"]
        assert len(boxes) == len(target["labels"])
        assert (boxes[:, 2:] > 0).all()
        assert (boxes[:, :2] - boxes[:, 2:] / 2 >= -1e-6).all() and (boxes[:, :2] + boxes[:, 2:] / 2 <= 1 + 1e-6).all()
        assert target["size"].tolist() == list(image.shape[1:])
        counts.add(len(boxes))
    assert counts != {2}  # some crop dropped a box: the test really exercised dropping


def test_coco_train_preset_is_the_official_recipe():
    pipeline = make_transforms("train", "coco")
    flip, choice = pipeline.transforms[0], pipeline.transforms[1]
    assert isinstance(flip, v2.RandomHorizontalFlip) and flip.p == 0.5
    resize, crop_branch = choice.transforms
    assert resize.min_size == [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
    assert resize.max_size == 1333
    first, cropper, last = crop_branch.transforms
    assert first.min_size == [400, 500, 600] and (cropper.min_size, cropper.max_size) == (384, 600)
    assert last.min_size == resize.min_size and last.max_size == 1333


def test_normalize_uses_imagenet_statistics():
    image, _ = make_transforms("val", "shapes")(*sample(color=(255, 0, 255)))
    expected = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
                (1 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    torch.testing.assert_close(image[:, 3, 4], torch.tensor(expected))


def test_shapes_presets_keep_val_size_and_jitter_train_size():
    _image, target = make_transforms("val", "shapes")(*sample(width=128, height=128))
    assert target["size"].tolist() == [128, 128]
    sizes = set()
    for seed in range(15):
        torch.manual_seed(seed)
        _, target = make_transforms("train", "shapes")(*sample(width=128, height=128))
        sizes.add(target["size"][0].item())
    assert sizes <= {112, 120, 128, 136, 144} and len(sizes) > 1


def test_empty_target_passes_through_every_preset():
    image = Image.new("RGB", (50, 40))
    target = make_raw_target([], [], 0, 40, 50)
    for dataset in ("shapes", "coco"):
        torch.manual_seed(0)
        _, out = make_transforms("train", dataset)(image, target)
        assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)


@pytest.mark.parametrize("split, dataset", [("test", "coco"), ("train", "imagenet")])
def test_make_transforms_rejects_unknown_names(split, dataset):
    with pytest.raises(ValueError):
        make_transforms(split, dataset)


# ---- collate ---------------------------------------------------------------------------------

def test_collate_pads_bottom_right_and_masks_padding():
    a = torch.full((3, 2, 3), 1.0)  # h=2, w=3
    b = torch.full((3, 4, 2), 2.0)  # h=4, w=2
    ta, tb = {"labels": torch.tensor([0])}, {"labels": torch.tensor([1, 2])}
    batch, targets = collate_fn([(a, ta), (b, tb)])
    assert batch.tensors.shape == (2, 3, 4, 3) and batch.mask.shape == (2, 4, 3)
    expected_mask_a = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    expected_mask_b = torch.tensor([[0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1]], dtype=torch.bool)
    assert torch.equal(batch.mask[0], expected_mask_a) and torch.equal(batch.mask[1], expected_mask_b)
    assert torch.equal(batch.tensors[0][:, :2, :3], a) and torch.equal(batch.tensors[1][:, :4, :2], b)
    assert batch.tensors[0][:, 2:].abs().sum() == 0 and batch.tensors[1][:, :, 2:].abs().sum() == 0
    assert targets[0] is ta and targets[1] is tb


def test_collate_works_in_a_dataloader():
    from detr_tutorial.data.shapes import ShapesDataset

    loader = torch.utils.data.DataLoader(ShapesDataset("val", num_images=3), batch_size=3, collate_fn=collate_fn)
    batch, targets = next(iter(loader))
    assert batch.tensors.shape == (3, 3, 128, 128) and not batch.mask.any()
    assert [int(t["image_id"]) for t in targets] == [0, 1, 2]


def test_collate_rejects_empty_batch_and_bad_samples():
    with pytest.raises(ValueError):
        collate_fn([])
    with pytest.raises(TypeError):
        collate_fn([torch.zeros(3, 2, 2)])


# ---- how a data set applies transforms ---------------------------------------------------------

def test_dataset_rejects_a_pipeline_without_to_detr_target():
    from detr_tutorial.data.shapes import ShapesDataset

    ds = ShapesDataset("val", num_images=1, transforms=v2.Compose([v2.ToImage()]))
    with pytest.raises(TypeError, match="ToDetrTarget"):
        ds[0]


def test_dataset_rejects_transforms_that_are_not_callable():
    from detr_tutorial.data.shapes import ShapesDataset

    with pytest.raises(TypeError, match="callable"):
        ShapesDataset("val", num_images=1, transforms="flip")


def test_recipe_dataset_options_size_the_preset_augmentation():
    """``dataset_options`` named like make_transforms' sizes resize the preset (per split with a
    ``train_``/``val_`` prefix); the other options still reach the data set."""
    import dataclasses

    from detr_tutorial.recipes import get_recipe
    from detr_tutorial.train import build_datasets

    recipe = dataclasses.replace(
        get_recipe("shapes-cpu"), dataset_options={"train_scales": 96, "val_val_size": 80, "num_images": 4}
    )
    train_set, val_set = build_datasets(recipe)
    assert len(train_set) == len(val_set) == 4
    assert {tuple(train_set[i][0].shape[-2:]) for i in range(4)} == {(96, 96)}
    assert tuple(val_set[0][0].shape[-2:]) == (80, 80)
    # unprefixed, ``val_size`` is make_transforms' own name: the val split's size (train ignores it)
    _, val_set = build_datasets(dataclasses.replace(recipe, dataset_options={"val_size": 96, "num_images": 2}))
    assert tuple(val_set[0][0].shape[-2:]) == (96, 96)


@pytest.mark.parametrize("options, match", [
    ({"train_scales": "big"}, "train scales must be a positive int"),
    ({"scales": [128, 0]}, "scales must be a positive int"),
    ({"train_colour": 1}, "bad data set option"),
])  # fmt: skip
def test_recipe_dataset_options_reject_bad_values(options, match):
    import dataclasses

    from detr_tutorial.recipes import get_recipe
    from detr_tutorial.train import build_datasets

    with pytest.raises(ValueError, match=match):
        build_datasets(dataclasses.replace(get_recipe("shapes-cpu"), dataset_options=options))
