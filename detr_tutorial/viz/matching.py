"""Hungarian matching made visible: the cost matrix, the assignment it gives, and the loss.

DETR's matcher scores every (prediction, ground truth) pair with
``cost_class * C_class + cost_bbox * C_L1 + cost_giou * C_giou`` and takes the one-to-one
assignment of least total cost. Changing the three weights changes the matrix, possibly the
assignment, and with it the loss the model is trained on: the explorer lets a reader see that.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy.optimize import linear_sum_assignment

from .. import box_ops
from ..criterion import SetCriterion
from ..matcher import HungarianMatcher
from ..language import tr
from .drawing import ImageLike, color, draw_boxes, to_display_image
from .widget_base import Explorer

TERMS = ("class", "bbox", "giou")
#: the paper's loss weights, used for the total loss shown next to the matching
DEFAULT_LOSS_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
BLANK_CANVAS = (256, 256)


def _one_image(outputs: Mapping[str, torch.Tensor], targets: Sequence[Mapping[str, torch.Tensor]],
               image_index: int) -> Tuple[Dict[str, torch.Tensor], List[Mapping[str, torch.Tensor]]]:
    """The outputs and targets of one image of the batch (the matcher and loss take batches)."""
    batch = int(outputs["pred_logits"].shape[0])
    if not 0 <= image_index < batch:
        raise ValueError(f"image_index must be in 0..{batch - 1}, got {image_index}")
    if len(targets) != batch:
        raise ValueError(f"got {batch} images in the outputs but {len(targets)} targets")
    # on the CPU and detached: the explorer may be handed a training step's outputs on a GPU
    one = {key: outputs[key][image_index:image_index + 1].detach().float().cpu()
           for key in ("pred_logits", "pred_boxes")}
    target = {key: value.detach().cpu() if isinstance(value, torch.Tensor) else value
              for key, value in targets[image_index].items()}
    return one, [target]


class MatchingProblem:
    """One image's predictions and targets, with the matcher's unweighted cost terms.

    The terms are computed once; :meth:`solve` then weighs them and matches for any weights, so
    moving a slider costs a ``[Q, N]`` matrix sum, one Hungarian solve and one small loss.
    """

    def __init__(self, outputs: Mapping[str, torch.Tensor],
                 targets: Sequence[Mapping[str, torch.Tensor]], image_index: int = 0,
                 loss_weights: Optional[Mapping[str, float]] = None, eos_coef: float = 0.1,
                 focal: bool = False) -> None:
        self.focal = bool(focal)
        self.outputs, self.targets = _one_image(outputs, targets, image_index)
        self.num_classes = int(self.outputs["pred_logits"].shape[-1]) - 1
        self.loss_weights = dict(loss_weights if loss_weights is not None else DEFAULT_LOSS_WEIGHTS)
        self.eos_coef = float(eos_coef)
        with torch.no_grad():
            terms = HungarianMatcher(1, 1, 1, focal=self.focal).cost_terms(self.outputs, self.targets)[0]
        #: unweighted cost terms, each ``[Q, N]``
        self.terms = {name: terms[name].detach().double().cpu().numpy() for name in TERMS}

    @property
    def target(self) -> Mapping[str, torch.Tensor]:
        return self.targets[0]

    def cost_matrix(self, weights: Mapping[str, float]) -> np.ndarray:
        """``sum_k weights[k] * terms[k]`` over the terms whose weight is not zero, ``[Q, N]``.

        A zero weight leaves its term out altogether (rather than adding ``0 * term``), so a term
        with infinities cannot poison the sum once it is switched off.
        """
        shape = self.terms["class"].shape
        total = np.zeros(shape, dtype=np.float64)
        for name in TERMS:
            if weights[name] != 0:
                total = total + float(weights[name]) * self.terms[name]
        return total

    def solve(self, weights: Mapping[str, float]) -> Tuple[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """The cost matrix for ``weights`` and its least-cost assignment ``(query_idx, target_idx)``."""
        matrix = self.cost_matrix(weights)
        if not np.isfinite(matrix).all():
            raise ValueError("the cost matrix has infinite or NaN entries (are some target "
                             "boxes degenerate?): the assignment is undefined")
        rows, cols = linear_sum_assignment(matrix)
        return matrix, (rows.astype(np.int64), cols.astype(np.int64))

    def losses(self, assignment: Tuple[np.ndarray, np.ndarray]) -> Dict[str, float]:
        """The set-prediction loss terms for this assignment (``SetCriterion``, unweighted).

        The criterion is given a matcher that returns exactly the drawn assignment, so the loss
        shown always belongs to the picture (a fresh Hungarian solve could break a tie the other
        way). Adds ``"total"``: the sum weighted by :attr:`loss_weights`.
        """
        fixed = [(torch.as_tensor(assignment[0], dtype=torch.int64),
                  torch.as_tensor(assignment[1], dtype=torch.int64))]

        def matcher(_outputs: Mapping[str, torch.Tensor], _targets: Sequence) -> list:
            return fixed

        criterion = SetCriterion(self.num_classes, matcher, weight_dict=dict(self.loss_weights),
                                 eos_coef=self.eos_coef, focal=self.focal)
        with torch.no_grad():
            raw = criterion(self.outputs, self.targets)
            total = float(criterion.total(raw))
        losses = {key: float(value) for key, value in raw.items()}
        losses["total"] = total
        return losses


def _canvas(image: Optional[ImageLike],
            target: Mapping[str, torch.Tensor]) -> Tuple[np.ndarray, Tuple[int, int]]:
    """The picture to draw boxes on: the image, or a blank canvas of the target's size."""
    if image is not None:
        pixels = to_display_image(image)
        return pixels, pixels.shape[:2]
    size = target.get("orig_size", target.get("size"))
    height, width = (int(v) for v in size) if size is not None else BLANK_CANVAS
    return np.ones((height, width, 3), dtype=np.float32), (height, width)


