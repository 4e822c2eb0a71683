"""A complete training run: recipe -> data, model, optimizer, schedule -> steps -> checkpoints -> mAP.

:func:`train` is what ``python -m detr_tutorial train`` calls. It works the same in one process
and under ``torchrun`` (DDP: NCCL on GPUs, gloo on CPUs), on the CPU and on CUDA, and it resumes
exactly: a run that is killed and resumed from its last checkpoint ends with the same parameters
as one that was never interrupted, because

* the checkpoint holds the model, optimizer, scheduler, grad scaler, step and every process's
  RNG states (Python, NumPy, torch, CUDA), written atomically (:mod:`detr_tutorial.checkpoint`);
* the data order and each sample's augmentation are functions of ``(seed, epoch, index)``
  (:mod:`detr_tutorial.sampling`), so the resumed run starts at the right batch without replaying
  the earlier ones, and the data loaders never draw from the global random generators.

The run itself is a :class:`~detr_tutorial.trainer.Trainer` (setup, resume, steps, checkpoints,
evaluation); this module holds what it is built from: the optimizer and learning-rate schedule,
the data sets and loaders, the precision choice.

Outputs in ``output_dir``: ``checkpoint.pth`` (the latest training state), ``model_final.pth``
(weights, config and class names only), ``log.jsonl`` (see :mod:`detr_tutorial.runlog`) and
``metrics.json`` (the final evaluation).
"""
from __future__ import annotations

import logging
import math
import os
import random
import signal
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import checkpoint as ckpt_io
from .engine import StepInfo
from .recipes import Recipe
from .runlog import plot_log

