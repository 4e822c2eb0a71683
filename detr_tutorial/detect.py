"""``predict``: detections for PIL images or tensors, with the post-processing of the model's family.

The one-call path of the README and chapter 05: images in ``[0, 1]`` are normalized here, batched
at their own sizes, run through the model in eval mode and post-processed by
:func:`detr_tutorial.families.build_postprocess` for the model's config.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence, Union

import torch
from torch import Tensor, nn

from .families import build_postprocess
from .image_io import IMAGENET_MEAN, IMAGENET_STD
from .models.detr import PostProcess

__all__ = ["predict"]


def _to_image_tensor(image: Any) -> Tensor:
    """PIL image or ``[3, H, W]`` tensor in ``[0, 1]`` (uint8 also accepted) -> float ``[3, H, W]``."""
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"each image must be [3, H, W], got {list(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float() / 255.0
        if not image.is_floating_point():
            raise TypeError(f"image tensors must be float in [0, 1] or uint8, got {image.dtype}")
        if image.min() < 0 or image.max() > 1:
            raise ValueError("float image tensors must hold values in [0, 1] (unnormalized); normalize is done here")
        return image
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow is a dependency
        raise TypeError("PIL is needed to read PIL images") from exc
    if isinstance(image, Image.Image):
        from torchvision.transforms.functional import pil_to_tensor

        from .image_io import exif_orientation, to_rgb

        if exif_orientation(image) != 1:
            warnings.warn(
                f"this image has EXIF orientation {exif_orientation(image)}: predicting on its stored pixels, "
                "and the boxes refer to them; pass PIL.ImageOps.exif_transpose(image) (or an image read by "
                "detr_tutorial.image_io.open_image) to predict on the image as viewers show it",
                stacklevel=3,
            )
        return pil_to_tensor(to_rgb(image)).float() / 255.0  # 16-bit and float modes rescaled, not clipped
    raise TypeError(f"images must be PIL images or [3, H, W] tensors, got {type(image).__name__}")


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Union[Any, Sequence[Any]],
    threshold: float = 0.7,
    device: Union[None, str, torch.device] = None,
) -> list[dict[str, Any]]:
    """Detect objects in PIL images or ``[3, H, W]`` tensors in ``[0, 1]``.

    Images are normalized here and batched at their own sizes (padding masked). Returns one dict
    per image with ``boxes`` (xyxy pixels), ``scores``, ``labels``, ``query`` (which query made
    each detection) and, when the model knows them, ``names``; only scores ``>= threshold`` kept.

    A PIL image is taken as its pixels, 16-bit and float modes rescaled to ``[0, 1]`` (not
    clipped); one whose EXIF orientation says it is shown turned gets a warning, as the boxes
    then refer to the stored, unturned pixels (``detr_tutorial.image_io.open_image`` reads a file
    upright). Tensors with NaN or infinite pixels are a ``ValueError``, float64 a ``TypeError``.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a score in [0, 1], got {threshold!r}")  # NaN fails too
    single = not isinstance(images, (list, tuple))
    batch = [_to_image_tensor(im) for im in ([images] if single else images)]
    if device is None:
        device = next(model.parameters()).device
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    normalized = [((im - mean) / std).to(device) for im in batch]
    was_training = model.training
    model.eval()
    try:
        outputs = model(normalized)
    finally:
        model.train(was_training)
    sizes = torch.tensor([im.shape[-2:] for im in batch], device=device)
    postprocess = build_postprocess(model.config) if model.config is not None else PostProcess()
    results = postprocess(outputs, sizes)
    names = model.config.class_names if model.config is not None else None
    detections = []
    for r in results:
        keep = r["scores"] >= threshold
        det: dict[str, Any] = {k: v[keep].cpu() for k, v in r.items() if k != "query"}
        # which query made each detection: the post-processor says so when it ranks (query, class)
        # pairs (Deformable DETR's top 100); otherwise detection i is query i
        det["query"] = r["query"][keep].cpu() if "query" in r else torch.nonzero(keep).flatten().cpu()
        if names is not None:
            det["names"] = [names[int(i)] for i in det["labels"]]
        detections.append(det)
    return detections
