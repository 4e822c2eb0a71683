"""What every detection data set of the package has in common.

A data set loads a raw sample (a PIL image, its boxes as absolute ``(x1, y1, x2, y2)`` pixels
and contiguous labels), wraps the boxes in ``tv_tensors.BoundingBoxes`` so that
``torchvision.transforms.v2`` moves them with the image, runs the transforms, and hands back
``(image, target)`` in the package's targets convention (normalized ``(cx, cy, w, h)`` boxes).

Every data set also exposes ``class_names``, ``num_classes``, ``label_to_cat_id`` and a
pycocotools ``COCO`` ground truth (``.coco`` / ``get_coco_api()``), so training and evaluation
code never needs to know which data set it is looking at.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..image_io import read_image, upright, upright_size
from .coco_format import coco_from_dict

Transforms = Callable[[object, dict], tuple]


def load_annotated_image(
    path: Union[str, Path], width: int, height: int, what: str
) -> tuple[Image.Image, bool]:
    """Read the image that an annotation of size ``width x height`` describes, in the frame its
    boxes refer to; returns ``(8-bit RGB image, whether an EXIF orientation was left unapplied)``.

    A photo with an EXIF orientation is stored sideways (or mirrored) and shown upright. Which of
    the two did the annotator draw on? The sizes written beside the boxes tell, when they can:

    * they match the upright image but not the stored one (a 90 degree turn): the boxes are on
      the upright image, which is what is returned;
    * they match the stored pixels: the boxes are on those, which are returned unturned. This
      includes the case the sizes cannot decide (a flip, a half turn, a square image), where we
      follow pycocotools, torchvision's ``CocoDetection`` and the official DETR code, which all
      read the stored pixels (COCO 2017's own annotations were made on them);
    * they match neither: ``ValueError`` naming ``what``, the file and both sizes, because the
      boxes would land in the wrong place.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the file) for one
    that cannot be decoded.
    """
    image, orientation = read_image(path)
    stored = image.size
    shown = upright_size(stored, orientation)
    if (width, height) == shown and shown != stored:
        return upright(image, orientation), False
    if (width, height) == stored:
        return image, orientation != 1
    turned = f" ({shown[0]} x {shown[1]} once turned upright by its EXIF orientation)" if shown != stored else ""
    raise ValueError(
        f"{what}: the annotation gives the size {width} x {height} (width x height) but the image file "
        f"{path} is {stored[0]} x {stored[1]}{turned}; its boxes would not line up with the image"
    )


def make_raw_target(
    boxes_xyxy: np.ndarray, labels: np.ndarray, image_id: int, height: int, width: int
) -> dict:
    """The target before transforms: pixel boxes that v2 transforms know how to move."""
    boxes = torch.as_tensor(np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4))
    return {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
        "image_id": torch.tensor(int(image_id), dtype=torch.int64),
        "orig_size": torch.tensor([height, width], dtype=torch.int64),
    }


class DetectionDataset(Dataset):
    """Base class: subclasses implement ``__len__``, ``load`` and ``_build_coco``.

    Args:
        transforms: called as ``transforms(image, target)`` on the PIL image and the raw target;
            it must end with :class:`~detr_tutorial.data.transforms.ToDetrTarget`, as every
            pipeline from :func:`~detr_tutorial.data.transforms.make_transforms` does.
            ``None`` gives a float image in ``[0, 1]`` (not normalized) and no augmentation.
    """

    class_names: tuple[str, ...]  # one name per label, set by each subclass
    label_to_cat_id: dict[int, int]  # label -> category id of the COCO ground truth

    def __init__(self, transforms: Transforms | None = None) -> None:
        if transforms is None:
            from .transforms import default_transforms

            transforms = default_transforms()
        if not callable(transforms):
            raise TypeError(f"transforms must be callable or None, got {type(transforms).__name__}")
        self.transforms = transforms
        self._coco: COCO | None = None

    @property
    def num_classes(self) -> int:
        """Number of object classes (the model adds one "no object" class on top)."""
        return len(self.class_names)

    def label_info(self) -> dict:
        """What a checkpoint should store so labels map back to names and category ids."""
        return {
            "class_names": list(self.class_names),
            "label_to_cat_id": {int(k): int(v) for k, v in self.label_to_cat_id.items()},
        }

    def load(self, index: int) -> tuple[Image.Image, dict]:
        """The untransformed sample: a PIL RGB image and the target of :func:`make_raw_target`."""
        raise NotImplementedError

    def _build_coco(self) -> COCO:
        raise NotImplementedError

    @property
    def coco(self) -> COCO:
        """The pycocotools ground truth of this data set (built on first use, then cached)."""
        if self._coco is None:
            self._coco = self._build_coco()
        return self._coco

    def get_coco_api(self) -> COCO:
        """Same as :attr:`coco`; the name the official DETR code uses."""
        return self.coco

    def load_sized(self, index: int, size: int) -> tuple[Image.Image, dict]:
        """:meth:`load` at another size: the image and its boxes resized so that the shorter
        side is ``size`` pixels (the paper's multi-scale training). A data set that can draw
        its images at any size (shapes) overrides this."""
        from torchvision.transforms import v2

        return v2.Resize(size)(*self.load(index))

    def sized_item(self, index: int, size: int) -> tuple[torch.Tensor, dict]:
        """``dataset[index]`` with the image at ``size`` (see :meth:`load_sized`), then the
        transforms. Multi-scale training with one size per batch
        (``Recipe.batch_image_sizes``) loads its images this way; its transforms do not resize."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int (pixels), got {size!r}")
        return self._transform(*self.load_sized(self._check_index(index), size))

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} images")
        return index % len(self)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return self._transform(*self.load(self._check_index(index)))

    def _transform(self, image: Image.Image, target: dict) -> tuple[torch.Tensor, dict]:
        image, target = self.transforms(image, target)
        if isinstance(target["boxes"], tv_tensors.BoundingBoxes):
            raise TypeError(
                "the transforms left boxes as tv_tensors.BoundingBoxes in pixels: end the "
                "pipeline with detr_tutorial.data.transforms.ToDetrTarget()"
            )
        return image, target


