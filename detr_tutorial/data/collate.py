"""Turning a list of ``(image, target)`` samples into a batch for DETR."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..nested import NestedTensor, nested_tensor_from_tensor_list


def collate_fn(
    batch: Sequence[tuple[torch.Tensor, dict]], size_divisibility: int = 0
) -> tuple[NestedTensor, list[dict]]:
    """Pad the images of a batch to a common size and keep the targets as a list.

    Images keep their own size and aspect ratio (DETR trains on several scales at once), so
    they cannot simply be stacked: they are padded at the bottom and right, and the
    ``NestedTensor.mask`` is ``True`` on the padding. Targets hold a different number of boxes
    per image, so they stay a list of dicts. Use it as ``DataLoader(..., collate_fn=collate_fn)``.
    """
    if len(batch) == 0:
        raise ValueError("collate_fn got an empty batch")
    for i, sample in enumerate(batch):
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise TypeError(f"sample {i} must be an (image, target) pair, got {type(sample).__name__}")
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return nested_tensor_from_tensor_list(images, size_divisibility=size_divisibility), targets