def draw_matching(fig: Figure, problem: MatchingProblem, matrix: np.ndarray,
                  assignment: Tuple[np.ndarray, np.ndarray], losses: Mapping[str, float],
                  weights: Mapping[str, float], image: Optional[ImageLike] = None,
                  class_names: Optional[Sequence[str]] = None) -> None:
    """Draw the cost matrix with the assignment, the matched boxes, and the loss terms on ``fig``."""
    ax_cost, ax_image, ax_loss = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.0, 2.0, 1.1]})
    num_queries, num_targets = matrix.shape
    rows, cols = assignment

    # Cost matrix: queries down, ground truths across; the assignment as red squares.
    if num_targets:
        ax_cost.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
        ax_cost.scatter(cols, rows, marker="s", s=60, facecolors="none", edgecolors="red",
                        linewidths=1.5)
        ax_cost.set_xticks(range(num_targets))
        ax_cost.set_xticklabels([str(j) for j in range(num_targets)], fontsize=7)
        step = 1 if num_queries <= 25 else int(np.ceil(num_queries / 20))
        ax_cost.set_yticks(range(0, num_queries, step))
        ax_cost.tick_params(axis="y", labelsize=7)
        ax_cost.set_title(tr("cost (dark = cheap)\n{low:.2f} .. {high:.2f}", low=matrix.min(),
                             high=matrix.max()), fontsize=8)
    else:
        ax_cost.text(0.5, 0.5, tr("no ground truth:\nnothing to match"), ha="center", va="center",
                     fontsize=8, transform=ax_cost.transAxes)
        ax_cost.set_xticks([])
        ax_cost.set_yticks([])
    ax_cost.set_xlabel(tr("ground truth"), fontsize=8)
    ax_cost.set_ylabel(tr("query"), fontsize=8)

    # Boxes: ground truths solid, their matched predictions dashed, a line between centres.
    target = problem.target
    pixels, (height, width) = _canvas(image, target)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    gt_boxes = box_ops.box_cxcywh_to_xyxy(target["boxes"].detach().float().cpu().reshape(-1, 4)) * scale
    pred_boxes = box_ops.box_cxcywh_to_xyxy(problem.outputs["pred_boxes"][0].float().cpu()) * scale
    labels = [int(v) for v in target["labels"]]
    draw_boxes(ax_image, pixels, gt_boxes, labels=labels, class_names=class_names,
               colors=[color(j) for j in range(len(gt_boxes))])
    for q, j in zip(rows, cols):
        c = color(int(j))
        x1, y1, x2, y2 = pred_boxes[q].tolist()
        ax_image.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c,
                                     linewidth=1.5, linestyle="--"))
        gx1, gy1, gx2, gy2 = gt_boxes[j].tolist()
        ax_image.annotate("", xy=((gx1 + gx2) / 2, (gy1 + gy2) / 2),
                          xytext=((x1 + x2) / 2, (y1 + y2) / 2),
                          arrowprops=dict(arrowstyle="->", color=c, lw=1.5))
        ax_image.text(x2, y2, f"q{q}", fontsize=7, color=c, ha="right", va="top")
    ax_image.set_xlim(-0.5, width - 0.5)
    ax_image.set_ylim(height - 0.5, -0.5)
    if image is None:
        ax_image.add_patch(Rectangle((-0.5, -0.5), width, height, fill=False, edgecolor="0.7"))
    ax_image.set_title(tr("ground truth (solid) <- matched query (dashed)"), fontsize=8)

    # Loss terms of this assignment.
    names = [key for key in ("loss_ce", "loss_bbox", "loss_giou") if key in losses]
    values = [losses[key] for key in names]
    bars = ax_loss.barh(range(len(names)), values, color=[color(i) for i in range(len(names))])
    ax_loss.set_yticks(range(len(names)))
    ax_loss.set_yticklabels(names, fontsize=8)
    ax_loss.invert_yaxis()
    ax_loss.bar_label(bars, fmt="%.3f", fontsize=7)
    ax_loss.set_xlim(0, max(values + [1e-6]) * 1.4)
    ax_loss.tick_params(axis="x", labelsize=7)
    ax_loss.set_title(tr("loss terms (unweighted)\ntotal {total:.3f}", total=losses.get("total", float("nan"))),
                      fontsize=8)
    fig.suptitle(tr("matching cost = {c:g} class + {b:g} L1 + {g:g} GIoU", c=weights["class"],
                    b=weights["bbox"], g=weights["giou"]), fontsize=9)


