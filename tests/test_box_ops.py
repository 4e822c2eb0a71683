"""Box conversions, IoU and GIoU: equal to torchvision.ops, and right on hand-made cases."""
import pytest
import torch
import torchvision.ops as tvops

from detr_tutorial import box_ops


def _random_xyxy(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g)
    wh = torch.rand(n, 2, generator=g) * 0.5 + 0.01
    return torch.cat([xy, xy + wh], dim=1)


def test_cxcywh_xyxy_round_trip_equals_torchvision():
    boxes = _random_xyxy(50, 0)
    cxcywh = box_ops.box_xyxy_to_cxcywh(boxes)
    torch.testing.assert_close(cxcywh, tvops.box_convert(boxes, "xyxy", "cxcywh"))
    torch.testing.assert_close(box_ops.box_cxcywh_to_xyxy(cxcywh), boxes)


def test_conversion_keeps_leading_dimensions():
    boxes = torch.rand(2, 7, 4)
    assert box_ops.box_cxcywh_to_xyxy(boxes).shape == (2, 7, 4)


def test_iou_equals_torchvision_on_random_boxes():
    a, b = _random_xyxy(20, 1), _random_xyxy(30, 2)
    iou, _ = box_ops.box_iou(a, b)
    torch.testing.assert_close(iou, tvops.box_iou(a, b))


def test_giou_equals_torchvision_on_random_boxes():
    a, b = _random_xyxy(20, 3), _random_xyxy(30, 4)
    torch.testing.assert_close(box_ops.generalized_box_iou(a, b), tvops.generalized_box_iou(a, b))


def test_giou_of_identical_boxes_is_one():
    box = torch.tensor([[0.1, 0.2, 0.5, 0.6]])
    assert box_ops.generalized_box_iou(box, box).item() == pytest.approx(1.0)


def test_giou_of_disjoint_boxes_by_hand():
    # A = [0,1]x[0,1], B = [2,3]x[0,1]: IoU 0, union 2, enclosing box [0,3]x[0,1] of area 3
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert box_ops.generalized_box_iou(a, b).item() == pytest.approx(0.0 - (3 - 2) / 3)


def test_giou_of_nested_boxes_equals_iou():
    # B inside A: the enclosing box is A itself, so GIoU = IoU = area(B) / area(A) = 1/4
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.5, 0.5, 1.5, 1.5]])
    assert box_ops.generalized_box_iou(a, b).item() == pytest.approx(0.25)


def test_giou_rejects_degenerate_boxes():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    bad = torch.tensor([[0.5, 0.5, 0.4, 0.9]])  # x2 < x1
    with pytest.raises(ValueError, match="x2 < x1"):
        box_ops.generalized_box_iou(good, bad)


@pytest.mark.parametrize(
    "boxes, message",
    [
        (torch.tensor([[0.5, 0.5, 0.2]]), r"shape \[N, 4\]"),
        (torch.tensor([[0.5, 0.5, 0.0, 0.2]]), "non-positive width or height"),
        (torch.tensor([[0.5, 0.5, -0.1, 0.2]]), "non-positive width or height"),
        (torch.tensor([[50.0, 40.0, 20.0, 10.0]]), "normalized"),
        (torch.tensor([[0.95, 0.5, 0.2, 0.2]]), "outside"),
        (torch.tensor([[float("nan"), 0.5, 0.2, 0.2]]), "NaN"),
    ],
)
def test_check_boxes_names_the_problem(boxes, message):
    with pytest.raises(ValueError, match=message):
        box_ops.check_boxes(boxes)


def test_check_boxes_accepts_empty_and_valid_boxes():
    box_ops.check_boxes(torch.zeros(0, 4))
    box_ops.check_boxes(torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2]]))
