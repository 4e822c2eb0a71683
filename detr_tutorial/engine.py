"""The training and evaluation loops: one pass over a data loader each.

:func:`train_one_epoch` is the official ``engine.train_one_epoch`` plus what a real run needs:
mixed precision (with a grad scaler for fp16), gradient accumulation, a learning-rate scheduler
stepped per optimizer step, a step budget, and a hard stop on a non-finite loss that names the
step and every loss term. :func:`evaluate` runs the model over a validation loader, turns its
outputs into detections with :class:`~detr_tutorial.models.PostProcess` and scores them with
pycocotools.

The loops know nothing about recipes, checkpoints or logs: :mod:`detr_tutorial.train` does that
through the ``on_step_end`` callback.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .distributed import reduce_mean_dict
from .nested import NestedTensor, to_nested

__all__ = [
    "NonFiniteLossError",
    "StepInfo",
    "train_one_epoch",
    "evaluate",
    "collect_detections",
    "move_targets",
    "outputs_to_float",
]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped (the message names the step and terms)."""


@dataclass
class StepInfo:
    """What the loop reports after every optimizer step (values averaged over processes)."""

    step: int  # optimizer steps done so far (1 after the first step)
    epoch: int
    loss: float  # the weighted total that was back-propagated
    terms: dict[str, float]  # unweighted terms (loss_ce, loss_bbox, ..., class_error, ...)
    lr: float  # learning rate of the first (non-backbone) parameter group
    lrs: list[float] = field(default_factory=list)  # every group's learning rate
    grad_norm: Optional[float] = None  # before clipping
    images: int = 0  # images this process saw in the step
    seconds: float = 0.0  # wall time of the step


def move_targets(targets: Sequence[Mapping[str, Any]], device: Union[str, torch.device]) -> list[dict[str, Any]]:
    """Targets with every tensor on ``device`` (non-tensor entries kept as they are)."""
    return [{k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in t.items()} for t in targets]


def outputs_to_float(outputs: Any) -> Any:
    """Model outputs with floating tensors in float32 (the matcher and loss run in full precision)."""
    if isinstance(outputs, Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: outputs_to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(outputs_to_float(v) for v in outputs)
    return outputs


def _prepare_samples(samples: Any, device: torch.device, channels_last: bool) -> NestedTensor:
    samples = to_nested(samples).to(device, non_blocking=True)
    if channels_last:
        samples = NestedTensor(samples.tensors.contiguous(memory_format=torch.channels_last), samples.mask)
    return samples


def _autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _format_terms(terms: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(terms.items()))


def _non_finite_outputs(outputs: Mapping[str, Any]) -> list[str]:
    """Names of the prediction tensors (last layer and auxiliary layers) holding NaN or infinity.

    One device sync per step whatever the number of layers: the per-tensor flags are stacked
    and read once; the names are worked out only when something is wrong.
    """
    layers = [("", outputs)] + [(f"aux_outputs[{i}].", aux) for i, aux in enumerate(outputs.get("aux_outputs") or [])]
    named = [(prefix + k, out[k]) for prefix, out in layers for k in ("pred_logits", "pred_boxes")
             if isinstance(out.get(k), Tensor)]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named])  # [n] bools, still on the device
    if bool(finite.all()):
        return []
    return [name for (name, _), ok in zip(named, finite.tolist()) if not ok]


def _check_outputs(
    outputs: Mapping[str, Any], step: int, epoch: int, lr: float, last_terms: Mapping[str, float]
) -> None:
    """Stop with :class:`NonFiniteLossError` when the model's predictions are not finite.

    A diverged model (a learning rate far too high) produces NaN predictions before its loss is
    NaN, and the matcher refuses them; this check comes first so the user reads the step, the
    learning rate and the last finite loss terms rather than a complaint from deep in the matcher.
    """
    bad = _non_finite_outputs(outputs)
    if bad:
        before = f"loss terms of the step before: {_format_terms(last_terms)}" if last_terms else "no step had finished"
        raise NonFiniteLossError(
            f"the model's predictions are NaN or infinite at step {step} (epoch {epoch}, lr {lr:.3g}): "
            f"{', '.join(bad[:3])}; training diverged, try a lower learning rate; {before}"
        )


def _check_loss(reduced: Mapping[str, float], step: int, epoch: int, lr: float) -> None:
    """Stop with :class:`NonFiniteLossError` when the total loss (averaged over processes) is not
    finite, naming the step and every loss term."""
    loss = reduced["loss"]
    if not math.isfinite(loss):
        terms = {k: v for k, v in reduced.items() if k != "loss"}
        raise NonFiniteLossError(
            f"loss is {loss} at step {step} (epoch {epoch}, lr {lr:.3g}); stopping training. "
            f"Loss terms: {_format_terms(terms)}"
        )