class ConcatDetectionDataset(DetectionDataset):
    """Several data sets with the same classes as one (e.g. VOC2007 + VOC2012 trainval).

    Image ids are shifted so they stay unique: the images of the ``k``-th data set get
    ``offset_k + id``, where ``offset_k`` is one more than the largest id before it. The COCO
    ground truth is the union of the parts with those ids. The parts' own transforms are not
    used (their raw samples are); ``transforms`` applies to all.
    """

    def __init__(self, datasets: Sequence[DetectionDataset], transforms: Transforms | None = None) -> None:
        super().__init__(transforms)
        if not datasets:
            raise ValueError("ConcatDetectionDataset needs at least one data set")
        first = datasets[0]
        for ds in datasets[1:]:
            same_classes = tuple(ds.class_names) == tuple(first.class_names)
            if not same_classes or ds.label_to_cat_id != first.label_to_cat_id:
                raise ValueError("data sets to concatenate must have the same classes and category ids")
        self.datasets = list(datasets)
        self.class_names = tuple(first.class_names)
        self.label_to_cat_id = dict(first.label_to_cat_id)
        self.offsets, self.starts = [], []
        offset, start = 0, 0
        for ds in self.datasets:
            self.offsets.append(offset)
            self.starts.append(start)
            ids = ds.coco.getImgIds()
            offset += (max(ids) + 1) if ids else 0
            start += len(ds)
        self._len = start

    def __len__(self) -> int:
        return self._len

    def _locate(self, index: int) -> int:
        part = 0
        while part + 1 < len(self.starts) and index >= self.starts[part + 1]:
            part += 1
        return part

    def load(self, index: int) -> tuple[Image.Image, dict]:
        part = self._locate(index)
        image, target = self.datasets[part].load(index - self.starts[part])
        target["image_id"] = target["image_id"] + self.offsets[part]
        return image, target

    def _build_coco(self) -> COCO:
        images, annotations = [], []
        for ds, offset in zip(self.datasets, self.offsets):
            data = ds.coco.dataset
            images += [{**im, "id": im["id"] + offset} for im in data["images"]]
            for ann in data["annotations"]:
                annotations.append({**ann, "id": len(annotations) + 1, "image_id": ann["image_id"] + offset})
        categories = self.datasets[0].coco.dataset["categories"]
        return coco_from_dict({"images": images, "annotations": annotations, "categories": categories})
