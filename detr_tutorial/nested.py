"""Batching images of different sizes: pad to a common size and remember where the padding is.

DETR keeps each image's aspect ratio, so a batch holds images of different sizes. They are padded
(bottom and right) to the largest height and width and a boolean ``mask`` marks the padding
(``True`` = padding), which every attention layer later ignores. This is the official code's
``NestedTensor``, without its ``args`` plumbing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor

from .validation import check_finite_pixels, check_pixel_dtype

__all__ = ["NestedTensor", "nested_tensor_from_tensor_list", "to_nested"]


@dataclass
class NestedTensor:
    """A padded batch ``tensors [B, C, H, W]`` and its padding ``mask [B, H, W]`` (True = pad)."""

    tensors: Tensor
    mask: Tensor

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "NestedTensor":
        return NestedTensor(
            self.tensors.to(device, non_blocking=non_blocking),
            self.mask.to(device, non_blocking=non_blocking),
        )

    def decompose(self) -> tuple[Tensor, Tensor]:
        return self.tensors, self.mask

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """The unpadded ``(h, w)`` of every image, read off the mask."""
        valid = ~self.mask
        heights = valid.any(dim=2).sum(dim=1)
        widths = valid.any(dim=1).sum(dim=1)
        return [(int(h), int(w)) for h, w in zip(heights, widths)]


def _check_image(img: Tensor, index: int) -> None:
    if not isinstance(img, Tensor):
        raise TypeError(f"image {index} must be a torch.Tensor [3, H, W], got {type(img).__name__}")
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"image {index} must have shape [3, H, W], got {list(img.shape)}")
    if img.shape[1] == 0 or img.shape[2] == 0:
        raise ValueError(f"image {index} is empty: shape {list(img.shape)}")
    check_pixel_dtype(img.dtype, f"image {index}")
    if not _tracing():
        check_finite_pixels(img, f"image {index}")


def _tracing() -> bool:
    """Whether the call is being traced or compiled (``torch.export``, ``torch.compile``,
    ``torch.jit.trace``, ONNX export), where a check of pixel values cannot run."""
    return bool(
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or getattr(torch.compiler, "is_exporting", lambda: False)()
        or torch.onnx.is_in_onnx_export()
    )


def nested_tensor_from_tensor_list(images: Sequence[Tensor], size_divisibility: int = 0) -> NestedTensor:
    """Pad a list of ``[3, H_i, W_i]`` images into ``[B, 3, H, W]`` plus a ``[B, H, W]`` mask.

    ``size_divisibility`` rounds ``H`` and ``W`` up to a multiple (e.g. 32, the backbone stride).
    Padding pixels are zero, which after ImageNet normalization is the mean colour.
    """
    if len(images) == 0:
        raise ValueError("cannot batch an empty list of images")
    for i, img in enumerate(images):
        _check_image(img, i)
    for i, img in enumerate(images[1:], start=1):
        if img.dtype != images[0].dtype or img.device != images[0].device:
            raise TypeError(
                f"image {i} is {img.dtype} on {img.device} but image 0 is {images[0].dtype} on "
                f"{images[0].device}: a batch needs one dtype and one device"
            )
    max_h = max(int(img.shape[1]) for img in images)
    max_w = max(int(img.shape[2]) for img in images)
    if size_divisibility > 1:
        max_h = (max_h + size_divisibility - 1) // size_divisibility * size_divisibility
        max_w = (max_w + size_divisibility - 1) // size_divisibility * size_divisibility
    first = images[0]
    batch = first.new_zeros((len(images), 3, max_h, max_w))
    mask = torch.ones((len(images), max_h, max_w), dtype=torch.bool, device=first.device)
    for img, pad_img, m in zip(images, batch, mask):
        pad_img[:, : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return NestedTensor(batch, mask)


def to_nested(samples: Union[NestedTensor, Tensor, Sequence[Tensor]]) -> NestedTensor:
    """Accept what a user naturally passes to the model and return a :class:`NestedTensor`.

    - ``NestedTensor``: returned as is (its mask must be ``[B, H, W]`` bool);
    - ``Tensor [B, 3, H, W]``: no padding, an all-False mask;
    - list/tuple of ``[3, H, W]`` tensors: padded with :func:`nested_tensor_from_tensor_list`.

    Pixels must be float16/bfloat16/float32 (``TypeError`` otherwise, float64 included) and finite
    (``ValueError``). A ``NestedTensor``'s values are not inspected again (``collate_fn`` checked
    them on the CPU, and a check here would stall the GPU every step), nor are a tensor's while
    being traced or compiled.
    """
    if isinstance(samples, NestedTensor):
        t, m = samples.tensors, samples.mask
        if t.dim() != 4 or t.shape[1] != 3:
            raise ValueError(f"NestedTensor.tensors must be [B, 3, H, W], got {list(t.shape)}")
        if m.dtype != torch.bool or m.shape != (t.shape[0], t.shape[2], t.shape[3]):
            raise ValueError(
                f"NestedTensor.mask must be a bool tensor [B, H, W] = {[t.shape[0], t.shape[2], t.shape[3]]}, "
                f"got {m.dtype} {list(m.shape)}"
            )
        check_pixel_dtype(t.dtype, "NestedTensor.tensors")
        return samples
    if isinstance(samples, Tensor):
        if samples.dim() == 3:
            raise ValueError(
                f"images must be [B, 3, H, W] or a list of [3, H, W]; got a single [3, H, W] tensor "
                f"{list(samples.shape)}: add a batch dimension with images[None]"
            )
        if samples.dim() != 4 or samples.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] or a list of [3, H, W], got {list(samples.shape)}")
        check_pixel_dtype(samples.dtype, "images")
        if not _tracing():
            check_finite_pixels(samples, "images")
        mask = torch.zeros(
            (samples.shape[0], samples.shape[2], samples.shape[3]), dtype=torch.bool, device=samples.device
        )
        return NestedTensor(samples, mask)
    if isinstance(samples, (list, tuple)):
        return nested_tensor_from_tensor_list(list(samples))
    raise TypeError(
        f"images must be a Tensor [B, 3, H, W], a list of [3, H, W] tensors or a NestedTensor, "
        f"got {type(samples).__name__}"
    )