@dataclass
class _PendingStep:
    """The micro-batches of the optimizer step in progress: their loss terms (each divided by the
    number of micro-batches, so the sums are the step's means), their images and the step's start."""

    sums: dict[str, float] = field(default_factory=dict)
    micro_batches: int = 0
    images: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, reduced: Mapping[str, float], images: int, accum_steps: int) -> None:
        for k, v in reduced.items():
            self.sums[k] = self.sums.get(k, 0.0) + v / accum_steps
        self.images += images
        self.micro_batches += 1

    def info(self, step: int, epoch: int, lrs: list[float], grad_norm: Optional[float]) -> StepInfo:
        """The finished step's :class:`StepInfo` (its wall time ends now)."""
        terms = dict(self.sums)
        loss = terms.pop("loss")
        seconds = time.perf_counter() - self.started
        return StepInfo(step=step, epoch=epoch, loss=loss, terms=terms, lr=lrs[0], lrs=lrs,
                        grad_norm=grad_norm, images=self.images, seconds=seconds)


def _training_forward(model: nn.Module, samples: Any, targets: Sequence[Mapping[str, Any]]) -> Any:
    """The model's training forward; a model whose training also reads the targets (it says so
    with ``trains_with_targets = True``: RT-DETR builds its denoising queries from them) gets them."""
    inner = getattr(model, "module", model)  # under DDP the model is .module
    if getattr(inner, "trains_with_targets", False):
        return model(samples, targets=targets)
    return model(samples)


@dataclass
class _Optimization:
    """What turns micro-batches into optimizer steps: the arguments of :func:`train_one_epoch`
    that stay the same for every batch."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    max_norm: float
    scaler: Optional["torch.amp.GradScaler"]
    amp_dtype: Optional[torch.dtype]
    accum_steps: int
    scheduler: Optional[Any]
    channels_last: bool

    @property
    def lr(self) -> float:
        """The learning rate of the first (non-backbone) parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def forward_backward(
        self, samples: Any, targets: Sequence[Mapping[str, Any]], sync: bool, step: int, epoch: int,
        last_terms: Mapping[str, float],
    ) -> dict[str, float]:
        """Forward and backward pass of one micro-batch (its loss divided by ``accum_steps``);
        returns its loss terms and weighted total (``"loss"``) averaged over processes.

        ``sync``: all-reduce the gradients (DDP); only an accumulation's last micro-batch does.
        ``step``, ``epoch``, ``last_terms``: for the message of a divergence.
        """
        samples = _prepare_samples(samples, self.device, self.channels_last)
        targets = move_targets(targets, self.device)
        no_sync = not sync and hasattr(self.model, "no_sync")
        with self.model.no_sync() if no_sync else contextlib.nullcontext():
            with _autocast(self.device, self.amp_dtype):
                outputs = _training_forward(self.model, samples, targets)
            outputs = outputs_to_float(outputs)
            _check_outputs(outputs, step, epoch, self.lr, last_terms)
            losses = self.criterion(outputs, targets)
            total = self.criterion.total(losses)
            scaled = total / self.accum_steps
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        reduced = {k: float(v) for k, v in reduce_mean_dict({**losses, "loss": total}).items()}
        _check_loss(reduced, step, epoch, self.lr)
        return reduced

    def step(self) -> tuple[Optional[float], list[float]]:
        """Clip, step the optimizer (through the grad scaler for fp16) and the scheduler; return
        the gradient norm before clipping (``None`` without clipping) and the learning rates
        the step used."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if self.max_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        if self.scheduler is not None:
            self.scheduler.step()
        return grad_norm, lrs


def _report(info: StepInfo, progress: Optional[Any], on_step_end: Optional[Callable[[StepInfo], None]]) -> None:
    """Advance the progress bar (its postfix shows loss and lr) and call the step-end callback."""
    if progress is not None:
        progress.update(1)
        progress.set_postfix(loss=f"{info.loss:.3f}", lr=f"{info.lr:.2e}", refresh=False)
    if on_step_end is not None:
        on_step_end(info)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    data_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: Union[str, torch.device],
    epoch: int,
    max_norm: float = 0.1,
    scaler: Optional["torch.amp.GradScaler"] = None,
    amp_dtype: Optional[torch.dtype] = None,
    accum_steps: int = 1,
    scheduler: Optional[Any] = None,
    *,
    start_step: int = 0,
    max_steps: Optional[int] = None,
    channels_last: bool = False,
    on_step_end: Optional[Callable[[StepInfo], None]] = None,
    progress: Optional[Any] = None,
) -> dict[str, Any]:
    """Train over ``data_loader`` once (or until ``max_steps`` optimizer steps are done).

    Args:
        model: DETR, possibly wrapped in ``DistributedDataParallel`` or compiled.
        criterion: a ``SetCriterion`` (``criterion(outputs, targets)`` and ``criterion.total``).
        data_loader: yields ``(samples, targets)`` as :func:`~detr_tutorial.data.collate_fn` does.
        max_norm: clip the global gradient norm to this (0 disables), as DETR does (0.1).
        scaler: a ``torch.amp.GradScaler`` for fp16 (``None`` otherwise).
        amp_dtype: ``torch.bfloat16`` / ``torch.float16`` to run the forward pass under autocast.
        accum_steps: micro-batches per optimizer step; each micro-batch's loss is divided by it.
            Leftover micro-batches at the end of the loader (fewer than ``accum_steps``) are dropped.
        scheduler: stepped after every optimizer step.
        start_step: optimizer steps done before this call (numbering only).
        max_steps: stop when the step counter reaches it.
        on_step_end: called with a :class:`StepInfo` after every optimizer step.
        progress: a ``tqdm`` bar to advance by one per step (its postfix shows loss and lr).

    Returns:
        ``{"step": steps done after this call, "loss": mean total, **mean terms, "steps": steps
        in this call}``.

    Raises:
        NonFiniteLossError: the total loss (averaged over processes) is NaN or infinite.
    """
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    device = torch.device(device)
    opt = _Optimization(model, criterion, optimizer, device, max_norm, scaler, amp_dtype, accum_steps, scheduler,
                        channels_last)
    model.train()
    criterion.train()
    step, steps_here = start_step, 0
    totals: dict[str, float] = {}  # this call's sums of every step's loss and terms, for the returned means
    last_terms: dict[str, float] = {}  # the previous optimizer step's terms, for a divergence message
    pending = _PendingStep()
    optimizer.zero_grad(set_to_none=True)
    for samples, targets in data_loader:
        if max_steps is not None and step >= max_steps:
            break
        last_micro = pending.micro_batches == accum_steps - 1
        reduced = opt.forward_backward(samples, targets, last_micro, step + 1, epoch, last_terms)
        pending.add(reduced, len(targets), accum_steps)
        if not last_micro:
            continue
        grad_norm, lrs = opt.step()
        step, steps_here = step + 1, steps_here + 1
        info = pending.info(step, epoch, lrs, grad_norm)
        for k, v in {"loss": info.loss, **info.terms}.items():
            totals[k] = totals.get(k, 0.0) + v
        last_terms = dict(info.terms)
        _report(info, progress, on_step_end)
        pending = _PendingStep()  # the clock restarts after the callback: checkpoints and evaluation are not steps
    means = {k: v / steps_here for k, v in totals.items()} if steps_here else {}
    return {"step": step, "steps": steps_here, **means}


# ------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def collect_detections(
    model: nn.Module,
    postprocess: nn.Module,
    data_loader: Iterable,
    device: Union[str, torch.device],
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    progress: bool = False,
) -> dict[int, dict[str, Tensor]]:
    """Run the model in eval mode; ``{image_id: {"boxes" (xyxy px), "scores", "labels"}}`` on the CPU.

    Boxes are in the pixels of each image's *original* size (``target["orig_size"]``), the frame
    the ground truth is annotated in, whatever resizing the loader applied.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    was_training = model.training
    model.eval()
    results: dict[int, dict[str, Tensor]] = {}
    try:
        for samples, targets in tqdm(data_loader, desc="eval", leave=False, disable=not progress):
            samples = _prepare_samples(samples, device, channels_last)
            with _autocast(device, amp_dtype):
                outputs = model(samples)
            outputs = outputs_to_float(outputs)
            missing = [i for i, t in enumerate(targets) if "orig_size" not in t or "image_id" not in t]
            if missing:
                raise ValueError(f"evaluation targets need 'image_id' and 'orig_size' (sample {missing[0]} lacks them)")
            orig_sizes = torch.stack([torch.as_tensor(t["orig_size"]) for t in targets]).to(device)
            dets = postprocess(outputs, orig_sizes)
            for t, d in zip(targets, dets):
                results[int(t["image_id"])] = {k: v.detach().cpu() for k, v in d.items()}
    finally:
        model.train(was_training)
    return results


