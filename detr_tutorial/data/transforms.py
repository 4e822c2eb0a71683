"""Data augmentation that moves the boxes with the image (``torchvision.transforms.v2``).

A pipeline takes ``(PIL image, target)`` where ``target["boxes"]`` is a
``tv_tensors.BoundingBoxes`` in absolute ``(x1, y1, x2, y2)`` pixels, so every v2 geometric
transform (flip, resize, crop) updates the boxes for us. Two steps are our own:

* :class:`RandomSizeCrop` - the official DETR crop (a random height and width in a range), which
  v2 lacks. Boxes are clipped to the crop; :class:`torchvision.transforms.v2.SanitizeBoundingBoxes`
  right after it DROPS boxes the crop cut away (and their labels), so no degenerate box survives.
* :class:`ToDetrTarget` - the last step: boxes become normalized ``(cx, cy, w, h)`` (what DETR
  predicts) and ``target["size"]`` records the ``(h, w)`` the model really sees.

:func:`make_transforms` returns the presets: the official DETR COCO recipe, the same for VOC,
and a light one for the 128-pixel synthetic shapes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..box_ops import box_xyxy_to_cxcywh
from ..image_io import IMAGENET_MEAN, IMAGENET_STD


# Official DETR COCO recipe (detr/datasets/coco.py: make_coco_transforms).
COCO_TRAIN_SCALES = tuple(range(480, 801, 32))  # 480, 512, ..., 800
COCO_MAX_SIZE = 1333
COCO_VAL_SIZE = 800
COCO_CROP_RESIZE = (400, 500, 600)
COCO_CROP_SIZE = (384, 600)

# Shapes: 128 px images; a small scale jitter around the native size.
SHAPES_TRAIN_SCALES = (112, 120, 128, 136, 144)

DATASET_PRESETS = ("shapes", "coco", "voc", "folder", "none")


class RandomSizeCrop:
    """Crop a random ``h x w`` window, each side drawn uniformly from ``[min_size, max_size]``
    (capped by the image size), as the official DETR ``RandomSizeCrop`` does.

    Call it on ``(image, target)``; boxes are shifted and clipped to the window. Follow it with
    ``v2.SanitizeBoundingBoxes()`` to drop the boxes that were cut away entirely.
    Randomness comes from ``torch``'s generator, so ``torch.manual_seed`` makes it repeatable.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size} and {max_size}")
        self.min_size = min_size
        self.max_size = max_size

    def get_params(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of a random window inside a ``height x width`` image."""
        h = int(torch.randint(min(self.min_size, height), min(height, self.max_size) + 1, ()))
        w = int(torch.randint(min(self.min_size, width), min(width, self.max_size) + 1, ()))
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        return top, left, h, w

    def __call__(self, image: Any, target: dict) -> tuple[Any, dict]:
        height, width = F.get_size(image)
        top, left, h, w = self.get_params(height, width)
        return crop(image, target, top, left, h, w)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size})"


def crop(image: Any, target: dict, top: int, left: int, height: int, width: int) -> tuple[Any, dict]:
    """Crop ``image`` and the boxes in ``target`` to a window (boxes are clipped, not dropped)."""
    target = dict(target)
    target["boxes"] = F.crop(target["boxes"], top, left, height, width)
    return F.crop(image, top, left, height, width), target


class ToDetrTarget:
    """Final step of every pipeline: the image becomes a plain tensor and the target follows
    the package convention.

    ``boxes`` (``tv_tensors.BoundingBoxes``, any format, pixels) become a float ``[N, 4]``
    tensor of normalized ``(cx, cy, w, h)`` in ``[0, 1]``; ``size`` is set to the ``(h, w)``
    of the transformed image. ``orig_size``, ``image_id`` and ``labels`` pass through.
    """

    def __call__(self, image: Any, target: dict) -> tuple[torch.Tensor, dict]:
        boxes = target["boxes"]
        if not isinstance(boxes, tv_tensors.BoundingBoxes):
            raise TypeError(
                f"target['boxes'] must be tv_tensors.BoundingBoxes, got {type(boxes).__name__}"
            )
        height, width = F.get_size(image)
        xyxy = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        xyxy = xyxy.as_subclass(torch.Tensor).to(torch.float32).reshape(-1, 4)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        target = dict(target)
        target["boxes"] = box_xyxy_to_cxcywh(xyxy / scale)
        target["size"] = torch.tensor([height, width], dtype=torch.int64)
        if isinstance(image, torch.Tensor):
            image = image.as_subclass(torch.Tensor)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def to_float_tensor(normalize: bool = True) -> list:
    """PIL image -> float tensor in ``[0, 1]``, then (optionally) ImageNet normalization."""
    steps: list = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if normalize:
        steps.append(v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)))
    return steps


def make_transforms(
    split: str,
    dataset: str = "shapes",
    *,
    scales: Sequence[int] | None = None,
    max_size: int | None = None,
    val_size: int | None = None,
    crop: bool = True,
    normalize: bool = True,
    resize: bool = True,
) -> v2.Compose:
    """The augmentation preset for a data set and split.

    Args:
        split: ``"train"`` (random augmentation) or ``"val"`` (deterministic resize only).
        dataset: ``"coco"`` / ``"voc"`` / ``"folder"``: the official DETR COCO recipe -
            train: horizontal flip, then with probability 1/2 either a resize of the shorter
            side to one of ``scales`` (480..800 step 32, longer side at most 1333) or a resize
            to 400/500/600, a random 384..600 crop and the multi-scale resize again;
            val: shorter side 800, longer side at most 1333.
            ``"shapes"``: train: flip and a shorter side of 112..144 px; val: native 128 px.
            ``"none"``: no resizing or augmentation at all.
        scales, max_size, val_size: override the preset's sizes (e.g. smaller images to fit a
            small GPU); ``crop=False`` removes the random crop branch.
        normalize: ImageNet mean/std normalization (``False`` keeps pixels in ``[0, 1]``,
            handy for looking at the images).
        resize: ``False`` keeps the images' size: training then only flips (for multi-scale
            training with one size per batch, where the data set draws each image at its
            batch's size: ``Recipe.batch_image_sizes``); evaluation keeps the native size.

    Returns:
        A callable ``(PIL image, raw target) -> (float tensor [3, H, W], target)``.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if dataset not in DATASET_PRESETS:
        raise ValueError(f"unknown dataset preset {dataset!r}; choose one of {DATASET_PRESETS}")
    train = split == "train"
    steps: list = []
    if not resize:
        if train and dataset != "none":
            steps.append(v2.RandomHorizontalFlip(p=0.5))
    elif dataset in ("coco", "voc", "folder"):
        scales = list(scales or COCO_TRAIN_SCALES)
        max_size = max_size or COCO_MAX_SIZE
        if train:
            multi_scale = v2.RandomShortestSize(min_size=scales, max_size=max_size)
            branches: list = [multi_scale]
            if crop:
                branches.append(
                    v2.Compose(
                        [
                            v2.RandomShortestSize(min_size=list(COCO_CROP_RESIZE)),
                            RandomSizeCrop(*COCO_CROP_SIZE),
                            v2.RandomShortestSize(min_size=scales, max_size=max_size),
                        ]
                    )
                )
            steps += [v2.RandomHorizontalFlip(p=0.5), v2.RandomChoice(branches)]
        else:
            steps.append(v2.Resize(val_size or COCO_VAL_SIZE, max_size=max_size))
    elif dataset == "shapes":
        if train:
            steps += [
                v2.RandomHorizontalFlip(p=0.5),
                v2.RandomShortestSize(min_size=list(scales or SHAPES_TRAIN_SCALES), max_size=max_size),
            ]
        elif val_size is not None:
            steps.append(v2.Resize(val_size, max_size=max_size))
    # Drop boxes that a crop (or clipping) reduced to less than one pixel, with their labels.
    steps.append(v2.SanitizeBoundingBoxes(min_size=1.0))
    steps += to_float_tensor(normalize)
    steps.append(ToDetrTarget())
    return v2.Compose(steps)


