"""Decoder cross-attention: which image positions one detection's object query looked at.

In DETR's decoder each object query attends to the encoder memory (``[HW]`` positions). For a
detection made by query ``q``, row ``q`` of a layer's cross-attention (``[Q, HW]``), laid on the
feature map, shows where that query gathered its evidence: for a trained DETR, the object's
extremities (the paper's Figure 6).

A deformable decoder (RT-DETR) has no such row: each query reads a few bilinear samples per head
and level. :func:`decoder_sampling_figure` draws those points, sized by their weights (Deformable
DETR's Figure 6); the maps of :func:`decoder_attention_map` are then the points' weights splatted
onto the finest level's grid (:func:`~detr_tutorial.models.ms_deform_attn.splat_sampling_points`),
which is what lets the same heatmaps, explorer and static twin show both kinds of model.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from matplotlib.figure import Figure
from torch import nn

from ..language import tr
from .drawing import (COLORS, ImageLike, color, draw_boxes, overlay_attention,
                      plot_decoder_attention_grid)
from .encoder import _head_name, _new_figure
from .inference import (AttentionInference, Head, as_inference, check_layer, detections_above,
                        run_attention, select_head)
from .widget_base import Explorer


def decoder_attention_map(inference: AttentionInference, query: int, layer: int = -1,
                          head: Head = "mean") -> np.ndarray:
    """The ``[h, w]`` cross-attention map of object query ``query`` in decoder ``layer``."""
    layer = check_layer(layer, inference.num_dec_layers)
    if not 0 <= int(query) < inference.num_queries:
        raise ValueError(f"query must be in 0..{inference.num_queries - 1}, got {query}")
    attn = select_head(inference.dec_attn[layer], head)  # [Q, HW]
    return attn[int(query)].reshape(inference.decoder_shape).numpy()


def detection_label(inference: AttentionInference, query: int) -> str:
    """A short name for a detection, e.g. ``"query 7: cat 0.93"``."""
    label = int(inference.labels[query])
    names = inference.class_names
    name = (tr(names[label], known_only=True) if names is not None and 0 <= label < len(names)
            else tr("class {label}", label=label))
    return tr("query {query}: {name} {score:.2f}", query=query, name=name,
              score=float(inference.scores[query]))


def draw_decoder_attention(fig: Figure, inference: AttentionInference, query: int,
                           layer: int = -1, head: Head = "mean") -> np.ndarray:
    """Draw the detection's box and its cross-attention map on ``fig``; return the ``[h, w]`` map."""
    attn_map = decoder_attention_map(inference, query, layer, head)
    layer = check_layer(layer, inference.num_dec_layers)
    pixels = inference.pixels
    left, right = fig.subplots(1, 2)
    box = inference.boxes[query:query + 1]
    draw_boxes(left, pixels, box, labels=[int(inference.labels[query])],
               scores=[float(inference.scores[query])], class_names=inference.class_names,
               colors=[color(0)])
    left.set_title(detection_label(inference, query), fontsize=9)
    overlay_attention(right, pixels, attn_map)
    draw_boxes(right, None, box, colors=["cyan"], linewidth=1.5)
    right.set_title(tr("decoder layer {layer}, {head}:\nwhere query {query} looks", layer=layer + 1,
                       head=_head_name(head), query=query), fontsize=9)
    return attn_map


def decoder_attention_figure(model_or_inference: Union[nn.Module, AttentionInference],
                             image: Optional[ImageLike] = None, query: Optional[int] = None,
                             layer: int = -1, head: Head = "mean", threshold: float = 0.7,
                             class_names: Optional[Sequence[str]] = None) -> Figure:
    """A static figure of the decoder explorer: one detection's box and its attention map.

    ``query`` picks the detection by its object-query index; by default the best-scoring
    detection. ``threshold`` is only used to say that nothing scores above it when ``query``
    is None. Returns a new ``Figure`` with two axes.
    """
    inference = as_inference(model_or_inference, image, class_names)
    if query is None:
        found = detections_above(inference, threshold)
        if not found:
            raise ValueError(f"no detection scores above {threshold:g}: lower the threshold "
                             f"or pass query=")
        query = found[0]
    fig = _new_figure(inference.image_size)
    draw_decoder_attention(fig, inference, query, layer, head)
    return fig


