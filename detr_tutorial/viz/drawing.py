"""Drawing helpers: images, boxes and attention maps on matplotlib axes.

Everything here draws on axes the caller owns or on a ``matplotlib.figure.Figure`` it creates
itself; nothing touches ``pyplot``'s global state, so figures made in a loop, in tests or behind a
widget never leak into a notebook's inline output or pile up in pyplot's figure manager.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from ..image_io import IMAGENET_MEAN, IMAGENET_STD
from ..language import tr

try:  # PIL is a torchvision dependency, but keep the import soft for a clear error below
    from PIL import Image as _PILImage
except ImportError:  # pragma: no cover - pillow is always installed with torchvision
    _PILImage = None


# The palette of the official DETR notebooks, so figures look like the ones readers know.
COLORS: Tuple[Tuple[float, float, float], ...] = (
    (0.000, 0.447, 0.741), (0.850, 0.325, 0.098), (0.929, 0.694, 0.125),
    (0.494, 0.184, 0.556), (0.466, 0.674, 0.188), (0.301, 0.745, 0.933),
)

ImageLike = Union["_PILImage.Image", torch.Tensor, np.ndarray]


def color(i: int) -> Tuple[float, float, float]:
    """The i-th color of the palette (cycling)."""
    return COLORS[i % len(COLORS)]


def image_to_tensor(image: ImageLike) -> torch.Tensor:
    """Turn a PIL image or a ``[3, H, W]`` tensor in ``[0, 1]`` into a float ``[3, H, W]`` tensor.

    A ``uint8`` tensor (values 0..255) and an ``[H, W, 3]`` numpy array are accepted too, because
    that is what ``torchvision.io.read_image`` and ``np.asarray(pil_image)`` give. Anything else
    raises ``ValueError`` with what was expected: an explorer should fail at construction with a
    clear message, not later with a shape error deep inside the backbone.
    """
    if _PILImage is not None and isinstance(image, _PILImage.Image):
        from ..image_io import to_rgb  # 16-bit and float modes rescaled, not clipped at 255

        array = np.asarray(to_rgb(image), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # [H,W,3] -> [3,H,W]
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"expected a numpy image of shape [H, W, 3], got shape {tuple(image.shape)}")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return image_to_tensor(tensor)
    if not isinstance(image, torch.Tensor):
        raise ValueError(
            f"expected a PIL image or a [3, H, W] tensor in [0, 1], got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"expected an image tensor of shape [3, H, W] (one RGB image, values in [0, 1]), "
            f"got shape {tuple(image.shape)}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"the image is empty: shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    image = image.detach().float().cpu()
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"expected pixel values in [0, 1], got values in [{lo:.3f}, {hi:.3f}]; if this image "
            f"is already normalized with the ImageNet mean/std, pass denormalize(image) instead")
    return image.clamp(0, 1)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """Normalize a ``[3, H, W]`` (or ``[B, 3, H, W]``) image in ``[0, 1]`` with the ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalization: ``[3, H, W]`` or ``[B, 3, H, W]`` -> values in ``[0, 1]``.

    The result is clamped to ``[0, 1]`` because augmentations and padding can leave normalized
    values that map slightly outside the displayable range.
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1)


def to_display_image(image: ImageLike) -> np.ndarray:
    """A PIL image or a ``[3, H, W]`` tensor in ``[0, 1]`` as an ``[H, W, 3]`` float array for ``imshow``.

    An ``[H, W, 3]`` float array in ``[0, 1]`` (what this returns) is checked and passed through
    without a round trip through torch: explorers redraw from such a cached array, and small
    torch reductions are slow when the CPU is shared.
    """
    if isinstance(image, np.ndarray) and image.dtype.kind == "f":
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"expected a numpy image of shape [H, W, 3], got shape {tuple(image.shape)}")
        lo, hi = float(image.min()), float(image.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"expected pixel values in [0, 1], got values in [{lo:.3f}, {hi:.3f}]")
        return image.astype(np.float32, copy=False)
    return image_to_tensor(image).permute(1, 2, 0).numpy()


def _label_text(label: Optional[int], score: Optional[float],
                class_names: Optional[Sequence[str]]) -> Optional[str]:
    if label is None and score is None:
        return None
    parts = []
    if label is not None:
        label = int(label)
        name = tr(class_names[label], known_only=True) \
            if class_names is not None and 0 <= label < len(class_names) else tr("class {label}", label=label)
        parts.append(name)
    if score is not None:
        parts.append(f"{float(score):.2f}")
    return ": ".join(parts)


def draw_boxes(ax: Axes, image: Optional[ImageLike], boxes_xyxy: Union[torch.Tensor, np.ndarray],
               labels: Optional[Sequence[int]] = None, scores: Optional[Sequence[float]] = None,
               class_names: Optional[Sequence[str]] = None,
               colors: Optional[Sequence] = None, linewidth: float = 2.0,
               linestyle: str = "-") -> Axes:
    """Draw ``image`` (if given) and boxes in absolute ``(x1, y1, x2, y2)`` pixels on ``ax``.

    Each box gets a color of the official palette (or ``colors[i]``) and, when ``labels`` or
    ``scores`` are given, a caption such as ``"cat: 0.97"`` (class names from ``class_names``,
    else ``"class 3"``). Returns ``ax`` so calls chain.
    """
    size = None
    if image is not None:
        pixels = to_display_image(image)
        size = pixels.shape[:2]
        ax.imshow(pixels)
    boxes = np.asarray(torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4))
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        c = colors[i] if colors is not None else color(i)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c,
                               linewidth=linewidth, linestyle=linestyle))
        text = _label_text(None if labels is None else labels[i],
                           None if scores is None else scores[i], class_names)
        if text is not None:
            ax.text(x1, y1, text, fontsize=8, color="white", va="bottom",
                    bbox=dict(facecolor=c, alpha=0.7, pad=1, edgecolor="none"))
    if size is not None:  # boxes reaching past the border must not shrink the picture
        ax.set_xlim(-0.5, size[1] - 0.5)
        ax.set_ylim(size[0] - 0.5, -0.5)
    ax.set_axis_off()
    return ax


