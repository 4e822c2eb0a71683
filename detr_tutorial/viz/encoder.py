"""Encoder self-attention: where one image position looks, and what looks at it.

The encoder's self-attention matrix of one layer and head is ``[HW, HW]``: row ``i`` is how the
feature position ``i`` spreads its attention over all positions (it sums to 1), column ``i`` is
how much every position attends to ``i``. Picking a pixel picks its feature cell ``i``; the map
shown is row or column ``i`` laid back on the image. For RT-DETR the matrix is AIFI's, over the
cells of its coarsest level only (the one level its encoder runs attention on), a coarser grid
than the one its decoder maps live on (``AttentionInference.encoder_shape``).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from ..language import tr
from .drawing import ImageLike, overlay_attention
from .inference import (AttentionInference, Head, as_inference, cell_box, check_layer,
                        point_to_cell, run_attention, select_head)
from .widget_base import Explorer, optional_ipyevents

DIRECTIONS = {"row": "where this point looks", "column": "what looks at this point"}


def encoder_attention_map(inference: AttentionInference, point: Tuple[float, float],
                          layer: int = -1, head: Head = "mean",
                          direction: str = "row") -> np.ndarray:
    """The ``[h, w]`` encoder attention map of pixel ``point = (x, y)``.

    ``direction="row"``: the attention that point's feature position gives to every position
    (sums to 1 over the image); ``"column"``: the attention every position gives to it.
    ``head`` is a head index or ``"mean"`` (the average over heads).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'row' or 'column', got {direction!r}")
    layer = check_layer(layer, inference.num_enc_layers)
    row, col = point_to_cell(point, inference.image_size, inference.encoder_shape)
    h, w = inference.encoder_shape
    index = row * w + col
    attn = select_head(inference.enc_attn[layer], head)  # [HW (queries), HW (keys)]
    vector = attn[index] if direction == "row" else attn[:, index]
    return vector.reshape(h, w).numpy()


def _head_name(head: Head) -> str:
    return tr("mean of heads") if head == "mean" else tr("head {head}", head=int(head) + 1)


def draw_encoder_attention(fig: Figure, inference: AttentionInference, point: Tuple[float, float],
                           layer: int = -1, head: Head = "mean",
                           direction: str = "row") -> np.ndarray:
    """Draw the image with the point and its attention map on ``fig``; return the ``[h, w]`` map."""
    attn_map = encoder_attention_map(inference, point, layer, head, direction)
    layer = check_layer(layer, inference.num_enc_layers)
    cell = point_to_cell(point, inference.image_size, inference.encoder_shape)
    x1, y1, x2, y2 = cell_box(cell, inference.image_size, inference.encoder_shape)
    h, w = inference.encoder_shape
    pixels = inference.pixels
    left, right = fig.subplots(1, 2)
    left.imshow(pixels)
    overlay_attention(right, pixels, attn_map)
    for ax in (left, right):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="cyan",
                               linewidth=1.5))
        ax.plot([point[0]], [point[1]], marker="+", color="red", markersize=12, mew=2)
        # the last cell may reach past the image border: keep the view on the image
        ax.set_xlim(-0.5, inference.image_size[1] - 0.5)
        ax.set_ylim(inference.image_size[0] - 0.5, -0.5)
        ax.set_axis_off()
    left.set_title(tr("point (x={x:.0f}, y={y:.0f}):\nfeature cell ({row}, {col}) of {h}x{w}",
                      x=point[0], y=point[1], row=cell[0], col=cell[1], h=h, w=w), fontsize=9)
    right.set_title(tr("encoder layer {layer}, {head}:\n{direction}", layer=layer + 1,
                       head=_head_name(head), direction=tr(DIRECTIONS[direction])), fontsize=9)
    return attn_map