@dataclass(frozen=True)
class ImageSizes:
    """The sizes a :func:`make_transforms` pipeline resizes images to.

    ``shorter``: the shorter side in pixels (training draws one of them per image, or per batch
    when ``per_batch``), or ``None`` when the images keep their own size; ``max_size``: the cap
    on the longer side (``None``: none).
    """

    shorter: tuple[int, ...] | None
    max_size: int | None = None
    per_batch: bool = False

    def __str__(self) -> str:
        if self.shorter is None:
            return "the images' own size"
        if self.per_batch:
            sides = ", ".join(str(v) for v in self.shorter)
            return f"one size per batch, of {sides} px (no padding)"
        sides = ", ".join(str(v) for v in self.shorter)
        text = f"shorter side {sides} px" if len(self.shorter) == 1 else f"shorter side one of {sides} px"
        return text + (f" (longer side at most {self.max_size} px)" if self.max_size else "")


def preset_sizes(
    split: str,
    dataset: str = "shapes",
    *,
    scales: Sequence[int] | None = None,
    max_size: int | None = None,
    val_size: int | None = None,
) -> ImageSizes:
    """The sizes ``make_transforms(split, dataset, scales=..., max_size=..., val_size=...)``
    resizes to (the last resize of the pipeline: after the random crop, training resizes again)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if dataset in ("coco", "voc", "folder"):
        cap = max_size or COCO_MAX_SIZE
        if split == "train":
            return ImageSizes(tuple(scales or COCO_TRAIN_SCALES), cap)
        return ImageSizes((val_size or COCO_VAL_SIZE,), cap)
    if dataset == "shapes":
        if split == "train":
            return ImageSizes(tuple(scales or SHAPES_TRAIN_SCALES), max_size)
        return ImageSizes((val_size,), max_size) if val_size is not None else ImageSizes(None)
    return ImageSizes(None)


def default_transforms() -> v2.Compose:
    """No augmentation: a float image in ``[0, 1]`` (not normalized) and a DETR target."""
    return make_transforms("val", dataset="none", normalize=False)
