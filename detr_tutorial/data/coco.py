"""COCO 2017 and any COCO-format folder (an images folder plus an ``instances`` json).

The mapping from COCO category ids to the model's contiguous labels is explicit:
``dataset.label_map`` (category id -> label), ``dataset.label_to_cat_id`` (its inverse) and
``dataset.class_names`` (one name per label). Save them with a checkpoint and pass
``label_map=`` back when you load it, so ``num_classes`` is never guessed from a json file.

Training targets leave out crowd boxes (``iscrowd=1``, a region of many objects, which the
COCO evaluation ignores anyway) and boxes that are empty once clipped to the image; boxes that
stick out of the image are clipped to it. Both are logged as warnings with the file, the count
and an annotation id. The pycocotools ground truth (``dataset.coco``) keeps the json untouched.

A json that cannot describe its images correctly is refused with a ``ValueError`` naming the
file and the ids, when the data set is made: no ``images``, ``annotations`` or ``categories``
list (a test-only json such as ``image_info_test2017.json`` has no ground truth to train or
evaluate on - run ``predict`` on its images instead; a set whose images truly hold no objects
writes ``"annotations": []``), duplicate image ids, image sizes that are not positive, annotations
of an image id the json does not list, of a category it does not list, or whose ``bbox`` is
not four finite numbers. When an image is read, its size must match the json's (else
``ValueError``), and a file that cannot be decoded is a ``ValueError`` naming it.

EXIF orientation: the json's ``width``/``height`` decide whether the boxes refer to the photo
as displayed (turned upright) or to its stored pixels; see
:func:`~detr_tutorial.data.base.load_annotated_image`.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from .base import DetectionDataset, Transforms, load_annotated_image, make_raw_target
from .coco_format import cat_ids_in_order, load_coco

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

COCO_URLS = {
    "train": "http://images.cocodataset.org/zips/train2017.zip",
    "val": "http://images.cocodataset.org/zips/val2017.zip",
    "annotations": "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
}
# label_map="category_id": labels are the raw COCO ids, as in the official DETR checkpoints
# (num_classes = 91); ids without a category are named "N/A" there too.
NO_CATEGORY = "N/A"


def make_label_map(
    categories: Sequence[Mapping], label_map: None | str | Mapping[int, int] = None
) -> tuple[dict[int, int], tuple[str, ...]]:
    """``(category id -> label, class names)`` for a json's ``categories``.

    Args:
        label_map: ``None``: labels ``0..K-1`` follow the category ids in ascending order.
            ``"category_id"``: label = category id (the official DETR convention; names of
            unused ids are ``"N/A"``). A mapping: used as given (e.g. read from a checkpoint);
            its labels must be ``0..K-1`` without gaps and cover every category of the json.
    """
    names = {int(c["id"]): str(c["name"]) for c in categories}
    if label_map is None:
        cat_ids = cat_ids_in_order(categories)
        return {cid: i for i, cid in enumerate(cat_ids)}, tuple(names[c] for c in cat_ids)
    if label_map == "category_id":
        top = max(names, default=0)
        return {cid: cid for cid in names}, tuple(names.get(i, NO_CATEGORY) for i in range(top + 1))
    if isinstance(label_map, str):
        # a wrong value, not a wrong type
        raise ValueError(f"label_map must be None, 'category_id' or a dict, got {label_map!r}")  # noqa: TRY004
    if not isinstance(label_map, Mapping):
        raise TypeError(f"label_map must be None, 'category_id' or a dict, got {type(label_map).__name__}")
    mapping = {int(k): int(v) for k, v in label_map.items()}
    labels = sorted(mapping.values())
    if labels != list(range(len(labels))):
        raise ValueError(f"label_map values must be the labels 0..{len(labels) - 1} once each, got {labels}")
    missing = sorted(set(names) - set(mapping))
    if missing:
        raise ValueError(f"label_map has no label for the json's category ids {missing}")
    inverse = {v: k for k, v in mapping.items()}
    return mapping, tuple(names.get(inverse[i], NO_CATEGORY) for i in range(len(labels)))


_REQUIRED_LISTS = ("images", "annotations", "categories")
_NO_ANNOTATIONS_HINT = (
    ": a test-only json (like image_info_test2017.json) has no ground truth to train or evaluate "
    "on; run `predict` on its images instead, or, if the images truly hold no objects, write "
    '"annotations": []'
)


def _some(ids: Sequence) -> str:
    """A few ids for a message: ``[1, 2, 3]`` or ``[1, 2, 3, 4, 5] and 7 more``."""
    ids = list(ids)
    return f"{ids[:5]}" + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def _is_size(value: object) -> bool:
    """A positive whole number of pixels (``640`` or ``640.0``, not ``True``, ``0`` or ``nan``)."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and value > 0 and float(value).is_integer()
    )