def _new_figure(image_size: Tuple[int, int], panels: int = 2, panel_width: float = 3.2,
                title_height: float = 0.45) -> Figure:
    """A figure of ``panels`` image panels side by side with room for two-line titles.

    Margins are fixed rather than left to a layout engine: the panels only hold images, and
    constrained layout would double the time of each explorer redraw.
    """
    height, width = image_size
    panel_height = panel_width * height / width
    fig = Figure(figsize=(panels * panel_width, panel_height + title_height + 0.1))
    total = panel_height + title_height + 0.1
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.05 / total,
                        top=1 - title_height / total, wspace=0.04)
    return fig


def encoder_attention_figure(model_or_inference: Union[nn.Module, AttentionInference],
                             image: Optional[ImageLike] = None,
                             point: Optional[Tuple[float, float]] = None, layer: int = -1,
                             head: Head = "mean", direction: str = "row") -> Figure:
    """A static figure of the encoder explorer: the image with ``point`` and its attention map.

    ``model_or_inference`` is a DETR model (run here on ``image``) or the result of
    :func:`~detr_tutorial.viz.inference.run_attention`. ``point`` defaults to the image centre;
    ``layer`` counts from 0 (``-1``: the last layer). Returns a new ``Figure`` with two axes.
    """
    inference = as_inference(model_or_inference, image)
    if point is None:
        point = (inference.image_size[1] // 2, inference.image_size[0] // 2)
    fig = _new_figure(inference.image_size)
    draw_encoder_attention(fig, inference, point, layer, head, direction)
    return fig


class EncoderAttentionExplorer(Explorer):
    """Widget: pick a point (sliders, or a click when ``ipyevents`` is installed), a layer, a
    head and a direction, and see the encoder attention map of that point over the image.

    The model runs once here; every change only redraws. The drawn data is kept for inspection:
    ``current_map`` (``[h, w]`` numpy array), ``current_point`` ``(x, y)``, ``current_cell``
    ``(row, col)``; ``status`` holds the message shown under the controls.

    A click on the picture also moves the point. ipywidgets' ``Image`` has no click events, so
    this needs the ``ipyevents`` package (``pip install ipyevents``; in Colab also
    ``google.colab.output.enable_custom_widget_manager()``). ``clicks=None`` (the default) uses
    it when it is installed, ``True`` insists on it (``ImportError`` otherwise), ``False`` never
    uses it; the x/y sliders work everywhere.
    """

    def __init__(self, model: nn.Module, image: ImageLike,
                 class_names: Optional[Sequence[str]] = None,
                 clicks: Optional[bool] = None) -> None:
        super().__init__()
        self.model = model
        self.class_names = class_names
        self.inference = run_attention(model, image, class_names=class_names)
        self.current_map: Optional[np.ndarray] = None
        self.current_point: Optional[Tuple[int, int]] = None
        self.current_cell: Optional[Tuple[int, int]] = None
        self._click_axes: list = []
        w = self._widgets
        height, width = self.inference.image_size
        self.x_slider = w.IntSlider(value=width // 2, min=0, max=width - 1, description="x")
        self.y_slider = w.IntSlider(value=height // 2, min=0, max=height - 1, description="y")
        self.layer_dropdown = w.Dropdown(
            options=self._layer_options(), value=self.inference.num_enc_layers - 1,
            description=tr("layer"))
        self.head_dropdown = w.Dropdown(options=self._head_options(), value="mean",
                                        description=tr("head"))
        self.direction_buttons = w.ToggleButtons(
            options=[(tr(label), key) for key, label in DIRECTIONS.items()], value="row",
            description=tr("direction"))
        controls = (self.x_slider, self.y_slider, self.layer_dropdown, self.head_dropdown,
                    self.direction_buttons)
        for control in controls:
            self._observe(control)
        self._assemble(*controls)
        wanted = clicks if clicks is not None else optional_ipyevents() is not None
        self._events = self._connect_clicks() if wanted else None
        self.redraw()

    # -- options ----------------------------------------------------------------------------
    def _layer_options(self) -> list:
        return [(tr("encoder layer {layer}", layer=i + 1), i) for i in range(self.inference.num_enc_layers)]

    def _head_options(self) -> list:
        return [(tr("mean of heads"), "mean")] + [(tr("head {head}", head=i + 1), i)
                                              for i in range(self.inference.num_heads)]

    # -- public -----------------------------------------------------------------------------
    def set_point(self, x: float, y: float) -> None:
        """Move the point to pixel ``(x, y)``; outside the image it only says so in the status."""
        height, width = self.inference.image_size
        if not (0 <= x < width and 0 <= y < height):
            self._set_status(f"the point (x={x:g}, y={y:g}) is outside the image "
                             f"({width}x{height} pixels); pick a point on the image", problem=True)
            return

        def move() -> None:
            self.x_slider.value = int(x)
            self.y_slider.value = int(y)
        self._run_holding(move)

    def set_image(self, image: ImageLike) -> None:
        """Run the model on a new image; an unusable image only changes the status message."""
        try:
            inference = run_attention(self.model, image, class_names=self.class_names)
        except ValueError as err:
            self._set_status(f"cannot use this image: {err}", problem=True)
            return
        self.inference = inference
        height, width = inference.image_size

        def reset() -> None:
            # widen the ranges first so the new values are never clamped by old bounds
            for slider, size in ((self.x_slider, width), (self.y_slider, height)):
                slider.max = max(slider.max, size - 1)
                slider.value = size // 2
                slider.max = size - 1
        self._run_holding(reset)

    # -- drawing ----------------------------------------------------------------------------
    def _draw(self) -> Figure:
        point = (self.x_slider.value, self.y_slider.value)
        fig = _new_figure(self.inference.image_size)
        attn_map = draw_encoder_attention(fig, self.inference, point, self.layer_dropdown.value,
                                          self.head_dropdown.value, self.direction_buttons.value)
        self.current_map = attn_map
        self.current_point = point
        self.current_cell = point_to_cell(point, self.inference.image_size,
                                          self.inference.encoder_shape)
        h, w = self.inference.encoder_shape
        how = ("click the picture or move x and y to pick another point" if self._click_enabled
               else "move x and y to pick another point (pip install ipyevents to click instead)")
        self._set_status(f"feature map {h}x{w}; the point's cell is {self.current_cell}; {how}")
        return fig

    # -- clicks -----------------------------------------------------------------------------
    @property
    def _click_enabled(self) -> bool:
        return getattr(self, "_events", None) is not None

    def _connect_clicks(self) -> Any:
        ipyevents = optional_ipyevents()
        if ipyevents is None:
            raise ImportError("picking the point by clicking needs ipyevents: pip install "
                              "ipyevents (or pass clicks=False and use the x/y sliders)")
        events = ipyevents.Event(source=self.image_widget, watched_events=["click"])
        events.on_dom_event(self.handle_click)
        return events

    def _after_render(self, fig: Figure) -> None:
        # Remember where each image axes sits in the PNG (display coordinates are the PNG's
        # pixels at the rendering dpi, with y measured from the bottom).
        self._png_height = fig.bbox.height
        self._click_axes = [(ax.bbox.frozen(), ax.transData.inverted().frozen())
                            for ax in fig.axes]

    def handle_click(self, event: dict) -> None:
        """Move the point to a click on the drawn figure (an ``ipyevents`` event dict)."""
        if "dataX" in event and "dataY" in event:
            px, py = float(event["dataX"]), float(event["dataY"])
        else:  # scale from the displayed size to the PNG's pixels
            scale = self._png_height / max(float(event.get("boundingRectHeight", 1)), 1.0)
            px, py = float(event["relativeX"]) * scale, float(event["relativeY"]) * scale
        display = (px, self._png_height - py)
        for bbox, to_data in self._click_axes:
            if bbox.contains(*display):
                x, y = to_data.transform(display)
                self.set_point(round(float(x)), round(float(y)))
                return
        self._set_status("click on one of the two pictures to pick a point", problem=True)