def _new_figure() -> Figure:
    # Fixed margins instead of a layout engine: constrained layout doubled the redraw time
    # (0.13 s -> 0.07 s for the PNG), and this figure's size and contents never change shape.
    fig = Figure(figsize=(9.0, 3.6))
    fig.subplots_adjust(left=0.06, right=0.97, bottom=0.13, top=0.83, wspace=0.42)
    return fig


def _weights(cost_class: float, cost_bbox: float, cost_giou: float) -> Dict[str, float]:
    weights = {"class": float(cost_class), "bbox": float(cost_bbox), "giou": float(cost_giou)}
    negative = [name for name, value in weights.items() if value < 0]
    if negative:
        raise ValueError(f"cost weights must not be negative: {', '.join(negative)}")
    return weights


def matching_figure(outputs: Mapping[str, torch.Tensor],
                    targets: Sequence[Mapping[str, torch.Tensor]], image: Optional[ImageLike] = None,
                    cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                    image_index: int = 0, class_names: Optional[Sequence[str]] = None,
                    loss_weights: Optional[Mapping[str, float]] = None,
                    eos_coef: float = 0.1, focal: bool = False) -> Figure:
    """A static figure of the matching explorer for the given cost weights.

    ``outputs``/``targets`` are a model's output dict and the targets as the criterion takes
    them; ``image_index`` picks the image of the batch and ``image`` its picture (``None``: a
    blank canvas); ``focal=True`` for models trained with the focal loss. Returns a new
    ``Figure`` with three axes: the cost matrix with the assignment, the boxes, and the loss
    terms.
    """
    problem = MatchingProblem(outputs, targets, image_index, loss_weights, eos_coef, focal)
    weights = _weights(cost_class, cost_bbox, cost_giou)
    matrix, assignment = problem.solve(weights)
    fig = _new_figure()
    draw_matching(fig, problem, matrix, assignment, problem.losses(assignment), weights,
                  image=image, class_names=class_names)
    return fig


