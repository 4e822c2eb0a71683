"""A synthetic detection data set that needs no download: circles, rectangles and triangles.

Each image is drawn from its own random generator, seeded by ``(split seed, image index)``,
so image ``i`` of a split is the same pixels and boxes in every run, in every data loader
worker and in any access order (for given NumPy and Pillow versions: a new release may change
a random stream or how a shape is rasterized). Drawing one 128 x 128 image takes under a
millisecond (numpy + PIL; 500 images in 0.4 s on one CPU core).

What makes it a fair little detection problem:

* a textured background (a smooth random colour field) plus pixel noise, so a model cannot
  find objects by looking for one flat colour;
* objects of random size and colour; every object colour differs clearly from the background
  around it, so every object is visible;
* light overlap only: two boxes may overlap up to ``max_overlap`` IoU and an object drawn later
  may hide at most ``1 - min_visible`` of an earlier one's pixels;
* a few empty images (``empty_fraction``), which teach the "no object" class.

Boxes are the tight boxes of each object's drawn pixels (the whole shape, also where a later
object covers part of it), in the pixel-edge convention: a shape covering pixel columns
``x0 .. x1`` has ``x1_box = x1 + 1``.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

from .base import DetectionDataset, Transforms, make_raw_target
from .coco_format import build_coco_dict, coco_from_dict, write_json

logger = logging.getLogger(__name__)

CLASSES = ("circle", "rectangle", "triangle")
SPLITS = ("train", "val")

# Colour field: the background stays within +-_TEXTURE of its base colour, pixel noise within
# +-_NOISE; an object colour differs from the base colour by at least _TEXTURE + _CONTRAST in
# one channel, so after noise it is still >= _CONTRAST - 2 * _NOISE away from any background pixel.
_TEXTURE = 30
_NOISE = 6
_CONTRAST = 60
_MAX_TRIES = 60


@dataclass
class ShapesConfig:
    """How hard the shapes data set is. The defaults are the data set the book trains on.

    Attributes:
        image_size: side of the square RGB images, in pixels.
        num_classes: use the first ``num_classes`` of ``("circle", "rectangle", "triangle")``.
        min_objects, max_objects: objects per non-empty image (uniform, inclusive).
        empty_fraction: probability that an image has no object at all.
        min_size, max_size: side lengths of an object's box, in pixels (uniform, inclusive).
        max_overlap: largest IoU allowed between two object boxes.
        min_visible: smallest fraction of an object's pixels that later objects leave visible.
        train_size, val_size: number of images in each split.
        train_seed, val_seed: the seed of each split (image ``i`` uses ``(seed, i)``).
    """

    image_size: int = 128
    num_classes: int = 3
    min_objects: int = 1
    max_objects: int = 6
    empty_fraction: float = 0.05
    min_size: int = 12
    max_size: int = 48
    max_overlap: float = 0.2
    min_visible: float = 0.7
    train_size: int = 4000
    val_size: int = 500
    train_seed: int = 2020
    val_seed: int = 2021

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes <= len(CLASSES):
            raise ValueError(f"num_classes must be in 1..{len(CLASSES)}, got {self.num_classes}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if not 0.0 <= self.empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must be in [0, 1], got {self.empty_fraction}")
        if not 2 <= self.min_size <= self.max_size <= self.image_size:
            raise ValueError(
                "need 2 <= min_size <= max_size <= image_size, got "
                f"{self.min_size}, {self.max_size}, {self.image_size}"
            )
        if not 0.0 <= self.max_overlap <= 1.0 or not 0.0 <= self.min_visible <= 1.0:
            raise ValueError(
                f"max_overlap and min_visible must be in [0, 1], got {self.max_overlap}, "
                f"{self.min_visible}"
            )
        if self.train_size < 0 or self.val_size < 0:
            raise ValueError(f"split sizes must be >= 0, got {self.train_size}, {self.val_size}")

    def split_size(self, split: str) -> int:
        return {"train": self.train_size, "val": self.val_size}[_check_split(split)]

    def split_seed(self, split: str) -> int:
        return {"train": self.train_seed, "val": self.val_seed}[_check_split(split)]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"shapes split must be one of {SPLITS}, got {split!r}")
    return split


@dataclass
class ShapesScene:
    """One drawn image and what is in it (``N`` objects, in drawing order)."""

    image: np.ndarray  # uint8 [H, W, 3]
    boxes: np.ndarray  # float32 [N, 4], absolute (x1, y1, x2, y2), pixel-edge convention
    labels: np.ndarray  # int64 [N]
    colors: np.ndarray  # uint8 [N, 3], the fill colour of each object
    masks: np.ndarray = field(repr=False)  # bool [N, H, W], each whole shape before occlusion


def _shape_mask(kind: str, x0: int, y0: int, w: int, h: int, size: int, variant: int) -> np.ndarray:
    """Pixels of one filled shape whose box is ``w x h`` at ``(x0, y0)``."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    x1, y1 = x0 + w - 1, y0 + h - 1  # PIL corners are inclusive pixel coordinates
    if kind == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=1)
    elif kind == "rectangle":
        draw.rectangle([x0, y0, x1, y1], fill=1)
    else:  # triangle: base on one side of the box, apex on the opposite side
        t = variant % 1000 / 999.0  # apex position along its side, 0..1
        side = variant // 1000
        ax = round(x0 + t * (w - 1))
        ay = round(y0 + t * (h - 1))
        corners = {
            0: [(x0, y1), (x1, y1), (ax, y0)],  # apex up
            1: [(x0, y0), (x1, y0), (ax, y1)],  # apex down
            2: [(x1, y0), (x1, y1), (x0, ay)],  # apex left
            3: [(x0, y0), (x0, y1), (x1, ay)],  # apex right
        }[side]
        draw.polygon(corners, fill=1)
    return np.asarray(canvas, dtype=bool)


