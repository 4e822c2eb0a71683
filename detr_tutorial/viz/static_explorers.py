"""Static twins of the three explorers: interactive in a rendered book, without a Python kernel.

The ipywidgets explorers redraw in Python, so a book rendered to HTML shows only their last
picture. A twin computes, once, everything its explorer can show, embeds it in an HTML block
(a ``text/html`` output that the book renders) and redraws it in the browser with a small
self-contained script (``static_explorers.js`` beside this module; no CDN, no kernel)::

    from detr_tutorial import viz
    explorer = viz.EncoderAttentionExplorer(model, image)
    viz.static_encoder_explorer(explorer.inference, point=(60, 40))   # click to pick a point
    viz.static_decoder_explorer(explorer.inference, threshold=0.7)    # pick a detection
    viz.static_matching_explorer(matching_explorer.problem, image=image)  # cost-weight sliders

The maps are the package's: each twin reads the same :class:`AttentionInference` (or
:class:`MatchingProblem`) the explorer draws from. Attention maps travel as ``uint8`` codes with
one ``float32`` scale per map (``value = code * scale``, so each value is off by at most half a
scale); :func:`encoder_map_from_payload` and friends undo the packing in Python exactly as the
script does in the browser, which is how the tests compare a twin with the package.

The labels are English or Korean: ``lang=None`` picks Korean when the notebook lives in a
folder named ``ko`` (the book's Korean edition), so both editions run the same code.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from importlib import resources
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from torch import nn

from .. import box_ops
from ..language import book_language
from .drawing import COLORS, ImageLike, to_display_image
from .encoder import DIRECTIONS
from .inference import (AttentionInference, Head, as_inference, check_layer, detections_above,
                        point_to_cell, select_head)
from .matching import TERMS, MatchingProblem, _canvas

#: raw bytes of encoder codes a twin embeds at most (base64 adds a third): the whole chapter
#: page stays well under 2 MB; bigger models drop the single heads, then the earlier layers
ENCODER_MAX_BYTES = 1_200_000
#: the cost-weight values of the matching sliders, as in :class:`MatchingExplorer`
DEFAULT_GRID = tuple(float(v) for v in np.arange(0.0, 10.0 + 1e-9, 0.5))
NO_ASSIGNMENT = 65535  # assignment id of a grid point whose cost matrix is not finite
PANEL_WIDTH = 300  # CSS pixels of one image panel
EMBED_MAX_SIDE = 512  # larger pictures are embedded downscaled (the maps keep their geometry)

LABELS: Dict[str, Dict[str, str]] = {
    "en": {
        "layer": "layer", "head": "head", "direction": "direction", "detection": "detection",
        "mean": "mean of heads", "head_n": "head {n}", "enc_layer": "encoder layer {n}",
        "dec_layer": "decoder layer {n}", "row": DIRECTIONS["row"], "column": DIRECTIONS["column"],
        "enc_left": "point (x={x}, y={y}):\nfeature cell ({row}, {col}) of {h}x{w}",
        "enc_status": "point (x={x}, y={y}): feature cell ({row}, {col}) of {h}x{w}; {layer}, "
                      "{head}: {direction}. Click the picture (or use the arrow keys) to pick "
                      "another point.",
        "enc_aria": "encoder self-attention of the chosen point; click to choose another point",
        "dec_right": "where query {q} looks", "query_label": "query {q}: {name} {score}",
        "class_n": "class {n}",
        "dec_status": "{n} detections above {t}; showing {det}; {layer}, {head}",
        "dec_none": "no detection scores above {t} (the best score is {best}): nothing to show",
        "dec_aria": "decoder cross-attention of the chosen detection",
        "cost_title": "cost (dark = cheap)",
        "boxes_title": "ground truth (solid) <- matched query (dashed)",
        "loss_title": "loss terms (unweighted)", "total": "total",
        "match_status": "cost = {c} class + {b} L1 + {g} GIoU: matched {pairs}; loss total "
                        "{total}",
        "match_zero": "all cost weights are 0: every assignment costs the same, so the "
                      "matcher's choice is arbitrary",
        "match_none": "none", "no_gt": "no ground truth", "ground_truth": "ground truth",
        "query": "query", "match_aria": "cost matrix, matched boxes and loss terms",
        "invalid": "the cost matrix has infinite entries at these weights: no assignment",
    },
    "ko": {
        "layer": "층", "head": "헤드", "direction": "방향", "detection": "검출",
        "mean": "헤드 평균", "head_n": "헤드 {n}", "enc_layer": "인코더 {n}층",
        "dec_layer": "디코더 {n}층", "row": "이 점이 보는 곳", "column": "이 점을 보는 곳",
        "enc_left": "점 (x={x}, y={y}):\n{h}x{w} 특징 맵의 칸 ({row}, {col})",
        "enc_status": "점 (x={x}, y={y}): {h}x{w} 특징 맵의 칸 ({row}, {col}); {layer}, {head}: "
                      "{direction}. 그림을 클릭하거나 화살표 키를 눌러 다른 점을 고르세요.",
        "enc_aria": "고른 점의 인코더 셀프 어텐션. 클릭하면 다른 점을 고릅니다",
        "dec_right": "쿼리 {q}가 보는 곳", "query_label": "쿼리 {q}: {name} {score}",
        "class_n": "클래스 {n}",
        "dec_status": "점수 {t} 초과 검출 {n}개 중 {det}; {layer}, {head}",
        "dec_none": "점수가 {t}를 넘는 검출이 없습니다 (최고 점수 {best}). 보여 줄 것이 없습니다",
        "dec_aria": "고른 검출의 디코더 크로스 어텐션",
        "cost_title": "비용 (어두울수록 쌈)", "boxes_title": "정답(실선) <- 매칭된 쿼리(점선)",
        "loss_title": "손실 항 (가중치 없음)", "total": "합계",
        "match_status": "비용 = {c}·클래스 + {b}·L1 + {g}·GIoU: 매칭 {pairs}; 손실 합계 {total}",
        "match_zero": "비용 가중치가 모두 0이면 어떤 배정이든 비용이 같아서 매처의 선택은 "
                      "임의입니다",
        "match_none": "없음", "no_gt": "정답 없음", "ground_truth": "정답", "query": "쿼리",
        "match_aria": "비용 행렬, 매칭된 상자, 손실 항",
        "invalid": "이 가중치에서는 비용 행렬에 무한대가 있어 배정이 없습니다",
    },
}


class ExplorerHTML:
    """An HTML block that notebooks display as ``text/html`` (``_repr_html_``).

    ``html`` is the block (markup, embedded data and script), ``kind`` the explorer it twins,
    ``payload`` the embedded data as a dict, for inspection and tests.
    """

    def __init__(self, kind: str, html_text: str, payload: Dict[str, Any]) -> None:
        self.kind, self.html, self.payload = kind, html_text, payload

    @property
    def size(self) -> int:
        """Bytes of the block, data and script included (UTF-8)."""
        return len(self.html.encode("utf-8"))

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"<static {self.kind} explorer: {self.size / 1024:.0f} KiB>"


# -- language -----------------------------------------------------------------------------------
def _labels(lang: Optional[str]) -> Tuple[str, Dict[str, str]]:
    lang = book_language() if lang is None else lang
    if lang not in LABELS:
        raise ValueError(f"lang must be one of {', '.join(LABELS)} (or None), got {lang!r}")
    return lang, LABELS[lang]


# -- packing ------------------------------------------------------------------------------------
def quantize(maps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Non-negative maps ``[..., K]`` -> ``uint8`` codes ``[..., K]`` and ``float32`` scales ``[...]``.

    Each map (the last axis) gets its own scale, ``max / 255``, so ``codes * scales[..., None]``
    gives every value back within half a scale. An all-zero map gets scale 0.
    """
    values = np.asarray(maps, dtype=np.float64)
    if values.size and float(values.min()) < 0:
        raise ValueError("quantize expects non-negative maps (attention weights)")
    scales = (values.max(axis=-1) / 255.0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float64)[..., None]
    codes = np.clip(np.rint(values / safe), 0, 255).astype(np.uint8)
    return codes, scales


