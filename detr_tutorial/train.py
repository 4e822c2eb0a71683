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

Outputs in ``output_dir``: ``checkpoint.pth`` (the latest training state), ``model_final.pth``
(weights, config and class names only), ``log.jsonl`` (see :mod:`detr_tutorial.runlog`) and
``metrics.json`` (the final evaluation).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import checkpoint as ckpt_io
from .config import get_config
from .criterion import build_criterion
from .distributed import all_gather_object, barrier, convert_sync_batchnorm, init_distributed, is_main_process
from .engine import StepInfo, evaluate, train_one_epoch
from .models import PostProcess, build_model
from .recipes import Recipe, get_recipe
from .runlog import JsonlLogger, plot_log, trim_log
from .sampling import ResumableBatchSampler, SeededSamples

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

    out = {}
    for split, (_, sizes) in _split_options(recipe).items():
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
        if sizes:  # the preset's augmentation with other sizes (see make_transforms)
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


def _class_names(dataset: Dataset) -> list[str]:
    names = getattr(dataset, "class_names", None)
    if not names:
        raise ValueError("the training set has no class_names: cannot size the class head")
    return [str(n) for n in names]


def _label_map(dataset: Dataset) -> Optional[dict[int, int]]:
    m = getattr(dataset, "label_to_cat_id", None)
    return {int(k): int(v) for k, v in m.items()} if m else None


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
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be a positive int (or None for the recipe's budget), got {max_steps!r}")
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"output_dir {os.fspath(output_dir)} is a file, expected a folder")
    amp = amp or recipe.amp
    if amp not in (*_AMP_DTYPES, "auto"):
        raise ValueError(f"amp must be one of {sorted(_AMP_DTYPES) + ['auto']}, got {amp!r}")
    channels_last = channels_last or recipe.channels_last
    dist_info = init_distributed(device)
    dev = dist_info.device
    if amp == "auto":
        amp = resolve_amp(amp, dev)
        logger.info("amp=auto: %s on %s", "bfloat16 autocast" if amp == "bf16" else "float32 (bfloat16 is not native or not faster here)", dev)
    if amp == "fp16" and dev.type != "cuda":
        raise ValueError("fp16 mixed precision needs CUDA; on the CPU use --amp bf16")
    amp_dtype = _AMP_DTYPES[amp]
    main = is_main_process()
    out = Path(output_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt_io.remove_stale_temporaries(out)  # left by writes a kill interrupted
    seed_everything(recipe.seed)

    # -- data ------------------------------------------------------------------------------
    sizes_used = None
    if datasets is None:
        sizes_used = _log_image_sizes(recipe) if main else None
        datasets = build_datasets(recipe, data_dir)
    train_set, val_set = datasets
    class_names = _class_names(train_set)
    label_map = _label_map(train_set)
    sampler = ResumableBatchSampler(
        len(train_set),
        recipe.batch_size,
        seed=recipe.seed,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        shuffle=True,
        drop_last=True,
    )
    steps_per_epoch = sampler.batches_per_epoch // recipe.accum_steps
    if steps_per_epoch < 1:
        raise ValueError(
            f"one optimizer step needs {recipe.batch_size * dist_info.world_size * recipe.accum_steps} images "
            f"but the training set has {len(train_set)}"
        )
    total_steps = max_steps or recipe.max_steps or int(math.ceil(recipe.epochs * steps_per_epoch))

    # -- model, loss, optimizer --------------------------------------------------------------
    cfg = get_config(recipe.model, **{**recipe.model_overrides, "num_classes": len(class_names), "class_names": class_names})
    try:
        model = build_model(cfg)
    except OSError as e:  # torchvision could not download the ImageNet trunk (offline?)
        if not cfg.pretrained_backbone:
            raise
        raise ValueError(
            f"could not load the pretrained {cfg.backbone} trunk ({e}); offline, train from scratch with "
            f"--set model.pretrained_backbone=false or point to a local file with "
            f"--set model.pretrained_backbone=/path/to/{cfg.backbone}.pth"
        ) from e
    if init_from is not None and resume is None:
        ckpt_io.load_model_weights(
            model, ckpt_io.load_checkpoint(init_from), reset_class_head=reset_class_head, source=f"checkpoint {init_from}"
        )
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    criterion = build_criterion(cfg).to(dev)
    postprocess = PostProcess("sigmoid" if cfg.focal_loss else "softmax")
    optimizer = build_optimizer(model, recipe.lr, recipe.lr_backbone, recipe.weight_decay)
    scheduler = build_scheduler(optimizer, recipe, total_steps)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None

    step = 0
    if resume is not None:
        resume_path = Path(resume)
        if resume_path.is_dir():
            resume_path = resume_path / CHECKPOINT_NAME
        state = ckpt_io.load_checkpoint(resume_path, map_location=dev)
        _check_resumable(state, resume_path, recipe, total_steps)
        ckpt_io.load_model_weights(model, state, source=f"checkpoint {resume_path}")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if int(state.get("total_steps", total_steps)) != total_steps:
            _relay_schedule(scheduler, recipe, total_steps)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        rng = state["rng"]
        if len(rng) != dist_info.world_size:
            logger.warning("checkpoint has RNG states of %d processes, this run has %d: resume is not exact", len(rng), dist_info.world_size)
        ckpt_io.restore_rng_state(rng[min(dist_info.rank, len(rng) - 1)])
        logger.info("resumed from %s at step %d", resume_path, step)

    train_model: nn.Module = model
    if dist_info.world_size > 1:
        # each process holds part of the batch: BatchNorm must normalize with the whole batch's statistics
        model = convert_sync_batchnorm(model, dev)
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if compile:
        train_model = torch.compile(train_model)

    if main and resume is not None:
        dropped = trim_log(out / LOG_NAME, step)  # the steps after the checkpoint are trained again
        if dropped:
            logger.info("dropped %d log records of steps after %d (they are replayed now)", dropped, step)
    log = JsonlLogger(out / LOG_NAME, enabled=main)
    val_loader = None
    if val_set is not None and (recipe.eval_every or final_eval):
        val_loader = make_eval_loader(val_set, max(1, recipe.batch_size), recipe.num_workers, recipe.eval_max_images)
    metrics: dict[str, float] = {}
    window: dict[str, float] = {}
    t_start = time.perf_counter()
    run_seconds = [0.0]  # training time only (not evaluation or checkpoints)
    if main:
        log.log({"kind": "start", "step": step, "recipe": recipe.to_dict(), "config": cfg.to_dict(),
                 "total_steps": total_steps, "world_size": dist_info.world_size, "device": str(dev),
                 "image_sizes": sizes_used,
                 "amp": amp, "channels_last": channels_last,
                 "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")})

    def save(path: Path, final_metrics: Optional[dict] = None) -> None:
        rng_states = all_gather_object(ckpt_io.capture_rng_state())
        if main:
            ckpt_io.save_checkpoint(
                {
                    "format": ckpt_io.FORMAT,
                    "model": model.state_dict(),
                    "config": cfg.to_dict(),
                    "class_names": list(class_names),
                    "label_map": label_map,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "step": step_box[0],
                    "epoch": step_box[0] // steps_per_epoch,
                    "total_steps": total_steps,
                    "rng": rng_states,
                    "recipe": recipe.to_dict(),
                    "metrics": final_metrics or {},
                },
                path,
            )
        barrier()

    def run_eval(max_images_loader: DataLoader) -> dict[str, float]:
        result: dict[str, float] = {}
        if main:
            result = evaluate(model, postprocess, max_images_loader, val_set, dev, amp_dtype, channels_last,
                              label_to_cat_id=label_map)
        barrier()
        return result

    step_box = [step]

    def step_end(info: StepInfo) -> None:
        step_box[0] = info.step
        run_seconds[0] += info.seconds
        for k, v in {"loss": info.loss, **info.terms}.items():
            window[k] = window.get(k, 0.0) + v
        window["_n"] = window.get("_n", 0.0) + 1
        window["_images"] = window.get("_images", 0.0) + info.images
        window["_seconds"] = window.get("_seconds", 0.0) + info.seconds
        if recipe.log_every and (info.step % recipe.log_every == 0 or info.step == total_steps):
            n = window.pop("_n")
            imgs, secs = window.pop("_images"), window.pop("_seconds")
            rec = {"kind": "train", "step": info.step, "epoch": info.epoch, "lr": info.lr, "lrs": info.lrs,
                   **{k: v / n for k, v in window.items()},
                   "images_per_s": imgs * dist_info.world_size / max(secs, 1e-9),
                   "train_minutes": run_seconds[0] / 60}
            log.log(rec)
            window.clear()
        if recipe.eval_every and val_loader is not None and info.step % recipe.eval_every == 0 and info.step != total_steps:
            m = run_eval(val_loader)
            if main:
                log.log({"kind": "eval", "step": info.step, "train_minutes": run_seconds[0] / 60, "metrics": m})
                logger.info("step %d: AP %.4f AP50 %.4f", info.step, m.get("AP", float("nan")), m.get("AP50", float("nan")))
        if recipe.checkpoint_every and info.step % recipe.checkpoint_every == 0 and info.step != total_steps:
            save(out / CHECKPOINT_NAME)
        if on_step_end is not None:
            on_step_end(info)
        if interrupt.requested:  # Ctrl-C: stop here, between steps, where the state is whole
            raise _StopRequested()

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, desc=f"train {recipe.name}", disable=not (progress and main),
               dynamic_ncols=True, unit="step")
    data = SeededSamples(train_set)
    interrupt = _DeferredInterrupt(enabled=dist_info.world_size == 1)
    try:
        with interrupt:
            while step < total_steps:
                epoch, step_in_epoch = divmod(step, steps_per_epoch)
                sampler.set_epoch(epoch, start_batch=step_in_epoch * recipe.accum_steps)
                loader = DataLoader(
                    data,
                    batch_sampler=sampler,
                    num_workers=recipe.num_workers,
                    collate_fn=_collate(),
                    # the loader's own generator: creating an iterator must not consume global RNG,
                    # or a resumed run would diverge from an uninterrupted one
                    generator=torch.Generator().manual_seed(recipe.seed + epoch),
                    persistent_workers=False,
                    pin_memory=dev.type == "cuda",
                    worker_init_fn=_ignore_sigint,
                )
                summary = train_one_epoch(
                    train_model, criterion, loader, optimizer, dev, epoch,
                    max_norm=recipe.clip_max_norm, scaler=scaler, amp_dtype=amp_dtype,
                    accum_steps=recipe.accum_steps, scheduler=scheduler,
                    start_step=step, max_steps=total_steps, channels_last=channels_last,
                    on_step_end=step_end, progress=bar,
                )
                if summary["steps"] == 0:
                    raise RuntimeError(f"epoch {epoch} made no optimizer step (too few batches for accum_steps)")
                step = summary["step"]
    except _StopRequested:
        save(out / CHECKPOINT_NAME)
        if main:
            log.log({"kind": "interrupted", "step": step_box[0]})
        raise TrainingInterrupted(step_box[0], out / CHECKPOINT_NAME) from None
    finally:
        bar.close()
    train_minutes = run_seconds[0] / 60

    # -- the end: final checkpoint, model, evaluation -----------------------------------------
    step_box[0] = step
    save(out / CHECKPOINT_NAME)
    if final_eval and val_set is not None:
        full_loader = make_eval_loader(val_set, max(1, recipe.batch_size), recipe.num_workers, None)
        metrics = run_eval(full_loader)
    final_path = out / FINAL_NAME
    if main:
        ckpt_io.save_checkpoint(
            {"format": ckpt_io.FORMAT, "model": model.state_dict(), "config": cfg.to_dict(),
             "class_names": list(class_names), "label_map": label_map, "step": step,
             "recipe": recipe.to_dict(), "metrics": metrics},
            final_path,
        )
        wall = (time.perf_counter() - t_start) / 60
        log.log({"kind": "end", "step": step, "train_minutes": train_minutes, "wall_minutes": wall, "metrics": metrics})
        if metrics:
            log.log({"kind": "eval", "step": step, "train_minutes": train_minutes, "metrics": metrics})
            with open(out / METRICS_NAME, "w", encoding="utf-8") as f:
                json.dump({"step": step, "train_minutes": train_minutes, **metrics}, f, indent=2)
    barrier()
    return TrainResult(
        steps=step,
        minutes=train_minutes,
        metrics=metrics,
        output_dir=out,
        checkpoint=out / CHECKPOINT_NAME,
        final_model=final_path,
        log=out / LOG_NAME,
        config=cfg.to_dict(),
    )


