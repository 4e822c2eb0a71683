"""Run DETR once on one image and keep everything the attention figures need.

The explorers redraw on every slider move; running the model each time would make them sluggish
on a CPU. So a model runs once per image here, and every figure and widget reads from the
resulting :class:`AttentionInference`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .. import box_ops
from ..families import build_postprocess
from ..models.detr import PostProcess
from .drawing import ImageLike, image_to_tensor, normalize

Head = Union[int, str]


@dataclass
class AttentionInference:
    """One image, a model's outputs for it, and its post-processed detections (batch index removed).

    Shapes: ``image`` ``[3, H, W]`` in ``[0, 1]``; ``pred_logits`` ``[Q, C + 1]`` (``[Q, C]`` for
    sigmoid models); ``pred_boxes`` ``[Q, 4]`` normalized cxcywh; ``enc_attn``
    ``[L_enc, heads, hw, hw]`` on the encoder grid; ``dec_attn`` ``[L_dec, heads, Q, h'w']`` on the
    decoder grid; ``scores``, ``labels`` ``[Q]`` and ``boxes`` ``[Q, 4]`` (xyxy pixels) from the
    post-processing, one per query.

    ``feature_shape`` is the decoder grid ``(h', w')``; ``enc_feature_shape`` the encoder grid
    ``(h, w)``, the same grid when None (dense DETR models attend over one feature map in both).
    A deformable model (RT-DETR) has two: AIFI's self-attention over its coarsest level, and a
    decoder that samples points: ``dec_sampling_locations`` ``[L_dec, heads, Q, L, P, 2]`` (``(x, y)``
    in ``[0, 1]`` of the image) and ``dec_attention_weights`` ``[L_dec, heads, Q, L, P]`` keep the
    points, and ``dec_attn`` is their weights splatted onto the finest level's grid (see
    :func:`~detr_tutorial.models.ms_deform_attn.splat_sampling_points`). Both grids are laid evenly
    over the image (for a padded input they cover the padding too, as the model's maps do).
    """

    image: torch.Tensor
    pred_logits: torch.Tensor
    pred_boxes: torch.Tensor
    enc_attn: torch.Tensor
    dec_attn: torch.Tensor
    feature_shape: Tuple[int, int]
    scores: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    class_names: Optional[Sequence[str]] = None
    enc_feature_shape: Optional[Tuple[int, int]] = None
    dec_sampling_locations: Optional[torch.Tensor] = None
    dec_attention_weights: Optional[torch.Tensor] = None
    spatial_shapes: Optional[List[Tuple[int, int]]] = None

    @property
    def pixels(self) -> np.ndarray:
        """The image as an ``[H, W, 3]`` float array for ``imshow`` (computed once, then cached)."""
        cached = self.__dict__.get("_pixels")
        if cached is None:
            cached = self.image.permute(1, 2, 0).numpy()  # [3,H,W] -> [H,W,3]
            self.__dict__["_pixels"] = cached
        return cached

    @property
    def image_size(self) -> Tuple[int, int]:
        """``(H, W)`` of the image in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[2])

    @property
    def encoder_shape(self) -> Tuple[int, int]:
        """``(h, w)`` of the grid the encoder maps live on."""
        return tuple(self.enc_feature_shape or self.feature_shape)  # type: ignore[return-value]

    @property
    def decoder_shape(self) -> Tuple[int, int]:
        """``(h', w')`` of the grid the decoder maps live on."""
        return tuple(self.feature_shape)  # type: ignore[return-value]

    @property
    def deformable(self) -> bool:
        """True when the decoder sampled points (``dec_attn`` is then a splat of them)."""
        return self.dec_sampling_locations is not None

    @property
    def num_enc_layers(self) -> int:
        return int(self.enc_attn.shape[0])

    @property
    def num_dec_layers(self) -> int:
        return int(self.dec_attn.shape[0])

    @property
    def num_heads(self) -> int:
        """Heads of the encoder's attention."""
        return int(self.enc_attn.shape[1])

    @property
    def num_dec_heads(self) -> int:
        """Heads of the decoder's cross-attention (RT-DETR may have another number than its encoder)."""
        return int(self.dec_attn.shape[1])

    @property
    def num_queries(self) -> int:
        return int(self.pred_logits.shape[0])