def decoder_attention_grid(model_or_inference: Union[nn.Module, AttentionInference],
                           image: Optional[ImageLike] = None, threshold: float = 0.7,
                           layer: int = -1, head: Head = "mean", max_columns: int = 6,
                           class_names: Optional[Sequence[str]] = None) -> Figure:
    """The official notebook's figure: every detection above ``threshold`` with its attention."""
    inference = as_inference(model_or_inference, image, class_names)
    queries = detections_above(inference, threshold)[:max_columns]
    maps = [decoder_attention_map(inference, q, layer, head) for q in queries]
    detections = {"boxes": inference.boxes[queries].reshape(-1, 4),
                  "scores": [float(inference.scores[q]) for q in queries],
                  "labels": [int(inference.labels[q]) for q in queries], "query": queries}
    return plot_decoder_attention_grid(inference.pixels, detections, maps,
                                       class_names=inference.class_names,
                                       max_columns=max_columns)


def decoder_sampling_points(inference: AttentionInference, query: int, layer: int = -1,
                            head: Head = "mean") -> Dict[str, np.ndarray]:
    """Where a deformable decoder's query ``query`` sampled in ``layer``, and with what weight.

    Returns ``xy`` ``[K, 2]`` (pixels of the image, ``(x, y)``), ``weight`` ``[K]``, ``level``
    ``[K]`` and ``head`` ``[K]``: the ``L * P`` points of one head (their weights sum to 1), or with
    ``head="mean"`` the points of every head, each weight divided by the number of heads (so they
    too sum to 1, as the mean-of-heads map does). Raises ``ValueError`` for a dense model, which
    samples nothing (it attends to every cell: use :func:`decoder_attention_map`).
    """
    if not inference.deformable:
        raise ValueError("this model's decoder attends densely (no sampling points): draw its "
                         "maps with decoder_attention_map or decoder_attention_grid")
    layer = check_layer(layer, inference.num_dec_layers)
    if not 0 <= int(query) < inference.num_queries:
        raise ValueError(f"query must be in 0..{inference.num_queries - 1}, got {query}")
    locations = inference.dec_sampling_locations[layer, :, int(query)]  # [M, L, P, 2]
    weights = inference.dec_attention_weights[layer, :, int(query)]  # [M, L, P]
    m, nl, p = weights.shape
    heads = np.broadcast_to(np.arange(m)[:, None, None], (m, nl, p))
    levels = np.broadcast_to(np.arange(nl)[None, :, None], (m, nl, p))
    if head == "mean":
        chosen, scale = slice(None), 1.0 / m
    else:
        select_head(weights, head)  # checks the index
        chosen, scale = slice(int(head), int(head) + 1), 1.0
    height, width = inference.image_size
    xy = locations[chosen].reshape(-1, 2).numpy() * np.array([width, height], dtype=np.float32)
    return {"xy": xy, "weight": weights[chosen].reshape(-1).numpy() * scale,
            "level": levels[chosen].reshape(-1).copy(), "head": heads[chosen].reshape(-1).copy()}


def draw_sampling_points(ax, inference: AttentionInference, query: int, layer: int = -1,
                         head: Head = "mean", max_area: float = 160.0) -> Dict[str, np.ndarray]:
    """The image, the detection's box and its query's sampling points on ``ax``: one colour per
    level, marker area proportional to the weight (``max_area`` points^2 for the heaviest one);
    returns :func:`decoder_sampling_points`' arrays."""
    points = decoder_sampling_points(inference, query, layer, head)
    draw_boxes(ax, inference.pixels, inference.boxes[query:query + 1], colors=["white"],
               linewidth=1.2)
    top = float(points["weight"].max()) or 1.0
    shapes = inference.spatial_shapes or []
    for level in np.unique(points["level"]):
        pick = points["level"] == level
        h, w = shapes[level] if level < len(shapes) else ("?", "?")
        ax.scatter(points["xy"][pick, 0], points["xy"][pick, 1],
                   s=max_area * points["weight"][pick] / top, color=COLORS[int(level) % len(COLORS)],
                   edgecolors="black", linewidths=0.4, alpha=0.85,
                   label=tr("level {level}: {h}x{w} grid", level=int(level), h=h, w=w))
    height, width = inference.image_size
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    return points


def decoder_sampling_figure(model_or_inference: Union[nn.Module, AttentionInference],
                            image: Optional[ImageLike] = None, threshold: float = 0.7,
                            layer: int = -1, head: Head = "mean", max_columns: int = 6,
                            class_names: Optional[Sequence[str]] = None) -> Figure:
    """Deformable DETR's Figure 6 for a deformable decoder: for every detection above
    ``threshold`` (best first, at most ``max_columns``), where its query sampled, sized by weight.

    Points outside the image (a query may sample there) are not visible. Raises ``ValueError``
    for a dense model or when nothing scores above ``threshold``.
    """
    inference = as_inference(model_or_inference, image, class_names)
    if not inference.deformable:
        decoder_sampling_points(inference, 0, layer, head)  # raises the dense model's error
    queries = detections_above(inference, threshold)[:max_columns]
    if not queries:
        raise ValueError(f"no detection scores above {threshold:g}: lower the threshold")
    layer = check_layer(layer, inference.num_dec_layers)
    height, width = inference.image_size
    size = 2.6
    fig = Figure(figsize=(size * len(queries), size * height / width + 0.9))
    axes = fig.subplots(1, len(queries), squeeze=False)[0]
    for ax, q in zip(axes, queries):
        draw_sampling_points(ax, inference, q, layer, head)
        ax.set_title(detection_label(inference, q), fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False,
               markerscale=0.6)
    fig.suptitle(tr("decoder layer {layer}, {head}: sampling points (area = weight)",
                    layer=layer + 1, head=_head_name(head)), fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.82, bottom=0.12, wspace=0.04)
    return fig


