"""Detection data: synthetic shapes (offline), Pascal VOC, COCO and COCO-format folders.

Every data set returns ``(image [3, H, W] float tensor, target)`` in the package's targets
convention and exposes ``class_names``, ``num_classes``, ``label_to_cat_id`` and a pycocotools
ground truth (``.coco`` / ``get_coco_api()``), so training and evaluation code is the same for
all of them. :func:`build_dataset` picks one by name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .base import ConcatDetectionDataset, DetectionDataset
from .coco import CocoDetection, build_coco, download_coco, find_coco_folder
from .collate import collate_fn
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import ShapesConfig, ShapesDataset
from .transforms import RandomSizeCrop, ToDetrTarget, make_transforms
from .voc import SPLIT_TO_IMAGE_SET, VOC_CLASSES, VOCDataset

__all__ = [
    "DATASETS",
    "SHAPES_CLASSES",
    "VOC_CLASSES",
    "CocoDetection",
    "ConcatDetectionDataset",
    "DetectionDataset",
    "RandomSizeCrop",
    "ShapesConfig",
    "ShapesDataset",
    "ToDetrTarget",
    "VOCDataset",
    "build_dataset",
    "collate_fn",
    "download_coco",
    "find_coco_folder",
    "make_transforms",
]  # fmt: skip

DATASETS = ("shapes", "voc", "coco", "folder")
DEFAULT_ROOTS = {"voc": Path("data/voc"), "coco": Path("data/coco")}


def build_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    *,
    transforms: str | Callable | None = "default",
    **kwargs: Any,
) -> DetectionDataset:
    """Build a detection data set by name.

    Args:
        name: ``"shapes"`` (synthetic, no download), ``"voc"``, ``"coco"`` (COCO 2017) or
            ``"folder"`` (any COCO-format folder, see :func:`find_coco_folder`).
        split: ``"train"`` or ``"val"`` (``"folder"`` accepts any split name it finds).
            Only ``"train"`` gets random augmentation.
        root: where the files are; ``voc`` and ``coco`` default to ``data/voc`` and
            ``data/coco``, ``shapes`` needs none, ``folder`` requires it.
        transforms: ``"default"``: the preset of :func:`make_transforms` for this data set
            and split (ImageNet-normalized); ``None``: float images in ``[0, 1]``, no
            augmentation; or any callable ``(PIL image, raw target) -> (image, target)``.
        **kwargs: passed on - shapes: ``config``, ``num_images``; voc: ``year`` (``"2007"``, or
            ``"2007+2012"``: train on both trainval sets, evaluate on VOC2007 test),
            ``image_set`` (default: 2007 train -> trainval, val -> test), ``download``,
            ``keep_difficult``; coco: ``download``, ``label_map``; folder: ``label_map``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {DATASETS}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    if transforms == "default":
        transforms = make_transforms("train" if split == "train" else "val", dataset=name)
    elif isinstance(transforms, str):
        raise ValueError(f"transforms must be 'default', None or a callable, got {transforms!r}")

    if name == "shapes":
        return ShapesDataset(split, transforms=transforms, **kwargs)
    if name == "voc":
        root = root or DEFAULT_ROOTS["voc"]
        year = str(kwargs.pop("year", "2007"))
        if year == "2007+2012":  # the usual "07+12" protocol: train on both trainvals, test on 2007
            if split != "train":
                return build_dataset("voc", split, root, transforms=transforms, year="2007", **kwargs)
            parts = [VOCDataset(root, year=y, image_set="trainval", **kwargs) for y in ("2007", "2012")]
            return ConcatDetectionDataset(parts, transforms=transforms)
        image_set = kwargs.pop("image_set", None) or SPLIT_TO_IMAGE_SET.get((year, split))
        if image_set is None:
            raise ValueError(f"no default VOC{year} image set for split {split!r}; pass image_set=")
        return VOCDataset(root, year=year, image_set=image_set, transforms=transforms, **kwargs)
    if name == "coco":
        return build_coco(root or DEFAULT_ROOTS["coco"], split, transforms=transforms, **kwargs)
    if root is None:
        raise ValueError("build_dataset('folder', ...) needs root=, the COCO-format folder")
    img_folder, ann_file = find_coco_folder(root, split)
    return CocoDetection(img_folder, ann_file, transforms=transforms, **kwargs)
