"""COCO-style detection metrics (mAP and recall) with pycocotools.

Every data set of the package exposes a pycocotools ground truth (``dataset.coco``) and the
map from model labels to its category ids (``dataset.label_to_cat_id``), so the same call
evaluates shapes, VOC and COCO::

    metrics = evaluate_detections(dataset.coco, predictions, dataset.label_to_cat_id)
    print(format_metrics_table(metrics))

``predictions`` maps an image id to that image's detections in original-image pixels, the
output of ``PostProcess``: ``{"boxes": [N, 4] (x1, y1, x2, y2), "scores": [N], "labels": [N]}``.
Only images present in ``predictions`` are evaluated (an image with no detection must be there
with empty tensors), which lets a quick evaluation run on part of a validation set.

pycocotools reports -1 for a metric that has no ground truth (e.g. ``APs`` when no object is
small); we keep that convention.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .data.coco_format import coco_from_dict, silence_stdout

logger = logging.getLogger(__name__)

# The 12 numbers of COCOeval.stats, in order, with what each one averages over.
METRICS: tuple[tuple[str, str], ...] = (
    ("AP", "AP @ IoU=0.50:0.95, all areas, maxDets=100"),
    ("AP50", "AP @ IoU=0.50, all areas, maxDets=100"),
    ("AP75", "AP @ IoU=0.75, all areas, maxDets=100"),
    ("APs", "AP @ IoU=0.50:0.95, small (< 32^2 px)"),
    ("APm", "AP @ IoU=0.50:0.95, medium (32^2..96^2 px)"),
    ("APl", "AP @ IoU=0.50:0.95, large (> 96^2 px)"),
    ("AR1", "AR @ IoU=0.50:0.95, all areas, maxDets=1"),
    ("AR10", "AR @ IoU=0.50:0.95, all areas, maxDets=10"),
    ("AR100", "AR @ IoU=0.50:0.95, all areas, maxDets=100"),
    ("ARs", "AR @ IoU=0.50:0.95, small, maxDets=100"),
    ("ARm", "AR @ IoU=0.50:0.95, medium, maxDets=100"),
    ("ARl", "AR @ IoU=0.50:0.95, large, maxDets=100"),
)
METRIC_NAMES = tuple(name for name, _ in METRICS)

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]


def _as_numpy(x: ArrayLike, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def detections_to_coco(
    predictions: Mapping[int, Mapping[str, ArrayLike]], label_to_cat_id: Mapping[int, int]
) -> list[dict]:
    """Detections -> COCO result entries (``image_id``, ``category_id``, xywh ``bbox``, ``score``)."""
    results = []
    for image_id, det in predictions.items():
        missing = {"boxes", "scores", "labels"} - set(det)
        if missing:
            raise ValueError(f"predictions for image {image_id} lack {sorted(missing)}")
        boxes = _as_numpy(det["boxes"], np.float64).reshape(-1, 4)
        scores = _as_numpy(det["scores"], np.float64).reshape(-1)
        labels = _as_numpy(det["labels"], np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels"
            )
        unknown = sorted({int(l) for l in labels} - set(label_to_cat_id))
        if unknown:
            raise ValueError(
                f"image {image_id}: labels {unknown} have no category id in label_to_cat_id "
                "(was the 'no object' class left in the predictions?)"
            )
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label_to_cat_id[int(label)]),
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": float(score),
                }
            )
    return results


def _results_coco(coco_gt: COCO, results: list[dict]) -> COCO:
    """Detections as a ``COCO`` object, built like ``COCO.loadRes`` but quiet and also
    for an empty list (``loadRes`` fails on one)."""
    anns = []
    for i, r in enumerate(results):
        w, h = r["bbox"][2], r["bbox"][3]
        anns.append({**r, "id": i + 1, "area": w * h, "iscrowd": 0})
    return coco_from_dict(
        {
            "images": coco_gt.dataset["images"],
            "categories": coco_gt.dataset.get("categories", []),
            "annotations": anns,
        }
    )


def evaluate_detections(
    coco_gt: COCO,
    predictions: Mapping[int, Mapping[str, ArrayLike]],
    label_to_cat_id: Mapping[int, int],
    image_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """COCO box metrics of ``predictions`` against ``coco_gt``.

    Args:
        coco_gt: the ground truth (``dataset.coco``).
        predictions: image id -> ``{"boxes": xyxy pixels [N, 4], "scores": [N], "labels": [N]}``.
        label_to_cat_id: model label -> category id of ``coco_gt`` (``dataset.label_to_cat_id``).
        image_ids: images to evaluate; default: the keys of ``predictions``.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
        "ARl"}`` as floats in ``[0, 1]`` (or -1 where there is no ground truth to measure).
    """
    image_ids = sorted(int(i) for i in (predictions.keys() if image_ids is None else image_ids))
    if not image_ids:
        raise ValueError("no images to evaluate: predictions is empty and no image_ids were given")
    unknown = sorted(set(image_ids) - set(coco_gt.getImgIds()))
    if unknown:
        raise ValueError(f"image ids {unknown[:10]} are not in the ground truth")
    results = detections_to_coco(predictions, label_to_cat_id)
    coco_dt = _results_coco(coco_gt, results)
    with silence_stdout():
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    metrics = {name: float(value) for name, value in zip(METRIC_NAMES, coco_eval.stats)}
    logger.info("evaluated %d images, %d detections: AP %.4f", len(image_ids), len(results), metrics["AP"])
    return metrics


class CocoEvaluator:
    """Collect detections batch by batch, then compute the COCO metrics once.

    >>> evaluator = CocoEvaluator(dataset.coco, dataset.label_to_cat_id)
    >>> evaluator.update({int(t["image_id"]): det for t, det in zip(targets, detections)})
    >>> metrics = evaluator.compute()
    """

    def __init__(self, coco_gt: COCO, label_to_cat_id: Mapping[int, int]) -> None:
        self.coco_gt = coco_gt
        self.label_to_cat_id = dict(label_to_cat_id)
        self.predictions: dict[int, dict] = {}

    def update(self, predictions: Mapping[int, Mapping[str, ArrayLike]]) -> None:
        """Add detections of more images (moved to the CPU); an image seen twice is an error."""
        for image_id, det in predictions.items():
            image_id = int(image_id)
            if image_id in self.predictions:
                raise ValueError(f"image {image_id} was already added to the evaluator")
            self.predictions[image_id] = {
                k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in det.items()
            }

    def compute(self) -> dict[str, float]:
        """The metrics of :func:`evaluate_detections` over every image added so far."""
        return evaluate_detections(self.coco_gt, self.predictions, self.label_to_cat_id)

    def reset(self) -> None:
        self.predictions = {}


def format_metrics_table(metrics: Mapping[str, float], digits: int = 3) -> str:
    """A plain-text table of the metrics, one per line, with what each one means.

    Metrics pycocotools could not measure (-1) are shown as ``n/a``.
    """
    rows = [(name, meaning) for name, meaning in METRICS if name in metrics]
    if not rows:
        raise ValueError(f"metrics has none of {METRIC_NAMES}; got keys {sorted(metrics)}")
    width = max(len(name) for name, _ in rows)
    lines = [f"{'metric':<{width}}  {'value':>{digits + 2}}  meaning"]
    for name, meaning in rows:
        value = metrics[name]
        shown = "n/a" if value < 0 else f"{value:.{digits}f}"
        lines.append(f"{name:<{width}}  {shown:>{digits + 2}}  {meaning}")
    return "\n".join(lines)
