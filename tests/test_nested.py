"""Padding a list of images into a batch and a mask (True = padding)."""
import pytest
import torch

from detr_tutorial.nested import NestedTensor, nested_tensor_from_tensor_list, to_nested


def test_pads_to_the_largest_height_and_width_and_masks_the_padding():
    a, b = torch.ones(3, 4, 6), torch.full((3, 5, 2), 2.0)
    nt = nested_tensor_from_tensor_list([a, b])
    assert nt.tensors.shape == (2, 3, 5, 6)
    assert nt.mask.shape == (2, 5, 6)
    assert not nt.mask[0, :4, :6].any() and nt.mask[0, 4:, :].all()
    assert not nt.mask[1, :5, :2].any() and nt.mask[1, :, 2:].all()
    assert (nt.tensors[0, :, 4:, :] == 0).all() and (nt.tensors[1, :, :, 2:] == 0).all()
    assert nt.image_sizes == [(4, 6), (5, 2)]


def test_size_divisibility_rounds_up():
    nt = nested_tensor_from_tensor_list([torch.zeros(3, 33, 65)], size_divisibility=32)
    assert nt.tensors.shape[-2:] == (64, 96)


def test_a_batch_tensor_gets_an_all_false_mask():
    nt = to_nested(torch.zeros(2, 3, 8, 8))
    assert nt.mask.shape == (2, 8, 8) and not nt.mask.any()


@pytest.mark.parametrize(
    "images, error, message",
    [
        (torch.zeros(3, 8, 8), ValueError, r"add a batch dimension"),
        (torch.zeros(2, 1, 8, 8), ValueError, r"\[B, 3, H, W\]"),
        ([torch.zeros(1, 8, 8)], ValueError, r"\[3, H, W\]"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), TypeError, "float"),
        ("image.jpg", TypeError, "Tensor"),
        ([], ValueError, "empty"),
    ],
)
def test_bad_images_are_rejected_with_a_clear_message(images, error, message):
    with pytest.raises(error, match=message):
        to_nested(images)


def test_a_nested_tensor_with_a_wrong_mask_is_rejected():
    with pytest.raises(ValueError, match="mask"):
        to_nested(NestedTensor(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.bool)))
