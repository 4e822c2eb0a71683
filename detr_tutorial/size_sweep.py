"""How a shapes model's mAP depends on the image size: the validation scenes drawn on canvases
of other sizes, the objects still ``min_size``..``max_size`` pixels.

A model trained at one image size can learn box sizes *relative to the image* and then scores
well only at that size (the shipped model of 2026-11 scored 0.84 mAP at 128 px, 0.56 at 176 px).
:func:`shapes_map_at_sizes` measures that; ``benchmarks/bench_families.py`` reports the worst
size of each recipe, and a test holds the shipped model to its README figures::

    model = dt.load_shipped_model()
    table = shapes_map_at_sizes(model, sizes=(96, 128, 150, 176), num_images=200)
    table[150]["AP"]
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import nn

__all__ = ["SWEEP_SIZES", "shapes_map_at_sizes"]

#: 96..176 px in steps of 8, with 150 (not a multiple of 8 or 16) among them
SWEEP_SIZES: tuple[int, ...] = (96, 104, 112, 120, 128, 136, 144, 150, 160, 168, 176)


def shapes_map_at_sizes(
    model: nn.Module,
    sizes: Sequence[int] = SWEEP_SIZES,
    *,
    num_images: Optional[int] = 200,
    config: Optional["ShapesConfig"] = None,  # noqa: F821 (imported lazily)
    postprocess: Optional[nn.Module] = None,
    batch_size: int = 25,
    device: Union[str, torch.device] = "cpu",
    amp_dtype: Optional[torch.dtype] = None,
) -> dict[int, dict[str, float]]:
    """``{size: COCO metrics}`` of ``model`` on the shapes validation split drawn at each size.

    Args:
        model: a model of the package (its ``config`` picks the post-processing).
        sizes: canvas sides in pixels (each at least the config's ``max_size``).
        num_images: the first ``num_images`` validation scenes of each size (``None``: all 500).
        config: the data set (default ``ShapesConfig()``, the book's); its ``image_size`` is
            replaced by each size.
        postprocess: default ``dt.build_postprocess(model.config)``.
        batch_size, device, amp_dtype: of the evaluation; every batch holds one size, unpadded.
    """
    from .data.shapes import ShapesConfig, ShapesDataset
    from .data.transforms import make_transforms
    from .engine import evaluate
    from .families import build_postprocess
    from .train import make_eval_loader

    config = config or ShapesConfig()
    if postprocess is None:
        if not hasattr(model, "config"):
            raise TypeError(f"{type(model).__name__} has no config: pass its postprocess")
        postprocess = build_postprocess(model.config)
    results: dict[int, dict[str, float]] = {}
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < config.max_size:
            raise ValueError(f"sizes must be ints of at least max_size={config.max_size} px, got {size!r}")
        data = ShapesDataset("val", dataclasses.replace(config, image_size=size), make_transforms("val", "shapes"),
                             num_images=num_images)
        loader = make_eval_loader(data, batch_size=batch_size)
        results[size] = evaluate(model, postprocess, loader, data, device, amp_dtype)
    return results