def attention_to_image(attn_map: Union[torch.Tensor, np.ndarray],
                       image_size: Tuple[int, int]) -> np.ndarray:
    """Resize an ``[h, w]`` feature-map attention map onto an image of ``(H, W)`` pixels.

    Bilinear interpolation with ``align_corners=False``, so feature cell ``(i, j)`` is centred on
    pixel ``((j + 0.5) * W / w, (i + 0.5) * H / h)``: the same proportional geometry the explorers
    use to map a pixel to its feature cell. Returns a float ``[H, W]`` numpy array.
    """
    attn = torch.as_tensor(np.asarray(attn_map), dtype=torch.float32)
    if attn.dim() != 2:
        raise ValueError(f"expected an attention map of shape [h, w], got {tuple(attn.shape)}")
    height, width = int(image_size[0]), int(image_size[1])
    resized = F.interpolate(attn[None, None], size=(height, width), mode="bilinear",
                            align_corners=False)
    return resized[0, 0].numpy()


def overlay_attention(ax: Axes, image: Optional[ImageLike], attn_map: Union[torch.Tensor, np.ndarray],
                      alpha: float = 0.6, cmap: str = "inferno",
                      image_size: Optional[Tuple[int, int]] = None) -> AxesImage:
    """Draw ``image`` in gray with the ``[h, w]`` attention map resized over it in color.

    The image is shown in gray so the colors belong to the attention alone. With ``image=None``
    the map is drawn on its own over ``image_size``. Returns the attention ``AxesImage`` (for a
    colorbar).
    """
    if image is not None:
        pixels = to_display_image(image)
        size = pixels.shape[:2]
        ax.imshow(pixels.mean(axis=2), cmap="gray", vmin=0, vmax=1)
    elif image_size is not None:
        size = (int(image_size[0]), int(image_size[1]))
    else:
        size = tuple(np.asarray(attn_map).shape)
    heat = attention_to_image(attn_map, size)
    artist = ax.imshow(heat, cmap=cmap, alpha=alpha if image is not None else 1.0,
                       extent=(-0.5, size[1] - 0.5, size[0] - 0.5, -0.5))
    ax.set_xlim(-0.5, size[1] - 0.5)
    ax.set_ylim(size[0] - 0.5, -0.5)
    ax.set_axis_off()
    return artist


def plot_decoder_attention_grid(image: ImageLike, detections: Mapping[str, Sequence],
                                attn_maps: Union[torch.Tensor, np.ndarray, Sequence],
                                class_names: Optional[Sequence[str]] = None,
                                max_columns: int = 6, panel_size: float = 2.6) -> Figure:
    """The official DETR notebook figure: each detection's decoder attention above its box.

    ``detections`` holds ``boxes`` ``[N, 4]`` in ``(x1, y1, x2, y2)`` pixels and optionally
    ``scores``, ``labels`` and ``query`` (the object-query indices, used in the titles);
    ``attn_maps`` is ``[N, h, w]``, one cross-attention map per
    detection (for example ``dec_attn[-1, 0].mean(0)[query_ids]`` reshaped to the feature map).
    Detections beyond ``max_columns`` are left out (the first ones are kept). Returns a new
    ``Figure`` with two rows of ``N`` axes, or one axis with a note when ``N == 0``.
    """
    boxes = np.asarray(torch.as_tensor(detections["boxes"], dtype=torch.float32).reshape(-1, 4))
    maps = [np.asarray(m, dtype=np.float32) for m in attn_maps]
    if len(maps) != len(boxes):
        raise ValueError(f"got {len(boxes)} boxes but {len(maps)} attention maps")
    scores = detections.get("scores")
    labels = detections.get("labels")
    queries = detections.get("query")
    n = min(len(boxes), max_columns)
    if n == 0:
        fig = Figure(figsize=(panel_size * 1.5, panel_size))
        ax = fig.add_subplot(1, 1, 1)
        draw_boxes(ax, image, np.zeros((0, 4)))
        ax.set_title(tr("no detections to show"), fontsize=9)
        return fig
    pixels = to_display_image(image)
    aspect = pixels.shape[0] / pixels.shape[1]
    fig = Figure(figsize=(panel_size * n, 2 * panel_size * aspect + 0.5), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        top, bottom = axes[0, i], axes[1, i]
        top.imshow(maps[i], cmap="viridis")
        top.set_axis_off()
        name = (tr("query {query}", query=int(queries[i])) if queries is not None
                else tr("detection {i}", i=i + 1))
        top.set_title(tr("attention of {name}", name=name), fontsize=8)
        draw_boxes(bottom, pixels, boxes[i:i + 1],
                   labels=None if labels is None else [labels[i]],
                   scores=None if scores is None else [scores[i]],
                   class_names=class_names, colors=[color(i)])
    return fig
