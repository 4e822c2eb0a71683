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

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors

Transforms = Callable[[object, dict], tuple]


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

    class_names: tuple[str, ...] = ()
    label_to_cat_id: dict[int, int] = {}

    def __init__(self, transforms: Optional[Transforms] = None) -> None:
        if transforms is None:
            from .transforms import default_transforms

            transforms = default_transforms()
        if not callable(transforms):
            raise TypeError(f"transforms must be callable or None, got {type(transforms).__name__}")
        self.transforms = transforms
        self._coco: Optional[COCO] = None

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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} images")
        index = index % len(self)
        image, target = self.load(index)
        image, target = self.transforms(image, target)
        if isinstance(target["boxes"], tv_tensors.BoundingBoxes):
            raise TypeError(
                "the transforms left boxes as tv_tensors.BoundingBoxes in pixels: end the "
                "pipeline with detr_tutorial.data.transforms.ToDetrTarget()"
            )
        return image, target


def class_index(names: Sequence[str]) -> dict[str, int]:
    """Class name -> contiguous label."""
    return {name: i for i, name in enumerate(names)}