def evaluate(
    model: nn.Module,
    postprocess: nn.Module,
    data_loader: Iterable,
    coco_gt: Any,
    device: Union[str, torch.device],
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    label_to_cat_id: Optional[Mapping[int, int]] = None,
    progress: bool = False,
) -> dict[str, float]:
    """COCO metrics (``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``, ...) of the model.

    Args:
        coco_gt: a pycocotools ``COCO`` ground truth, or a data set exposing one (``.coco``),
            whose ``label_to_cat_id`` is then used unless given.
        label_to_cat_id: contiguous label -> COCO category id (``None``: the data set's, else the
            ground truth's category ids in sorted order).

    Only the images the loader yields are scored (so a loader over a subset gives that subset's
    mAP). Call it on the main process; it runs no collective operations.
    """
    from . import evaluation

    if hasattr(coco_gt, "coco") and not hasattr(coco_gt, "loadRes"):
        if label_to_cat_id is None:
            label_to_cat_id = getattr(coco_gt, "label_to_cat_id", None)
        coco_gt = coco_gt.coco
    if label_to_cat_id is None:
        label_to_cat_id = {i: int(c) for i, c in enumerate(sorted(coco_gt.getCatIds()))}
    detections = collect_detections(model, postprocess, data_loader, device, amp_dtype, channels_last, progress)
    return evaluation.evaluate_detections(coco_gt, detections, label_to_cat_id=label_to_cat_id)