def dequantize(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The inverse of :func:`quantize`: ``codes * scales[..., None]`` as ``float32``."""
    return codes.astype(np.float32) * np.asarray(scales, dtype=np.float32)[..., None]


def to_base64(array: np.ndarray, dtype: str) -> str:
    """An array as little-endian ``dtype`` bytes in base64 (what the script decodes)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
                            .tobytes()).decode("ascii")


def from_base64(text: str, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """The inverse of :func:`to_base64`."""
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def _colormap(name: str) -> str:
    """A matplotlib colormap as 256 RGB triples (``uint8``, base64)."""
    table = colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return to_base64(np.rint(table * 255).astype(np.uint8), "u1")


def image_data_url(image: ImageLike, max_side: int = EMBED_MAX_SIDE) -> str:
    """The image as a PNG ``data:`` URL, downscaled to ``max_side`` pixels on its longer side."""
    pixels = np.rint(to_display_image(image) * 255).clip(0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels)
    longer = max(picture.size)
    if longer > max_side:
        picture = picture.resize((max(1, round(picture.width * max_side / longer)),
                                  max(1, round(picture.height * max_side / longer))),
                                 Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _head_list(num_heads: int) -> List[Head]:
    return ["mean"] + list(range(num_heads))


def _encoder_selection(inference: AttentionInference,
                       max_bytes: int) -> Tuple[List[int], List[Head]]:
    """The layers and heads whose ``[HW, HW]`` matrices fit in ``max_bytes`` codes."""
    layers, (h, w) = inference.num_enc_layers, inference.encoder_shape
    hw = h * w
    options = [(list(range(layers)), _head_list(inference.num_heads)),
               (list(range(layers)), ["mean"]), ([layers - 1], ["mean"])]
    for chosen_layers, heads in options:
        if len(chosen_layers) * len(heads) * hw * hw <= max_bytes:
            return chosen_layers, heads
    raise ValueError(f"one {hw}x{hw} encoder attention matrix needs {hw * hw:,} bytes, more than "
                     f"max_bytes={max_bytes:,}: use a smaller image")


def pack_encoder(inference: AttentionInference, max_bytes: int = ENCODER_MAX_BYTES) -> Dict[str, Any]:
    """The encoder twin's data: every layer's and head's ``[HW, HW]`` self-attention, quantized.

    ``codes`` (``uint8``, ``[layers, heads, HW, HW]``; head 0 is the mean of heads) and
    ``scales`` (``float32``, one per matrix row). A row is the map of one point (where it
    looks), a column what looks at it; both are read from the same codes. Matrices beyond
    ``max_bytes`` are left out (see :data:`ENCODER_MAX_BYTES`); ``layers`` and ``heads`` say
    which are in.
    """
    layers, heads = _encoder_selection(inference, max_bytes)
    matrices = np.stack([np.stack([select_head(inference.enc_attn[layer], head).numpy()
                                   for head in heads]) for layer in layers])
    codes, scales = quantize(matrices)  # [L, heads, HW (queries), HW (keys)], [L, heads, HW]
    return {"image_size": list(inference.image_size), "feature_shape": list(inference.encoder_shape),
            "layers": layers, "heads": heads, "codes": to_base64(codes, "u1"),
            "scales": to_base64(scales, "f4")}


def _index_of(payload: Mapping[str, Any], layer: int, head: Head,
              num_layers: int) -> Tuple[int, int]:
    layer = check_layer(layer, num_layers)
    if layer not in payload["layers"] or head not in payload["heads"]:
        raise ValueError(f"layer {layer} / head {head!r} is not in this twin's data "
                         f"(layers {payload['layers']}, heads {payload['heads']})")
    return payload["layers"].index(layer), payload["heads"].index(head)


def encoder_map_from_payload(payload: Mapping[str, Any], point: Tuple[float, float],
                             layer: int = -1, head: Head = "mean", direction: str = "row",
                             num_layers: Optional[int] = None) -> np.ndarray:
    """The ``[h, w]`` map the encoder twin shows for pixel ``point``, de-quantized.

    The Python mirror of the script: compare it with :func:`viz.encoder_attention_map`.
    ``num_layers`` (default: the largest layer stored + 1) resolves a negative ``layer``.
    """
    h, w = payload["feature_shape"]
    count = num_layers if num_layers is not None else max(payload["layers"]) + 1
    li, hi = _index_of(payload, layer, head, count)
    shape = (len(payload["layers"]), len(payload["heads"]), h * w, h * w)
    codes = from_base64(payload["codes"], "u1", shape)[li, hi]
    scales = from_base64(payload["scales"], "f4", shape[:3])[li, hi]
    row, col = point_to_cell(point, tuple(payload["image_size"]), (h, w))
    index = row * w + col
    values = codes[index] * scales[index] if direction == "row" else codes[:, index] * scales
    return values.astype(np.float32).reshape(h, w)


def _detection_text(inference: AttentionInference, query: int, labels: Mapping[str, str]) -> str:
    label, names = int(inference.labels[query]), inference.class_names
    name = names[label] if names is not None and 0 <= label < len(names) \
        else labels["class_n"].format(n=label)
    return labels["query_label"].format(q=query, name=name, score=f"{float(inference.scores[query]):.2f}")


def pack_decoder(inference: AttentionInference, threshold: float = 0.7) -> Dict[str, Any]:
    """The decoder twin's data: each detection's cross-attention per layer and head, quantized.

    Detections are the queries scoring above ``threshold``, best first (as in the explorer's
    dropdown). ``codes`` ``uint8`` ``[layers, heads, detections, HW]`` (head 0: the mean) with
    one ``float32`` scale per map; ``detections`` lists each one's query, box (xyxy pixels),
    label and score.
    """
    queries = detections_above(inference, threshold)
    layers, heads = list(range(inference.num_dec_layers)), _head_list(inference.num_dec_heads)
    payload: Dict[str, Any] = {"feature_shape": list(inference.decoder_shape), "layers": layers,
                               "heads": heads, "queries": queries,
                               "best_score": float(inference.scores.max())}
    if queries:
        maps = np.stack([np.stack([select_head(inference.dec_attn[layer], head)[queries].numpy()
                                   for head in heads]) for layer in layers])  # [L, heads, D, HW]
        codes, scales = quantize(maps)
        payload.update(codes=to_base64(codes, "u1"), scales=to_base64(scales, "f4"))
    payload["detections"] = [{"query": q, "box": [round(float(v), 2) for v in inference.boxes[q]],
                              "label_index": int(inference.labels[q]),
                              "score": float(inference.scores[q])} for q in queries]
    return payload


def decoder_map_from_payload(payload: Mapping[str, Any], query: int, layer: int = -1,
                             head: Head = "mean") -> np.ndarray:
    """The ``[h, w]`` map the decoder twin shows for the detection of ``query``, de-quantized."""
    if query not in payload["queries"]:
        raise ValueError(f"query {query} is not among this twin's detections {payload['queries']}")
    h, w = payload["feature_shape"]
    li, hi = _index_of(payload, layer, head, len(payload["layers"]))
    shape = (len(payload["layers"]), len(payload["heads"]), len(payload["queries"]), h * w)
    d = payload["queries"].index(query)
    codes = from_base64(payload["codes"], "u1", shape)[li, hi, d]
    scale = from_base64(payload["scales"], "f4", shape[:3])[li, hi, d]
    return (codes * scale).astype(np.float32).reshape(h, w)


def solve_grid(problem: MatchingProblem, grid: Sequence[float]) -> Tuple[np.ndarray, List]:
    """The assignment of every ``(class, bbox, giou)`` weight triple of ``grid`` x ``grid`` x ``grid``.

    Returns ``ids`` ``[G, G, G]`` (``uint16``; :data:`NO_ASSIGNMENT` where the cost matrix is not
    finite) indexing ``assignments``, the distinct ``(query_idx, target_idx)`` pairs found.
    """
    size = len(grid)
    ids = np.full((size, size, size), NO_ASSIGNMENT, dtype=np.uint16)
    found: Dict[Tuple, int] = {}
    assignments: List[Tuple[np.ndarray, np.ndarray]] = []
    for index in np.ndindex(ids.shape):
        weights = {name: float(grid[i]) for name, i in zip(TERMS, index)}
        try:
            _, (rows, cols) = problem.solve(weights)
        except ValueError:
            continue
        key = (tuple(rows.tolist()), tuple(cols.tolist()))
        if key not in found:
            if len(found) == NO_ASSIGNMENT:
                raise ValueError("too many distinct assignments for the twin's uint16 ids")
            found[key] = len(assignments)
            assignments.append((rows, cols))
        ids[index] = found[key]
    return ids, assignments


def pack_matching(problem: MatchingProblem, grid: Sequence[float] = DEFAULT_GRID) -> Dict[str, Any]:
    """The matching twin's data: the unweighted cost terms, and the assignment and loss of every
    point of the weight grid (each distinct assignment's loss computed once).

    ``terms`` ``float32`` ``[3, Q, N]`` (class, bbox, giou), ``assignment_ids`` ``uint16``
    ``[G, G, G]``, ``assignments`` ``[[query_idx], [target_idx]]`` and ``losses`` per id,
    ``pred_boxes`` normalized cxcywh.
    """
    grid = [float(v) for v in grid]
    ids, assignments = solve_grid(problem, grid)
    terms = np.stack([problem.terms[name] for name in TERMS]).astype(np.float32)
    return {
        "grid": grid, "grid_text": [f"{v:g}" for v in grid],
        "num_queries": int(terms.shape[1]), "num_targets": int(terms.shape[2]),
        "terms": to_base64(terms, "f4"), "assignment_ids": to_base64(ids, "u2"),
        "assignments": [[rows.tolist(), cols.tolist()] for rows, cols in assignments],
        "losses": [{k: round(v, 6) for k, v in problem.losses(a).items()} for a in assignments],
    }


def matching_assignment_from_payload(payload: Mapping[str, Any],
                                     weights: Mapping[str, float]) -> Optional[Tuple[List[int], List[int]]]:
    """The assignment ``(query_idx, target_idx)`` the matching twin shows for grid ``weights``
    (``None`` where the cost matrix is not finite). Raises ``ValueError`` off the grid."""
    grid, size = payload["grid"], len(payload["grid"])
    try:
        index = tuple(grid.index(float(weights[name])) for name in TERMS)
    except ValueError:
        raise ValueError(f"weights {dict(weights)} are not on the twin's grid {grid}") from None
    ids = from_base64(payload["assignment_ids"], "u2", (size, size, size))
    found = int(ids[index])
    if found == NO_ASSIGNMENT:
        return None
    rows, cols = payload["assignments"][found]
    return list(rows), list(cols)


# -- markup -------------------------------------------------------------------------------------
def _select(role: str, label: str, options: Sequence[Tuple[int, str]], selected: int) -> str:
    items = "".join(f'<option value="{value}"{" selected" if value == selected else ""}>'
                    f"{html.escape(text)}</option>" for value, text in options)
    return (f'<label class="detr-explorer-control">{html.escape(label)} '
            f'<select data-role="{role}">{items}</select></label>')


def _toggles(role: str, label: str, options: Sequence[Tuple[str, str]], selected: str) -> str:
    buttons = "".join(f'<button type="button" data-value="{value}" aria-pressed='
                      f'"{"true" if value == selected else "false"}">{html.escape(text)}</button>'
                      for value, text in options)
    return (f'<span class="detr-explorer-control" role="group" aria-label="{html.escape(label)}">'
            f'{html.escape(label)} <span data-role="{role}">{buttons}</span></span>')


def _slider(name: str, grid_text: Sequence[str], index: int) -> str:
    return (f'<label class="detr-explorer-control">{name} <input type="range" data-role="{name}" '
            f'min="0" max="{len(grid_text) - 1}" step="1" value="{index}"> '
            f'<output data-readout="{name}">{grid_text[index]}</output></label>')


def _layer_head_controls(labels: Mapping[str, str], layer_name: str, layers: Sequence[int],
                         heads: Sequence[Head], layer: int, head: Head) -> str:
    layer_options = [(i, labels[layer_name].format(n=v + 1)) for i, v in enumerate(layers)]
    head_options = [(i, labels["mean"] if v == "mean" else labels["head_n"].format(n=int(v) + 1))
                    for i, v in enumerate(heads)]
    return (_select("layer", labels["layer"], layer_options, layers.index(layer)) +
            _select("head", labels["head"], head_options, list(heads).index(head)))


def _script() -> str:
    return resources.files("detr_tutorial.viz").joinpath("static_explorers.js").read_text("utf-8")


def explorer_block(kind: str, payload: Dict[str, Any], controls: str, lang: str,
                   aria_label: str) -> str:
    """The HTML of one twin: the block with its controls, canvas, status line and data, and the
    script that starts it (``kind``: ``"encoder"``, ``"decoder"`` or ``"matching"``)."""
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    data = data.replace("</", "<\\/")  # never end the <script> element early
    explorer_id = "detr-" + kind + "-" + hashlib.sha1(data.encode("utf-8")).hexdigest()[:12]
    return (
        f'<div class="detr-explorer" data-kind="{kind}" data-explorer-id="{explorer_id}" '
        f'lang="{lang}">\n'
        f'<div class="detr-explorer-controls">{controls}</div>\n'
        f'<canvas class="detr-explorer-canvas" tabindex="0" role="img" '
        f'aria-label="{html.escape(aria_label)}"></canvas>\n'
        f'<div class="detr-explorer-status" role="status" aria-live="polite"></div>\n'
        f'<script type="application/json" class="detr-explorer-data">{data}</script>\n'
        f'</div>\n<script>(function (explorerId) {{\n{_script()}\n}})("{explorer_id}");</script>\n')


def _base_payload(labels: Mapping[str, str], image: ImageLike,
                  image_size: Tuple[int, int]) -> Dict[str, Any]:
    return {"labels": dict(labels), "image": image_data_url(image), "image_size": list(image_size),
            "panel_width": PANEL_WIDTH, "alpha": 0.6, "colormap": _colormap("inferno"),
            "palette": [[round(c * 255) for c in rgb] for rgb in COLORS]}


# -- the three twins ----------------------------------------------------------------------------
def static_encoder_explorer(model_or_inference: Union[nn.Module, AttentionInference],
                            image: Optional[ImageLike] = None,
                            point: Optional[Tuple[int, int]] = None, layer: int = -1,
                            head: Head = "mean", direction: str = "row",
                            lang: Optional[str] = None,
                            max_bytes: int = ENCODER_MAX_BYTES) -> ExplorerHTML:
    """The encoder explorer's twin: click the picture to pick a point, choose layer, head and
    direction; the map of the point's feature cell is redrawn in the browser.

    ``model_or_inference`` is an :class:`AttentionInference` (e.g. ``explorer.inference``) or a
    model run here on ``image``. ``point`` ``(x, y)`` (default: the centre), ``layer``, ``head``
    and ``direction`` set the first picture. ``lang``: ``"en"``, ``"ko"`` or None (see
    :func:`book_language`).
    """
    inference = as_inference(model_or_inference, image)
    lang, labels = _labels(lang)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'row' or 'column', got {direction!r}")
    height, width = inference.image_size
    point = (width // 2, height // 2) if point is None else (int(point[0]), int(point[1]))
    point_to_cell(point, inference.image_size, inference.encoder_shape)  # checks the point
    payload = _base_payload(labels, inference.image, inference.image_size)
    payload.update(pack_encoder(inference, max_bytes), point=list(point))
    layer = check_layer(layer, inference.num_enc_layers)
    if layer not in payload["layers"] or head not in payload["heads"]:
        layer, head = payload["layers"][-1], "mean"  # what the size budget kept
    controls = (_layer_head_controls(labels, "enc_layer", payload["layers"], payload["heads"],
                                     layer, head) +
                _toggles("direction", labels["direction"],
                         [(key, labels[key]) for key in DIRECTIONS], direction))
    return ExplorerHTML("encoder", explorer_block("encoder", payload, controls, lang,
                                                  labels["enc_aria"]), payload)


def static_decoder_explorer(model_or_inference: Union[nn.Module, AttentionInference],
                            image: Optional[ImageLike] = None, threshold: float = 0.7,
                            query: Optional[int] = None, layer: int = -1, head: Head = "mean",
                            lang: Optional[str] = None,
                            class_names: Optional[Sequence[str]] = None) -> ExplorerHTML:
    """The decoder explorer's twin: choose a detection (scores above ``threshold``), a layer and
    a head; the detection's box and its query's cross-attention are redrawn in the browser.

    ``query`` picks the first detection shown (default: the best); the other arguments as in
    :func:`static_encoder_explorer`.
    """
    inference = as_inference(model_or_inference, image, class_names)
    lang, labels = _labels(lang)
    payload = _base_payload(labels, inference.image, inference.image_size)
    payload.update(pack_decoder(inference, threshold), threshold_text=f"{threshold:.2f}",
                   box_color=payload["palette"][0])
    for det in payload["detections"]:
        det["label"] = _detection_text(inference, det["query"], labels)
        det["caption"] = det["label"].split(": ", 1)[-1]
    payload["none_message"] = labels["dec_none"].format(t=f"{threshold:.2f}",
                                                        best=f"{payload['best_score']:.2f}")
    queries = payload["queries"]
    if query is not None and query not in queries:
        raise ValueError(f"query {query} does not score above {threshold:g}: pick one of {queries}")
    chosen = queries.index(query) if query is not None else 0
    controls = ""
    if queries:
        options = [(i, det["label"]) for i, det in enumerate(payload["detections"])]
        controls = (_select("detection", labels["detection"], options, chosen) +
                    _layer_head_controls(labels, "dec_layer", payload["layers"], payload["heads"],
                                         check_layer(layer, inference.num_dec_layers), head))
    return ExplorerHTML("decoder", explorer_block("decoder", payload, controls, lang,
                                                  labels["dec_aria"]), payload)


def _nearest(grid: Sequence[float], value: float) -> int:
    return int(np.argmin([abs(v - float(value)) for v in grid]))


def static_matching_explorer(problem: MatchingProblem, image: Optional[ImageLike] = None,
                             cost_class: float = 1.0, cost_bbox: float = 5.0,
                             cost_giou: float = 2.0, class_names: Optional[Sequence[str]] = None,
                             grid: Sequence[float] = DEFAULT_GRID,
                             lang: Optional[str] = None) -> ExplorerHTML:
    """The matching explorer's twin: three sliders move over ``grid`` (for each weight) and the
    cost matrix, the precomputed assignment, the matched boxes and the loss are redrawn.

    ``problem`` is a :class:`MatchingProblem` (e.g. ``explorer.problem``), ``image`` the picture
    of its image (``None``: a blank canvas). The sliders start at the grid values nearest to the
    ``cost_*`` weights. Every one of the ``len(grid) ** 3`` settings is solved here (a second or
    so for the default 21 values).
    """
    lang, labels = _labels(lang)
    target = problem.target
    pixels, (height, width) = _canvas(image, target)
    payload = _base_payload(labels, pixels, (height, width))
    payload.update(pack_matching(problem, grid), colormap=_colormap("viridis"),
                   panel_height=round(PANEL_WIDTH * min(1.0, height / width)))
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    corners = box_ops.box_cxcywh_to_xyxy
    payload["pred_boxes"] = (corners(problem.outputs["pred_boxes"][0].float()) * scale).round(
        decimals=2).tolist()
    payload["gt_boxes"] = (corners(target["boxes"].float().reshape(-1, 4)) * scale).round(
        decimals=2).tolist()
    names = class_names
    payload["gt_names"] = [names[k] if names is not None and 0 <= k < len(names)
                           else labels["class_n"].format(n=k) for k in map(int, target["labels"])]
    start = [_nearest(payload["grid"], v) for v in (cost_class, cost_bbox, cost_giou)]
    controls = "".join(_slider(f"cost_{name}", payload["grid_text"], i)
                       for name, i in zip(TERMS, start))
    return ExplorerHTML("matching", explorer_block("matching", payload, controls, lang,
                                                   labels["match_aria"]), payload)
