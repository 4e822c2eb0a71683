"""COCO-format ground truth built in memory, so every data set is evaluated the same way.

pycocotools evaluates detections against a ``COCO`` object. The COCO data set ships one as a
json file; the synthetic shapes set and Pascal VOC do not, so they describe their annotations
with :func:`build_coco_dict` and turn that into a ``COCO`` object with :func:`coco_from_dict`.
Boxes in the COCO format are absolute ``(x, y, w, h)`` pixels; category ids start at 1.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from pycocotools.coco import COCO

PathLike = Union[str, Path]


@contextlib.contextmanager
def silence_stdout():
    """Swallow what pycocotools prints ("creating index...", "DONE (t=0.01s)")."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def build_coco_dict(
    images: Sequence[Mapping[str, Any]],
    boxes_xyxy: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    class_names: Sequence[str],
    label_to_cat_id: Mapping[int, int],
    iscrowd: Sequence[np.ndarray] | None = None,
) -> dict:
    """Describe a detection data set in the COCO json format.

    Args:
        images: one dict per image with ``id``, ``file_name``, ``height``, ``width``.
        boxes_xyxy: per image, a float array ``[N, 4]`` of absolute ``(x1, y1, x2, y2)`` pixels.
        labels: per image, an int array ``[N]`` of contiguous labels ``0..num_classes-1``.
        class_names: name of each contiguous label.
        label_to_cat_id: contiguous label -> COCO category id.
        iscrowd: per image, an optional 0/1 array ``[N]``; pycocotools ignores detections that
            fall on crowd (``1``) boxes instead of counting them as false positives.

    Returns:
        ``{"images", "annotations", "categories"}`` with annotation ids starting at 1
        (pycocotools treats an annotation id of 0 as "unmatched").
    """
    if not (len(images) == len(boxes_xyxy) == len(labels)):
        raise ValueError(
            f"images, boxes_xyxy and labels must have one entry per image; got "
            f"{len(images)}, {len(boxes_xyxy)} and {len(labels)}"
        )
    categories = [
        {"id": int(label_to_cat_id[label]), "name": str(name), "supercategory": "none"}
        for label, name in enumerate(class_names)
    ]
    annotations = []
    for i, (image, boxes, labs) in enumerate(zip(images, boxes_xyxy, labels)):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        labs = np.asarray(labs, dtype=np.int64).reshape(-1)
        crowd = np.zeros(len(labs), dtype=np.int64) if iscrowd is None else np.asarray(iscrowd[i])
        if len(boxes) != len(labs) or len(crowd) != len(labs):
            raise ValueError(f"image {image['id']}: {len(boxes)} boxes but {len(labs)} labels")
        for box, label, crowd_flag in zip(boxes, labs, crowd):
            x1, y1, x2, y2 = (float(v) for v in box)
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(image["id"]),
                    "category_id": int(label_to_cat_id[int(label)]),
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": int(crowd_flag),
                }
            )
    return {
        "images": [
            {
                "id": int(im["id"]),
                "file_name": str(im["file_name"]),
                "height": int(im["height"]),
                "width": int(im["width"]),
            }
            for im in images
        ],
        "annotations": annotations,
        "categories": categories,
    }


def coco_from_dict(dataset: dict) -> COCO:
    """A pycocotools ``COCO`` object indexing ``dataset`` (a COCO-format dict), quietly."""
    coco = COCO()
    coco.dataset = dataset
    with silence_stdout():
        coco.createIndex()
    return coco


def load_coco(ann_file: PathLike) -> COCO:
    """Read a COCO-format json file into a ``COCO`` object, quietly."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
    with open(ann_file, encoding="utf-8") as f:
        try:
            dataset = json.load(f)
        except json.JSONDecodeError as exc:  # its message alone does not say which file
            raise ValueError(f"{ann_file} is not valid JSON: {exc}") from exc
    return coco_from_dict(dataset)


def write_json(dataset: dict, path: PathLike) -> Path:
    """Write a COCO-format dict to ``path`` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(dataset, f)
    return path


def cat_ids_in_order(categories: Iterable[Mapping[str, Any]]) -> list[int]:
    """Category ids sorted ascending: the order that defines contiguous labels."""
    return sorted(int(c["id"]) for c in categories)