class DecoderAttentionExplorer(Explorer):
    """Widget: pick a detection above the score threshold, a decoder layer and a head, and see
    the detection's box and the cross-attention map of its object query over the image.

    The model runs once here; every change only redraws. The drawn data is kept for
    inspection: ``current_map`` (``[h, w]`` numpy array), ``current_query`` (the object-query
    index of the chosen detection, or None when nothing scores above the threshold) and
    ``status``.
    """

    def __init__(self, model: nn.Module, image: ImageLike, threshold: float = 0.7,
                 class_names: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        self.model = model
        self.class_names = class_names
        self.inference = run_attention(model, image, class_names=class_names)
        self.current_map: Optional[np.ndarray] = None
        self.current_query: Optional[int] = None
        w = self._widgets
        self.threshold_slider = w.FloatSlider(value=float(threshold), min=0.0, max=1.0,
                                              step=0.01, description=tr("threshold"))
        self.detection_dropdown = w.Dropdown(options=[], description=tr("detection"))
        self.layer_dropdown = w.Dropdown(
            options=[(tr("decoder layer {layer}", layer=i + 1), i) for i in range(self.inference.num_dec_layers)],
            value=self.inference.num_dec_layers - 1, description=tr("layer"))
        self.head_dropdown = w.Dropdown(
            options=[(tr("mean of heads"), "mean")] + [(tr("head {head}", head=i + 1), i)
                                                   for i in range(self.inference.num_dec_heads)],
            value="mean", description=tr("head"))
        self.threshold_slider.observe(lambda _change: self._refresh_detections(), names="value")
        for control in (self.detection_dropdown, self.layer_dropdown, self.head_dropdown):
            self._observe(control)
        self._assemble(self.threshold_slider, self.detection_dropdown, self.layer_dropdown,
                       self.head_dropdown)
        self._refresh_detections()

    @property
    def detections(self) -> List[int]:
        """Query indices of the detections offered in the dropdown, best first."""
        return [value for _label, value in self.detection_dropdown.options]

    def _refresh_detections(self) -> None:
        """Offer the detections above the current threshold, keeping the choice if it stays."""
        queries = detections_above(self.inference, self.threshold_slider.value)
        previous = self.detection_dropdown.value

        def update() -> None:
            self.detection_dropdown.options = [(detection_label(self.inference, q), q)
                                               for q in queries]
            if queries:
                self.detection_dropdown.value = previous if previous in queries else queries[0]
        self._run_holding(update)

    def set_image(self, image: ImageLike) -> None:
        """Run the model on a new image; an unusable image only changes the status message."""
        try:
            inference = run_attention(self.model, image, class_names=self.class_names)
        except ValueError as err:
            self._set_status(f"cannot use this image: {err}", problem=True)
            return
        self.inference = inference
        self._refresh_detections()

    def _draw(self) -> Figure:
        query = self.detection_dropdown.value
        if query is None:
            # Show the bare image rather than a stale detection, and say what to change.
            self.current_query = None
            self.current_map = None
            best = float(self.inference.scores.max())
            message = (f"no detection scores above {self.threshold_slider.value:.2f} "
                       f"(the best score is {best:.2f}): lower the threshold")
            fig = _new_figure(self.inference.image_size, panels=1)
            ax = fig.subplots()
            draw_boxes(ax, self.inference.pixels, np.zeros((0, 4)))
            ax.set_title(tr("no detection above the threshold"), fontsize=9)
            self._set_status(message, problem=True)
            return fig
        fig = _new_figure(self.inference.image_size)
        self.current_map = draw_decoder_attention(fig, self.inference, query,
                                                  self.layer_dropdown.value,
                                                  self.head_dropdown.value)
        self.current_query = int(query)
        self._set_status(f"{len(self.detections)} detections above "
                         f"{self.threshold_slider.value:.2f}; showing "
                         f"{detection_label(self.inference, query)}")
        return fig