class MatchingExplorer(Explorer):
    """Widget: three sliders weigh the matcher's cost terms; see the cost matrix (queries x
    ground truths) with the chosen assignment, the matched boxes, and the resulting loss.

    ``outputs`` is a model's output dict (only ``pred_logits`` and ``pred_boxes`` are used),
    ``targets`` the list of target dicts; with a batch, ``image_index`` (or the ``image``
    dropdown shown for batches) picks one image. The drawn data is kept for inspection:
    ``current_matrix`` ``[Q, N]``, ``current_terms`` (unweighted, each ``[Q, N]``),
    ``current_assignment`` ``(query_idx, target_idx)``, ``current_losses`` and ``status``.
    """

    def __init__(self, outputs: Mapping[str, torch.Tensor],
                 targets: Sequence[Mapping[str, torch.Tensor]], image: Optional[ImageLike] = None,
                 cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 image_index: int = 0, class_names: Optional[Sequence[str]] = None,
                 loss_weights: Optional[Mapping[str, float]] = None, eos_coef: float = 0.1,
                 focal: bool = False) -> None:
        super().__init__()
        if image is not None:
            to_display_image(image)  # fail now, with a clear message, on a wrong shape
        self.outputs, self.targets = outputs, targets
        self.image, self.class_names = image, class_names
        self._image_index = image_index  # the batch image that ``image`` shows
        self.loss_weights, self.eos_coef, self.focal = loss_weights, eos_coef, focal
        self.problem = MatchingProblem(outputs, targets, image_index, loss_weights, eos_coef, focal)
        self.current_matrix: Optional[np.ndarray] = None
        self.current_assignment: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self.current_losses: Dict[str, float] = {}
        w = self._widgets
        slider = dict(min=0.0, max=10.0, step=0.5, continuous_update=False)
        self.class_slider = w.FloatSlider(value=float(cost_class), description="cost_class", **slider)
        self.bbox_slider = w.FloatSlider(value=float(cost_bbox), description="cost_bbox", **slider)
        self.giou_slider = w.FloatSlider(value=float(cost_giou), description="cost_giou", **slider)
        controls = [self.class_slider, self.bbox_slider, self.giou_slider]
        batch = int(outputs["pred_logits"].shape[0])
        self.image_dropdown = w.Dropdown(options=[(tr("image {i}", i=i), i) for i in range(batch)],
                                         value=image_index, description=tr("image"))
        self.image_dropdown.observe(lambda _change: self._change_image(), names="value")
        if batch > 1:
            controls.append(self.image_dropdown)
        for control in controls[:3]:
            self._observe(control)
        self._assemble(*controls)
        self.redraw()

    @property
    def current_terms(self) -> Dict[str, np.ndarray]:
        """The unweighted cost terms of the shown image, each ``[Q, N]``."""
        return self.problem.terms

    @property
    def weights(self) -> Dict[str, float]:
        return {"class": self.class_slider.value, "bbox": self.bbox_slider.value,
                "giou": self.giou_slider.value}

    def _change_image(self) -> None:
        self.problem = MatchingProblem(self.outputs, self.targets, self.image_dropdown.value,
                                       self.loss_weights, self.eos_coef, self.focal)
        self.redraw()

    def _draw(self) -> Figure:
        weights = self.weights
        matrix, assignment = self.problem.solve(weights)
        losses = self.problem.losses(assignment)
        fig = _new_figure()
        # only the batch's shown image has a picture; other images get a blank canvas
        image = self.image if self.image_dropdown.value == self._image_index else None
        draw_matching(fig, self.problem, matrix, assignment, losses, weights, image=image,
                      class_names=self.class_names)
        self.current_matrix, self.current_assignment, self.current_losses = matrix, assignment, losses
        pairs = ", ".join(f"q{q}->gt{j}" for q, j in zip(*assignment)) or "none"
        if all(value == 0 for value in weights.values()):
            self._set_status("all cost weights are 0: every assignment costs the same, so the "
                             "matcher's choice is arbitrary", problem=True)
        else:
            self._set_status(f"matched {pairs}; loss total {losses['total']:.3f}")
        return fig