def _is_bbox(value: object) -> bool:
    """Four finite numbers ``[x, y, w, h]``."""
    return (
        isinstance(value, (list, tuple)) and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


def _check_images(images: list, source: object) -> set:
    """The image ids of ``images``, after checking each entry (``ValueError`` naming the id)."""
    seen: set = set()
    duplicates = []
    for i, im in enumerate(images):
        if not isinstance(im, Mapping) or any(k not in im for k in ("id", "file_name", "width", "height")):
            raise ValueError(f"{source}: images[{i}] needs 'id', 'file_name', 'width' and 'height', got {im!r}")
        if not (_is_size(im["width"]) and _is_size(im["height"])):
            raise ValueError(
                f"{source}: image {im['id']} ({im['file_name']}) has width {im['width']!r} and height "
                f"{im['height']!r}; both must be positive whole numbers of pixels"
            )
        if im["id"] in seen:
            duplicates.append(im["id"])
        seen.add(im["id"])
    if duplicates:
        raise ValueError(f"{source}: image ids must be unique; repeated: {_some(duplicates)}")
    return seen


def _check_annotations(annotations: list, image_ids: set, cat_ids: set, source: object) -> None:
    """Every annotation names a listed image and category and has a finite ``bbox``."""
    orphans = []
    for i, ann in enumerate(annotations):
        if not isinstance(ann, Mapping) or any(k not in ann for k in ("id", "image_id", "category_id", "bbox")):
            raise ValueError(
                f"{source}: annotations[{i}] needs 'id', 'image_id', 'category_id' and 'bbox', got {ann!r}"
            )
        if ann["image_id"] not in image_ids:
            orphans.append(ann["id"])
        elif ann["category_id"] not in cat_ids:
            raise ValueError(
                f"{source}: annotation {ann['id']} (image {ann['image_id']}) has category id "
                f"{ann['category_id']!r}, which is not among the json's categories {sorted(cat_ids)}"
            )
        elif not _is_bbox(ann["bbox"]):
            raise ValueError(
                f"{source}: annotation {ann['id']} (image {ann['image_id']}) has bbox {ann['bbox']!r}; "
                f"it must be four finite numbers [x, y, width, height]"
            )
    if orphans:
        raise ValueError(
            f"{source}: {len(orphans)} annotation(s) refer to image ids the json does not list in "
            f"'images': annotation ids {_some(orphans)}"
        )


def check_coco_json(dataset: object, source: object) -> None:
    """Refuse a COCO-format dict whose boxes could not be read correctly (see the module's
    docstring for the rules); ``source`` (the json file) names it in the ``ValueError``."""
    if not isinstance(dataset, Mapping):
        raise ValueError(f"{source}: a COCO json holds an object with 'images', 'annotations' and "
                         f"'categories', got {type(dataset).__name__}")
    for key in _REQUIRED_LISTS:
        if key not in dataset:
            raise ValueError(f"{source} has no {key!r} list" + (_NO_ANNOTATIONS_HINT if key == "annotations" else ""))
        if not isinstance(dataset[key], list):
            raise ValueError(f"{source}: {key!r} must be a list, got {type(dataset[key]).__name__}")
    for i, cat in enumerate(dataset["categories"]):
        if not isinstance(cat, Mapping) or "id" not in cat or "name" not in cat:
            raise ValueError(f"{source}: categories[{i}] needs an 'id' and a 'name', got {cat!r}")
    image_ids = _check_images(dataset["images"], source)
    cat_ids = {c["id"] for c in dataset["categories"]}
    _check_annotations(dataset["annotations"], image_ids, cat_ids, source)


class CocoDetection(DetectionDataset):
    """A COCO-format detection data set.

    Args:
        img_folder: folder with the images named by the json's ``file_name`` entries.
        ann_file: the COCO ``instances`` json.
        transforms: see :class:`~detr_tutorial.data.base.DetectionDataset`.
        label_map: how category ids become labels; see :func:`make_label_map`.

    ``target["image_id"]`` is the json's image id, the key evaluation uses.
    """

    def __init__(
        self,
        img_folder: PathLike,
        ann_file: PathLike,
        transforms: Transforms | None = None,
        label_map: None | str | Mapping[int, int] = None,
    ) -> None:
        super().__init__(transforms)
        self.img_folder = Path(img_folder)
        if not self.img_folder.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.img_folder}")
        self._coco = load_coco(ann_file)
        self.ann_file = Path(ann_file)
        check_coco_json(self._coco.dataset, self.ann_file)
        self.label_map, self.class_names = make_label_map(self._coco.dataset["categories"], label_map)
        if label_map == "category_id":
            # every label is a category id, also the "N/A" ones an official checkpoint may
            # still predict; pycocotools ignores detections of categories without ground truth
            self.label_to_cat_id = {label: label for label in range(len(self.class_names))}
        else:
            self.label_to_cat_id = {label: cid for cid, label in self.label_map.items()}
        self.ids = sorted(self._coco.imgs)
        self._warned_orientation = False
        self._targets = self._training_targets()

    def _training_targets(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: the boxes (xyxy, clipped to the image) and labels used for training."""
        targets, crowd = [], 0
        degenerate: list[int] = []  # annotation ids
        clipped: list[int] = []
        for img_id in self.ids:
            info = self._coco.imgs[img_id]
            width, height = float(info["width"]), float(info["height"])
            boxes, labels = [], []
            for ann in self._coco.imgToAnns.get(img_id, []):
                if ann.get("iscrowd", 0):
                    crowd += 1
                    continue
                x, y, w, h = (float(v) for v in ann["bbox"])
                x1, y1 = max(x, 0.0), max(y, 0.0)
                x2, y2 = min(x + w, width), min(y + h, height)
                if x2 <= x1 or y2 <= y1:
                    degenerate.append(ann["id"])
                    continue
                if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                    clipped.append(ann["id"])
                boxes.append([x1, y1, x2, y2])
                labels.append(self.label_map[int(ann["category_id"])])
            targets.append(
                (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64))
            )
        if degenerate:
            logger.warning("%s: removed %d degenerate (empty once clipped to the image) boxes from the "
                           "training targets, e.g. annotation %s", self.ann_file, len(degenerate), degenerate[0])
        if clipped:
            logger.warning("%s: clipped %d boxes that reach outside their image to it in the training "
                           "targets, e.g. annotation %s", self.ann_file, len(clipped), clipped[0])
        logger.info("%s: %d images, %d crowd boxes left out of the training targets",
                    self.ann_file, len(self.ids), crowd)
        self.num_crowd_removed, self.num_degenerate_removed = crowd, len(degenerate)
        self.num_clipped = len(clipped)
        return targets

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[Image.Image, dict]:
        img_id = self.ids[index]
        info = self._coco.imgs[img_id]
        path = self.img_folder / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {img_id} of {self.ann_file} not found: {path}")
        what = f"image {img_id} of {self.ann_file}"
        image, unturned = load_annotated_image(path, int(info["width"]), int(info["height"]), what)
        if unturned and not self._warned_orientation:
            self._warned_orientation = True
            logger.warning("%s (%s) has an EXIF orientation that its json size cannot confirm; its boxes are "
                           "read on the stored pixels, as pycocotools does (later such images are not reported)",
                           what, path)
        boxes, labels = self._targets[index]
        width, height = image.size
        return image, make_raw_target(boxes, labels, img_id, height, width)

    def _build_coco(self) -> COCO:
        return self._coco


def find_coco_folder(root: PathLike, split: str) -> tuple[Path, Path]:
    """Locate ``(img_folder, ann_file)`` of ``split`` in a COCO-format folder.

    Layouts tried, in order (``{s}`` is the split, also ``{s}2017``):
    ``root/annotations/instances_{s}.json`` with images in ``root/{s}/``, and the Roboflow
    export ``root/{s}/_annotations.coco.json`` with the images beside it.
    """
    root = Path(root)
    tried = []
    for s in (split, f"{split}2017"):
        for ann_file, img_folder in (
            (root / "annotations" / f"instances_{s}.json", root / s),
            (root / s / "_annotations.coco.json", root / s),
        ):
            tried.append(f"{ann_file} + {img_folder}/")
            if ann_file.is_file() and img_folder.is_dir():
                return img_folder, ann_file
    raise FileNotFoundError(
        f"no COCO-format {split!r} split under {root}; looked for (annotation json + image folder): "
        + "; ".join(tried)
    )


def download_coco(root: PathLike, split: str = "val") -> None:
    """Download and unpack COCO 2017 images of ``split`` and the annotations into ``root``
    (val: 1 GB, train: 18 GB, annotations: 250 MB). Files already there are kept."""
    from torchvision.datasets.utils import download_and_extract_archive

    if split not in ("train", "val"):
        raise ValueError(f"COCO split must be 'train' or 'val', got {split!r}")
    root = Path(root)
    if not (root / f"{split}2017").is_dir():
        download_and_extract_archive(COCO_URLS[split], str(root))
    if not (root / "annotations" / f"instances_{split}2017.json").is_file():
        download_and_extract_archive(COCO_URLS["annotations"], str(root))


def build_coco(
    root: PathLike,
    split: str,
    transforms: Transforms | None = None,
    label_map: None | str | Mapping[int, int] = None,
    download: bool = False,
) -> CocoDetection:
    """COCO 2017 from ``root`` (``train2017/``, ``val2017/``, ``annotations/``)."""
    if split not in ("train", "val"):
        raise ValueError(f"COCO split must be 'train' or 'val', got {split!r}")
    root = Path(root)
    if download:
        download_coco(root, split)
    img_folder = root / f"{split}2017"
    ann_file = root / "annotations" / f"instances_{split}2017.json"
    if not img_folder.is_dir() or not ann_file.is_file():
        raise FileNotFoundError(
            f"COCO 2017 {split} not found: expected the images in {img_folder} and the annotations "
            f"in {ann_file}. Pass download=True (images.cocodataset.org) or unpack {split}2017.zip "
            f"and annotations_trainval2017.zip into {root}."
        )
    return CocoDetection(img_folder, ann_file, transforms=transforms, label_map=label_map)