__all__ = [
    "TrainResult",
    "TrainingInterrupted",
    "train",
    "build_optimizer",
    "build_scheduler",
    "LRSchedule",
    "build_datasets",
    "image_sizes",
    "eval_transforms",
    "make_eval_loader",
    "seed_everything",
    "plot_log",
    "CHECKPOINT_NAME",
    "FINAL_NAME",
    "LOG_NAME",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pth"
FINAL_NAME = "model_final.pth"
LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.json"

_AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_info() -> tuple[str, set[str]]:
    """The CPU's vendor and flags from ``/proc/cpuinfo`` (Linux; elsewhere ``("", set())``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return "", set()
    field = lambda name: next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(name)), "")  # noqa: E731
    return field("vendor_id"), set(field("flags").split())


def cpu_has_native_bf16() -> bool:
    """Whether bfloat16 autocast makes this CPU's training steps faster (Linux x86 only).

    Decided from measurements, not from the flag alone: with AMX (``amx_bf16``) oneDNN's
    bfloat16 convolutions are fast; on an AMD EPYC with ``avx512_bf16`` bfloat16 + channels-last
    gave the ``shapes-cpu`` recipe 1.7x more steps (benchmarks/RESULTS.md, 2026-11-25); on an
    Intel Xeon with ``avx512_bf16`` but no AMX (a VM that hides it) the same step took 2.4x
    *longer* (2.01 s vs 0.85 s, interleaved, 2026-12-02), as did the ResNet-18 comparison model
    (0.39x). Without any of these flags oneDNN emulates bfloat16, which is slower still.
    """
    vendor, flags = _cpu_info()
    if "amx_bf16" in flags:
        return True
    return vendor == "AuthenticAMD" and "avx512_bf16" in flags


def resolve_amp(amp: str, device: torch.device) -> str:
    """``"auto"``: ``"bf16"`` where the device computes bfloat16 natively and faster (a CUDA GPU
    that supports it, a CPU where :func:`cpu_has_native_bf16`), else ``"none"``; other values
    unchanged."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no such argument and reports native support only
            native = torch.cuda.is_bf16_supported()
        return "bf16" if native else "none"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "none"
    return "none"


# ------------------------------------------------------------------------- optimizer, schedule
def build_optimizer(model: nn.Module, lr: float, lr_backbone: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with two parameter groups: everything else at ``lr``, ``backbone.*`` at ``lr_backbone``.

    As in the official code, parameters with ``requires_grad=False`` (a frozen stem) are left
    out and weight decay applies to every parameter. ``lr_backbone=0`` freezes the trunk.
    """
    model = ckpt_io.unwrap_model(model)
    main, backbone = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (backbone if name.startswith("backbone.") else main).append(p)
    groups = [{"params": main, "lr": lr, "name": "transformer"}]
    if backbone and lr_backbone > 0:
        groups.append({"params": backbone, "lr": lr_backbone, "name": "backbone"})
    elif backbone:
        for p in backbone:
            p.requires_grad_(False)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


@dataclass
class LRSchedule:
    """Learning-rate factor as a pure function of the step (so a scheduler's state is its step).

    Linear warm-up from ``1 / warmup_steps`` to 1 over ``warmup_steps``, then
    ``"step"``: ``drop_factor`` from ``drop_step`` on; ``"cosine"``: from 1 down to
    ``min_ratio`` at ``total_steps``; ``"constant"``: 1.
    """

    kind: str
    total_steps: int
    warmup_steps: int = 0
    drop_step: int = 0
    drop_factor: float = 0.1
    min_ratio: float = 0.01

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "step":
            return self.drop_factor if step >= self.drop_step else 1.0
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, (step - self.warmup_steps) / span)
            return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0


def _lr_schedule(recipe: Recipe, total_steps: int) -> LRSchedule:
    """The recipe's learning-rate factor laid out over ``total_steps`` optimizer steps."""
    return LRSchedule(
        kind=recipe.schedule,
        total_steps=total_steps,
        warmup_steps=min(recipe.warmup_steps, total_steps),
        drop_step=int(round(recipe.lr_drop_fraction * total_steps)),
        drop_factor=recipe.lr_drop_factor,
        min_ratio=recipe.min_lr_ratio,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's schedule over ``total_steps`` optimizer steps, stepped once per step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_schedule(recipe, total_steps))


def _relay_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, recipe: Recipe, total_steps: int) -> None:
    """Lay a loaded scheduler out over ``total_steps`` (its state dict carries the old budget)
    and set the optimizer's learning rates to the new schedule's value at the current step."""
    step = scheduler.last_epoch
    for fn, group, base in zip(scheduler.lr_lambdas, scheduler.optimizer.param_groups, scheduler.base_lrs):
        fn.__dict__.update(vars(_lr_schedule(recipe, total_steps)))
        group["lr"] = base * fn(step)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]


# ------------------------------------------------------------------------------------- data
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


# dataset_options that size the preset augmentation (``make_transforms``) instead of going to the data set
TRANSFORM_OPTIONS = ("scales", "max_size", "val_size", "crop")


def _split_options(recipe: Recipe) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Per split: ``(data set keyword arguments, make_transforms size options)``.

    The recipe's ``image_size`` sizes both splits (training ``scales=[image_size]``, evaluation
    ``val_size=image_size``); the size options of ``dataset_options`` override it per split.
    """
    options = dict(recipe.dataset_options)
    # ``val_size`` is a transform option of both splits, not ``size`` for the val split
    prefixed = {k: v for k, v in options.items() if k.startswith(("train_", "val_")) and k not in TRANSFORM_OPTIONS}
    train_options = {k[len("train_"):]: v for k, v in prefixed.items() if k.startswith("train_")}
    val_options = {k[len("val_"):]: v for k, v in prefixed.items() if k.startswith("val_")}
    common = {k: v for k, v in options.items() if k not in prefixed}
    result = {}
    for split, own in (("train", train_options), ("val", val_options)):
        kwargs = {**common, **own}
        sizes = {k: kwargs.pop(k) for k in TRANSFORM_OPTIONS if k in kwargs}
        if recipe.image_size is not None:
            sizes.setdefault("scales" if split == "train" else "val_size", recipe.image_size)
        if isinstance(sizes.get("scales"), int):
            sizes["scales"] = [sizes["scales"]]
        scales = sizes.get("scales")
        if scales is not None and not (
            isinstance(scales, (list, tuple)) and scales and all(isinstance(v, int) and v > 0 for v in scales)
        ):
            raise ValueError(f"{split} scales must be a positive int or a list of them, got {scales!r}")
        result[split] = (kwargs, sizes)
    return result


def image_sizes(recipe: Recipe) -> dict[str, Any]:
    """The sizes :func:`build_datasets` resizes each split's images to: ``{"train": ImageSizes,
    "val": ImageSizes}`` (see :class:`~detr_tutorial.data.transforms.ImageSizes`)."""
    from .data.transforms import preset_sizes

    from .data.transforms import ImageSizes

    out = {}
    for split, (_, sizes) in _split_options(recipe).items():
        if split == "train" and recipe.batch_image_sizes:
            out[split] = ImageSizes(tuple(recipe.batch_image_sizes), per_batch=True)
            continue
        resize = {k: v for k, v in sizes.items() if k != "crop"}
        try:
            out[split] = preset_sizes(split, recipe.dataset, **resize)
        except TypeError as e:
            raise ValueError(f"bad transform option for {recipe.dataset!r} ({split}): {e}") from e
    return out


def _log_image_sizes(recipe: Recipe) -> dict[str, str]:
    """Log (and return, for the run log) the sizes training and evaluation use; warn when the
    evaluation size lies outside the training sizes (a model learns boxes at the sizes it sees)."""
    sizes = image_sizes(recipe)
    train_sizes, val_sizes = sizes["train"], sizes["val"]
    logger.info("image sizes (%s data set): training at %s; evaluation at %s", recipe.dataset, train_sizes, val_sizes)
    if train_sizes.shorter and val_sizes.shorter:
        lo, hi = min(train_sizes.shorter), max(train_sizes.shorter)
        if not lo <= val_sizes.shorter[0] <= hi:
            logger.warning(
                "evaluation at a shorter side of %d px is outside the training sizes (%d-%d px): set the "
                "recipe's image_size to size both splits alike", val_sizes.shorter[0], lo, hi,
            )
    return {split: str(v) for split, v in sizes.items()}


def eval_transforms(recipe: Union[None, Recipe, Mapping[str, Any]], dataset: str, **sizes: Any) -> Callable:
    """The evaluation transforms of ``dataset`` for a model trained with ``recipe`` (a
    :class:`Recipe`, a checkpoint's ``recipe`` dict, or ``None``): its ``image_size`` as the
    shorter side unless ``sizes`` (``val_size``, ``max_size``) say otherwise; without an
    ``image_size`` the data set preset's. ``eval`` uses it, so a model is scored at the size it
    was trained for."""
    from .data.transforms import make_transforms

    if isinstance(recipe, Mapping):
        recipe = Recipe.from_dict(dict(recipe))
    image_size = recipe.image_size if recipe is not None else None
    if image_size is not None:
        sizes.setdefault("val_size", image_size)
    unknown = sorted(set(sizes) - {"val_size", "max_size"})
    if unknown:
        raise ValueError(f"evaluation takes the size options val_size and max_size, not {unknown}")
    return make_transforms("val", dataset, **sizes)


def build_datasets(recipe: Recipe, data_dir: Optional[str] = None) -> tuple[Dataset, Dataset]:
    """The recipe's training and validation sets (training with augmentation).

    ``recipe.image_size`` resizes both splits to the size the recipe was made for.
    ``recipe.dataset_options`` go to the data set builder, ``train_``/``val_``-prefixed ones to
    that split only; :data:`TRANSFORM_OPTIONS` (``scales``, ``max_size``, ``val_size``, ``crop``)
    resize the preset augmentation instead, e.g. ``{"train_scales": [128]}``.
    """
    from .data import build_dataset
    from .data.transforms import make_transforms

    root = data_dir if data_dir is not None else recipe.data_dir
    sets = []
    for split, (kwargs, sizes) in _split_options(recipe).items():
        if split == "train" and recipe.batch_image_sizes:  # the data set sizes each batch: flips only
            kwargs["transforms"] = make_transforms("train", recipe.dataset, resize=False)
        elif sizes:  # the preset's augmentation with other sizes (see make_transforms)
            try:
                kwargs["transforms"] = make_transforms(split, recipe.dataset, **sizes)
            except (TypeError, ValueError) as e:
                raise ValueError(f"bad transform option for {recipe.dataset!r} ({split}): {e}") from e
        try:
            sets.append(build_dataset(recipe.dataset, split, root=root, **kwargs))
        except TypeError as e:  # an option the data set does not take: a user error, not a bug
            raise ValueError(f"bad data set option for {recipe.dataset!r}: {e}") from e
    return sets[0], sets[1]


def _collate() -> Callable:
    from .data import collate_fn

    return collate_fn


def make_eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, max_images: Optional[int] = None) -> DataLoader:
    """A sequential loader over (the first ``max_images`` of) a validation set."""
    if max_images is not None and max_images < len(dataset):
        dataset = Subset(dataset, range(max_images))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate(),
        generator=torch.Generator().manual_seed(0),  # never draw from the global generator
        worker_init_fn=_ignore_sigint,
    )


# ------------------------------------------------------------------------------------ train
@dataclass
class TrainResult:
    """What a run produced: steps, minutes, final metrics and file paths."""

    steps: int
    minutes: float
    metrics: dict[str, float]
    output_dir: Path
    checkpoint: Optional[Path]
    final_model: Optional[Path]
    log: Path
    config: dict[str, Any] = field(default_factory=dict)


def train(
    recipe: Union[str, Recipe] = "shapes-cpu",
    output_dir: Union[str, os.PathLike] = "runs/shapes-cpu",
    *,
    device: Optional[str] = None,
    max_steps: Optional[int] = None,
    resume: Union[None, str, os.PathLike] = None,
    init_from: Union[None, str, os.PathLike] = None,
    reset_class_head: bool = False,
    data_dir: Optional[str] = None,
    amp: Optional[str] = None,
    compile: bool = False,
    channels_last: bool = False,
    datasets: Optional[tuple[Dataset, Optional[Dataset]]] = None,
    final_eval: bool = True,
    progress: bool = True,
    on_step_end: Optional[Callable[[StepInfo], None]] = None,
) -> TrainResult:
    """Train a recipe; return the steps, minutes and final COCO metrics.

    Args:
        recipe: a name of :data:`~detr_tutorial.recipes.RECIPES` or a :class:`Recipe`.
        output_dir: checkpoints, log and metrics go here.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA if available).
        max_steps: override the recipe's budget (the schedule is laid out over this many steps).
        resume: a checkpoint (or a folder holding ``checkpoint.pth``) to continue exactly.
        init_from: start from these weights (fresh optimizer and schedule): fine-tuning.
        reset_class_head: with ``init_from``, drop its class head (another number of classes).
        data_dir: where the data set lives (overrides the recipe's).
        amp: ``"none"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` (overrides the recipe's; ``"auto"``
            is bf16 where the device computes it natively, see :func:`resolve_amp`).
        compile, channels_last: ``torch.compile`` the model / use the channels-last memory format
            (``channels_last`` is also on when the recipe asks for it).
        datasets: ``(train_set, val_set)`` to use instead of the recipe's data set.
        final_eval: evaluate on the whole validation set at the end.
        on_step_end: called after every optimizer step (after logging, evaluation, checkpoint).

    Raises:
        TrainingInterrupted: Ctrl-C (SIGINT) during the steps of a single-process run: training
            stops after the step in progress and saves ``checkpoint.pth`` first, so ``resume``
            continues exactly (a second Ctrl-C stops at once, saving nothing).
        ValueError: a bad ``max_steps`` or ``output_dir``, or a ``resume`` that cannot continue the
            checkpoint's run (another batch size, accumulation or seed; a budget below its step).
        NonFiniteLossError: the loss or the model's predictions became NaN or infinite.
    """
    from .trainer import Trainer  # here, not at the top: the Trainer is built from this module's helpers

    return Trainer(
        recipe, output_dir, device=device, max_steps=max_steps, resume=resume, init_from=init_from,
        reset_class_head=reset_class_head, data_dir=data_dir, amp=amp, compile=compile, channels_last=channels_last,
        datasets=datasets, final_eval=final_eval, progress=progress, on_step_end=on_step_end,
    ).run()


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after ``step``; a resumable checkpoint of that step is at ``checkpoint``."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted after step {step}; checkpoint saved to {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers leave Ctrl-C to the main process, which stops between
    steps (a worker that died of the signal would break the batch the step is waiting for)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)




class _CallableModule(types.ModuleType):
    """This module, callable as :func:`train`.

    ``dt.train`` is the function :func:`train`, loaded on first use; but importing this module
    (``from detr_tutorial.train import ...``, done by the CLI and the trainer too) binds the name
    ``detr_tutorial.train`` to the module itself, as Python does for every submodule. Calling the
    module calls the function, so ``dt.train(recipe, ...)`` works whichever of the two the name holds.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> TrainResult:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