# recipe fields that decide which images each step sees: a resume with other values is not a continuation
_DATA_ORDER_FIELDS = ("batch_size", "accum_steps", "seed")


def _check_resumable(state: Mapping[str, Any], path: Path, recipe: Recipe, total_steps: int) -> None:
    """Refuse to resume what cannot continue the checkpoint's run; warn about what changes.

    Refused (``ValueError``): a checkpoint without training state, another batch size,
    accumulation or seed (the data order would shift: the resumed steps would not be the ones
    the run skipped), and a step budget below the checkpoint's step. Warned: another step budget
    (the learning-rate schedule is laid out anew over it) and other recipe values (they apply
    from the checkpoint's step on).
    """
    missing = [k for k in ("optimizer", "scheduler", "step", "rng") if k not in state]
    if missing:
        raise ckpt_io.CheckpointError(
            f"{path} is not a training checkpoint (it lacks {', '.join(missing)}): use it with --init-from to "
            f"start a new run from its weights"
        )
    step = int(state["step"])
    saved = dict(state.get("recipe") or {})
    current = recipe.to_dict()
    for key in _DATA_ORDER_FIELDS:
        if key in saved and saved[key] != current.get(key):
            raise ValueError(
                f"{path} was trained with {key}={saved[key]!r}, this run has {key}={current.get(key)!r}: resume with "
                f"the same value, or start a new run from its weights with --init-from"
            )
    if total_steps < step:
        raise ValueError(
            f"{path} is at step {step}, past this run's budget of {total_steps} steps: give --max-steps {step} "
            f"or more to continue it"
        )
    saved_total = state.get("total_steps")
    if saved_total is not None and int(saved_total) != total_steps:
        logger.warning(
            "resuming a run planned for %d steps with a budget of %d: the learning-rate schedule is laid out "
            "over %d steps from step %d on", int(saved_total), total_steps, total_steps, step,
        )
    ignored = ("name", "description", "max_steps", "epochs")  # the budget is handled above
    changed = sorted(k for k in saved if k not in ignored and k not in _DATA_ORDER_FIELDS and saved[k] != current.get(k))
    if changed:
        logger.warning(
            "resuming with other recipe values than the checkpoint's, in effect from step %d: %s", step,
            ", ".join(f"{k}: {saved[k]!r} -> {current.get(k)!r}" for k in changed),
        )


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after ``step``; a resumable checkpoint of that step is at ``checkpoint``."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted after step {step}; checkpoint saved to {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


class _StopRequested(Exception):
    """Raised between two optimizer steps when Ctrl-C asked training to stop."""


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers leave Ctrl-C to the main process, which stops between
    steps (a worker that died of the signal would break the batch the step is waiting for)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _DeferredInterrupt:
    """While active, the first Ctrl-C (SIGINT) only sets :attr:`requested` and training stops
    after the step in progress, so the checkpoint written then is a whole, exactly resumable
    state; a second Ctrl-C interrupts at once. Active only in the main thread of a single-process
    run (under DDP every process would have to agree on the step to stop at)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("interrupted: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)")

    def __enter__(self) -> "_DeferredInterrupt":
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)