def run_attention(model: nn.Module, image: ImageLike,
                  class_names: Optional[Sequence[str]] = None) -> AttentionInference:
    """Run ``model`` once on ``image`` (PIL or ``[3, H, W]`` in ``[0, 1]``) and keep its attention.

    Any model whose ``forward(images, return_attention=True)`` gives ``enc_attn``, ``dec_attn`` and
    ``feature_shape`` works: the dense DETR models, and RT-DETR, which adds ``enc_feature_shape``
    and its decoder's sampling points (see :class:`AttentionInference`).

    The image is normalized here with the ImageNet mean/std. The model runs in eval mode (no
    dropout, so the maps are what inference sees) under ``torch.no_grad``; its previous
    train/eval mode is restored afterwards so a notebook's training loop is not disturbed.
    ``class_names`` defaults to ``model.config.class_names`` when the model has one; a model
    trained with the focal loss is scored with sigmoids, as ``dt.predict`` does. The detections are
    one per query (``scores[q]`` is query ``q``'s): where the model's post-processing keeps the
    top-k (query, class) pairs instead (RT-DETR), each query keeps its best class.
    Raises ``ValueError`` for an image of the wrong shape.
    """
    pixels = image_to_tensor(image)
    config = getattr(model, "config", None)
    if class_names is None:
        class_names = getattr(config, "class_names", None)
    postprocess = build_postprocess(config) if config is not None else PostProcess()
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            batch = normalize(pixels).unsqueeze(0).to(device)
            out = model(batch, return_attention=True)
            height, width = pixels.shape[1:]
            dets = postprocess(out, torch.tensor([[height, width]], device=device))[0]
            if "query" in dets:
                dets = _one_per_query(out, height, width)
    finally:
        model.train(was_training)
    h, w = (int(v) for v in out["feature_shape"])
    enc_shape = out.get("enc_feature_shape")
    locations, weights = out.get("dec_sampling_locations"), out.get("dec_attention_weights")
    if locations is not None:
        # [L_dec, B, Q, M, L, P, 2] -> first image, heads first: [L_dec, M, Q, L, P, 2]
        locations = locations[:, 0].transpose(1, 2).float().cpu()
        weights = weights[:, 0].transpose(1, 2).float().cpu()
    spatial = out.get("spatial_shapes")
    return AttentionInference(
        image=pixels,
        pred_logits=out["pred_logits"][0].float().cpu(),
        pred_boxes=out["pred_boxes"][0].float().cpu(),
        enc_attn=out["enc_attn"][:, 0].float().cpu(),
        dec_attn=out["dec_attn"][:, 0].float().cpu(),
        feature_shape=(h, w),
        scores=dets["scores"].float().cpu(),
        labels=dets["labels"].cpu(),
        boxes=dets["boxes"].float().cpu(),
        class_names=list(class_names) if class_names is not None else None,
        enc_feature_shape=None if enc_shape is None else (int(enc_shape[0]), int(enc_shape[1])),
        dec_sampling_locations=locations,
        dec_attention_weights=weights,
        spatial_shapes=None if spatial is None else [(int(a), int(b)) for a, b in spatial],
    )


def _one_per_query(out: dict, height: int, width: int) -> dict:
    """One detection per query from a model whose post-processing keeps the top-k (query, class)
    pairs (the deformable families, RT-DETR): each query's best class and its sigmoid score, the
    pair of that query which ranks first in the top-k list. The figures index detections by query."""
    scores, labels = out["pred_logits"][0].sigmoid().max(-1)  # [Q]: no "no object" column
    scale = torch.tensor([width, height, width, height], dtype=out["pred_boxes"].dtype,
                         device=out["pred_boxes"].device)
    boxes = box_ops.box_cxcywh_to_xyxy(out["pred_boxes"][0]) * scale  # [Q, 4] pixels
    return {"scores": scores, "labels": labels, "boxes": boxes}


def as_inference(model_or_inference: Union[nn.Module, AttentionInference],
                 image: Optional[ImageLike] = None,
                 class_names: Optional[Sequence[str]] = None) -> AttentionInference:
    """Accept either a model (run it on ``image``) or an already computed ``AttentionInference``."""
    if isinstance(model_or_inference, AttentionInference):
        if class_names is not None:
            model_or_inference.class_names = list(class_names)
        return model_or_inference
    if image is None:
        raise ValueError("an image is needed to run the model")
    return run_attention(model_or_inference, image, class_names=class_names)


def select_head(attn: torch.Tensor, head: Head) -> torch.Tensor:
    """Pick one head (``int``) or average over heads (``"mean"``) of an ``[heads, ...]`` tensor."""
    if head == "mean":
        return attn.mean(0)
    if isinstance(head, (int, np.integer)) and 0 <= int(head) < attn.shape[0]:
        return attn[int(head)]
    raise ValueError(f"head must be 'mean' or an index in 0..{attn.shape[0] - 1}, got {head!r}")


def check_layer(layer: int, num_layers: int) -> int:
    """A layer index (negative counts from the end) checked and made non-negative."""
    if not isinstance(layer, (int, np.integer)) or not -num_layers <= int(layer) < num_layers:
        raise ValueError(f"layer must be an index in 0..{num_layers - 1}, got {layer!r}")
    return int(layer) % num_layers


def point_to_cell(point: Tuple[float, float], image_size: Tuple[int, int],
                  feature_shape: Tuple[int, int]) -> Tuple[int, int]:
    """The feature-map cell ``(row, col)`` under pixel ``point = (x, y)``.

    The ``h x w`` feature map is laid evenly over the ``H x W`` image (the geometry of
    :func:`~detr_tutorial.viz.drawing.attention_to_image`). Raises ``ValueError`` for a point
    outside the image.
    """
    x, y = float(point[0]), float(point[1])
    height, width = image_size
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"the point (x={x:g}, y={y:g}) is outside the image "
                         f"(x in 0..{width - 1}, y in 0..{height - 1})")
    h, w = feature_shape
    return min(int(y * h / height), h - 1), min(int(x * w / width), w - 1)


def cell_box(cell: Tuple[int, int], image_size: Tuple[int, int],
             feature_shape: Tuple[int, int]) -> Tuple[float, float, float, float]:
    """The pixel rectangle ``(x1, y1, x2, y2)`` that feature cell ``(row, col)`` covers."""
    (row, col), (height, width), (h, w) = cell, image_size, feature_shape
    return col * width / w, row * height / h, (col + 1) * width / w, (row + 1) * height / h


def detections_above(inference: AttentionInference, threshold: float) -> List[int]:
    """Query indices whose score exceeds ``threshold``, best first."""
    keep = torch.nonzero(inference.scores > threshold).flatten()
    order = torch.argsort(inference.scores[keep], descending=True)
    return [int(q) for q in keep[order]]
