"""COCO mAP with pycocotools: perfect, hand-computed and empty cases.

pycocotools' AP: for each of the 10 IoU thresholds 0.50, 0.55, ..., 0.95, precision is made
monotone (the best precision at any higher recall) and read at the 101 recall points
0, 0.01, ..., 1 (0 where that recall is never reached); AP is the mean over those 101 points,
then over the thresholds and the categories that have ground truth.
"""
import pytest
import torch
from pycocotools.coco import COCO

from detr_tutorial.data.shapes import ShapesDataset
from detr_tutorial.evaluation import (
    METRIC_NAMES,
    CocoEvaluator,
    evaluate_detections,
    format_metrics_table,
)  # fmt: skip


def make_gt(images, annotations, cat_ids=(1,)):
    """A ground truth ``COCO`` object; images: (id, w, h); annotations: (image_id, cat, xywh)."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i, w, h in images],
        "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": list(b), "area": b[2] * b[3], "iscrowd": 0}
            for k, (i, c, b) in enumerate(annotations)
        ],
    }
    coco.createIndex()
    return coco


def dets(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels)}


ONE_LARGE_GT = make_gt([(1, 200, 200)], [(1, 1, (0, 0, 100, 100))])  # area 10000 > 96^2: "large"
LABEL0 = {0: 1}


def test_perfect_predictions_on_shapes_give_ap_one():
    ds = ShapesDataset("val", num_images=20)
    predictions = {}
    for i in range(len(ds)):
        scene = ds.scene(i)  # ground truth boxes in pixels, xyxy
        predictions[i] = dets(scene.boxes, [0.9] * len(scene.labels), scene.labels)
    metrics = evaluate_detections(ds.coco, predictions, ds.label_to_cat_id)
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
    assert metrics["AR100"] == pytest.approx(1.0)


def test_iou_between_050_and_055_counts_at_one_threshold_of_ten():
    # prediction (0, 0, 100, 52) vs GT (0, 0, 100, 100): IoU = 5200 / 10000 = 0.52.
    # It is a true positive only at threshold 0.50 (AP 1 there) and a miss at 0.55..0.95
    # (AP 0): AP = 1/10 = 0.1, AP50 = 1, AP75 = 0; recall behaves the same way.
    metrics = evaluate_detections(ONE_LARGE_GT, {1: dets([[0, 0, 100, 52]], [0.8], [0])}, LABEL0)
    assert metrics["AP"] == pytest.approx(0.1)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(0.0)
    assert metrics["APl"] == pytest.approx(0.1) and metrics["AR100"] == pytest.approx(0.1)
    assert metrics["APs"] == -1 and metrics["APm"] == -1  # no small or medium ground truth


def test_higher_scored_false_positive_halves_precision_up_to_the_recall_reached():
    # two GT; detections by score: a false positive (0.95), then an exact hit (0.9).
    # After the FP: precision 0, recall 0; after the hit: precision 1/2, recall 1/2.
    # Monotone precision is 1/2 at recall points 0.00..0.50 (51 points), 0 above:
    # AP = 51 * 0.5 / 101 at every IoU threshold.
    gt = make_gt([(1, 200, 200)], [(1, 1, (0, 0, 100, 100)), (1, 1, (120, 120, 50, 50))])
    predictions = {1: dets([[0, 100, 20, 120], [0, 0, 100, 100]], [0.95, 0.9], [0, 0])}
    metrics = evaluate_detections(gt, predictions, LABEL0)
    assert metrics["AP"] == pytest.approx(51 * 0.5 / 101)
    assert metrics["AR100"] == pytest.approx(0.5)


def test_labels_are_mapped_to_category_ids():
    gt = make_gt([(1, 200, 200)], [(1, 7, (0, 0, 100, 100))], cat_ids=(3, 7))
    right = evaluate_detections(gt, {1: dets([[0, 0, 100, 100]], [0.9], [1])}, {0: 3, 1: 7})
    wrong = evaluate_detections(gt, {1: dets([[0, 0, 100, 100]], [0.9], [0])}, {0: 3, 1: 7})
    assert right["AP"] == pytest.approx(1.0) and wrong["AP"] == pytest.approx(0.0)


def test_detections_of_categories_without_ground_truth_are_ignored():
    # label 1 maps to category 2, which the ground truth does not have (an official COCO
    # checkpoint's "N/A" classes): pycocotools leaves it out instead of counting a false positive
    predictions = {1: dets([[0, 0, 100, 100], [0, 0, 50, 50]], [0.9, 0.99], [0, 1])}
    metrics = evaluate_detections(ONE_LARGE_GT, predictions, {0: 1, 1: 2})
    assert metrics["AP"] == pytest.approx(1.0)


def test_images_without_detections_score_zero():
    metrics = evaluate_detections(ONE_LARGE_GT, {1: dets([], [], [])}, LABEL0)
    assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0


def test_only_images_in_predictions_are_evaluated():
    # image 2's object is never predicted, but image 2 is not part of this evaluation
    gt = make_gt([(1, 200, 200), (2, 200, 200)], [(1, 1, (0, 0, 100, 100)), (2, 1, (0, 0, 100, 100))])
    partial = evaluate_detections(gt, {1: dets([[0, 0, 100, 100]], [0.9], [0])}, LABEL0)
    both = evaluate_detections(gt, {1: dets([[0, 0, 100, 100]], [0.9], [0]), 2: dets([], [], [])}, LABEL0)
    assert partial["AP"] == pytest.approx(1.0)
    assert both["AR100"] == pytest.approx(0.5)


def test_bad_predictions_are_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="no images"):
        evaluate_detections(ONE_LARGE_GT, {}, LABEL0)
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_detections(ONE_LARGE_GT, {5: dets([], [], [])}, LABEL0)
    with pytest.raises(ValueError, match="no category id"):
        evaluate_detections(ONE_LARGE_GT, {1: dets([[0, 0, 1, 1]], [0.5], [1])}, LABEL0)
    with pytest.raises(ValueError, match="lack"):
        evaluate_detections(ONE_LARGE_GT, {1: {"boxes": torch.zeros(0, 4)}}, LABEL0)


def test_evaluation_prints_nothing(capsys):
    evaluate_detections(ONE_LARGE_GT, {1: dets([[0, 0, 100, 52]], [0.8], [0])}, LABEL0)
    assert capsys.readouterr().out == ""


def test_coco_evaluator_accumulates_batches():
    gt = make_gt([(1, 200, 200), (2, 200, 200)], [(1, 1, (0, 0, 100, 100)), (2, 1, (0, 0, 100, 100))])
    evaluator = CocoEvaluator(gt, LABEL0)
    evaluator.update({1: dets([[0, 0, 100, 100]], [0.9], [0])})
    evaluator.update({2: dets([], [], [])})
    assert evaluator.compute()["AR100"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="already"):
        evaluator.update({2: dets([], [], [])})
    evaluator.reset()
    assert evaluator.predictions == {}


def test_metrics_table_lists_every_metric_and_marks_unmeasured_ones():
    metrics = evaluate_detections(ONE_LARGE_GT, {1: dets([[0, 0, 100, 52]], [0.8], [0])}, LABEL0)
    assert tuple(metrics) == METRIC_NAMES
    table = format_metrics_table(metrics)
    lines = table.splitlines()
    assert len(lines) == 1 + 12
    assert lines[1].split()[:2] == ["AP", "0.100"] and lines[2].split()[:2] == ["AP50", "1.000"]
    assert lines[4].split()[:2] == ["APs", "n/a"]
    with pytest.raises(ValueError):
        format_metrics_table({"loss": 1.0})