def _mask_box(mask: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + areas - inter)


def _object_color(rng: np.random.Generator, base: np.ndarray, others: list) -> np.ndarray:
    """A colour far from the background base colour (and, if possible, from other objects)."""
    fallback = None
    for _ in range(200):
        color = rng.integers(0, 256, 3)
        if np.abs(color - base).max() < _TEXTURE + _CONTRAST:
            continue
        fallback = color
        if all(np.abs(color - o).max() >= _CONTRAST for o in others):
            return color.astype(np.uint8)
    if fallback is None:  # cannot happen for a base colour in 0..255, kept for safety
        fallback = np.where(base < 128, 255, 0)
    return np.asarray(fallback, dtype=np.uint8)


def render_scene(config: ShapesConfig, seed: int, index: int) -> ShapesScene:
    """Draw image ``index`` of the split with seed ``seed``; a pure function of its arguments."""
    rng = np.random.default_rng([seed, index])
    size = config.image_size
    base = rng.integers(0, 256, 3)

    # Background: base colour + a smooth colour field (a coarse grid of offsets, upsampled).
    cells = int(rng.integers(2, 9))
    coarse = rng.integers(0, 2 * _TEXTURE + 1, (cells, cells, 3)).astype(np.uint8)
    field_ = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.int16)
    image = np.clip(base + field_ - _TEXTURE, 0, 255).astype(np.int16)

    empty = rng.random() < config.empty_fraction
    n_wanted = 0 if empty else int(rng.integers(config.min_objects, config.max_objects + 1))
    boxes: list = []
    labels: list = []
    masks: list = []
    colors: list = []
    for _ in range(n_wanted):
        for _ in range(_MAX_TRIES):
            label = int(rng.integers(config.num_classes))
            kind = CLASSES[label]
            w = int(rng.integers(config.min_size, config.max_size + 1))
            h = w if kind == "circle" else int(rng.integers(config.min_size, config.max_size + 1))
            x0 = int(rng.integers(0, size - w + 1))
            y0 = int(rng.integers(0, size - h + 1))
            variant = int(rng.integers(0, 4000))
            mask = _shape_mask(kind, x0, y0, w, h, size, variant)
            box = _mask_box(mask)
            if boxes and _iou(box, np.stack(boxes)).max() > config.max_overlap:
                continue
            if masks and not _all_visible(masks + [mask], config.min_visible):
                continue
            boxes.append(box)
            labels.append(label)
            masks.append(mask)
            colors.append(_object_color(rng, base, colors))
            break

    for mask, color in zip(masks, colors):  # later objects are drawn on top
        image[mask] = color
    noise = rng.integers(-_NOISE, _NOISE + 1, image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return ShapesScene(
        image=image,
        boxes=np.stack(boxes) if boxes else np.zeros((0, 4), np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        colors=np.stack(colors) if colors else np.zeros((0, 3), np.uint8),
        masks=np.stack(masks) if masks else np.zeros((0, size, size), bool),
    )


def _all_visible(masks: list, min_visible: float) -> bool:
    """Whether every mask keeps ``min_visible`` of its pixels once later masks cover it."""
    covered = np.zeros_like(masks[0])
    for mask in reversed(masks):
        area = mask.sum()
        if area == 0 or (mask & ~covered).sum() < min_visible * area:
            return False
        covered |= mask
    return True


class ShapesDataset(DetectionDataset):
    """The synthetic shapes detection data set.

    Args:
        split: ``"train"`` or ``"val"`` (different seeds, so no image is in both).
        config: difficulty and size; ``ShapesConfig()`` is the book's data set (a dict of its
            fields also works, e.g. ``{"min_size": 6, "max_size": 16}`` in a recipe's options).
        transforms: a pipeline from :func:`~detr_tutorial.data.transforms.make_transforms`
            (e.g. ``make_transforms("train", "shapes")``); ``None`` gives float images in
            ``[0, 1]``, not normalized, with no augmentation.
        num_images: use only the first ``num_images`` images of the split (quick experiments).

    ``dataset[i]`` is ``(image [3, H, W], target)`` with ``target["image_id"] == i``.
    """

    def __init__(
        self,
        split: str = "train",
        config: ShapesConfig | dict | None = None,
        transforms: Transforms | None = None,
        num_images: int | None = None,
    ) -> None:
        super().__init__(transforms)
        self.split = _check_split(split)
        if isinstance(config, dict):  # a recipe's dataset_options are plain (JSON) values
            try:
                config = ShapesConfig(**config)
            except TypeError as e:
                known = sorted(f.name for f in dataclasses.fields(ShapesConfig))
                raise ValueError(f"bad shapes config {config!r}: {e}; the fields are {known}") from e
        self.config = config or ShapesConfig()
        self.seed = self.config.split_seed(split)
        full = self.config.split_size(split)
        if num_images is not None and not 0 <= num_images <= full:
            raise ValueError(f"num_images must be in 0..{full} for the {split} split, got {num_images}")
        self._len = full if num_images is None else num_images
        self.class_names = CLASSES[: self.config.num_classes]
        self.label_to_cat_id = {label: label + 1 for label in range(len(self.class_names))}
        self._annotations: list | None = None

    def __len__(self) -> int:
        return self._len

    def scene(self, index: int) -> ShapesScene:
        """The drawn image and its objects (boxes, labels, colours, masks) as numpy arrays."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return render_scene(self.config, self.seed, index)

    def load(self, index: int) -> tuple[Image.Image, dict]:
        scene = self.scene(index)
        size = self.config.image_size
        return Image.fromarray(scene.image), make_raw_target(scene.boxes, scene.labels, index, size, size)

    def load_sized(self, index: int, size: int) -> tuple[Image.Image, dict]:
        """Image ``index`` drawn on a canvas of ``size`` x ``size`` pixels, its objects still
        ``min_size``..``max_size`` pixels: a model trained on several canvas sizes must read an
        object's size from the object, not from the image. (The scene differs from the one on
        the split's own canvas: the objects are placed on another canvas.)"""
        try:
            config = dataclasses.replace(self.config, image_size=size)
        except ValueError as e:
            raise ValueError(f"cannot draw shapes at {size} px: {e}") from e
        scene = render_scene(config, self.seed, index)
        return Image.fromarray(scene.image), make_raw_target(scene.boxes, scene.labels, index, size, size)

    def annotations(self) -> list:
        """``(boxes_xyxy, labels)`` of every image, computed once (this draws every image)."""
        if self._annotations is None:
            start = time.perf_counter()
            self._annotations = []
            for i in range(len(self)):
                scene = self.scene(i)
                self._annotations.append((scene.boxes, scene.labels))
            logger.info(
                "drew %d %s shapes images for their annotations in %.1f s",
                len(self), self.split, time.perf_counter() - start,
            )
        return self._annotations

    def to_coco_dict(self) -> dict:
        """The ground truth in the COCO json format (absolute xywh boxes, category ids 1..K)."""
        size = self.config.image_size
        images = [
            {"id": i, "file_name": f"{self.split}_{i:06d}.png", "height": size, "width": size}
            for i in range(len(self))
        ]
        annotations = self.annotations()
        return build_coco_dict(
            images,
            [boxes for boxes, _ in annotations],
            [labels for _, labels in annotations],
            self.class_names,
            self.label_to_cat_id,
        )

    def write_coco_json(self, path: str | Path) -> Path:
        """Write :meth:`to_coco_dict` to ``path``; returns the path."""
        return write_json(self.to_coco_dict(), path)

    def export(self, root: str | Path) -> Path:
        """Write the split as a COCO-format folder: ``root/<split>/*.png`` and
        ``root/annotations/instances_<split>.json`` (readable by ``build_dataset("folder")``)."""
        root = Path(root)
        image_dir = root / self.split
        image_dir.mkdir(parents=True, exist_ok=True)
        coco = self.to_coco_dict()
        for info in coco["images"]:
            Image.fromarray(self.scene(info["id"]).image).save(image_dir / info["file_name"])
        return write_json(coco, root / "annotations" / f"instances_{self.split}.json")

    def _build_coco(self) -> COCO:
        return coco_from_dict(self.to_coco_dict())
