"""The :class:`Trainer`: one training run as an object whose parts can be read one at a time.

:func:`detr_tutorial.train.train` is ``Trainer(...).run()``. The run goes

1. :meth:`Trainer.setup`: the process group and device, the data (and its sampler), the model,
   the loss, the optimizer and the learning-rate schedule; then :meth:`Trainer.resume` when
   continuing a checkpoint; then the DDP / ``torch.compile`` wrappers and the run log;
2. :meth:`Trainer.run`: epochs of :func:`~detr_tutorial.engine.train_one_epoch`, which calls
   :meth:`Trainer.step_end` after every optimizer step (log record, periodic evaluation,
   periodic checkpoint, the user's callback, Ctrl-C);
3. :meth:`Trainer.finish`: the last checkpoint, the final evaluation, ``model_final.pth``.

With a recipe's ``ema_decay``, a moving average of the weights is updated after every step; the
evaluations and ``model_final.pth`` use it, and the training checkpoint stores it beside the model.

The state of the run (its step, its training time, the log window) lives in attributes; the
recipe-level helpers it uses (optimizer, schedule, data sets) are the functions of
:mod:`detr_tutorial.train`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import checkpoint as ckpt_io
from . import engine
from .config import get_config
from .ema import ModelEMA
from .distributed import all_gather_object, barrier, convert_sync_batchnorm, init_distributed, is_main_process
from .engine import StepInfo, train_one_epoch
from .families import build_criterion, build_model, build_postprocess
from .recipes import Recipe, get_recipe
from .runlog import JsonlLogger, trim_log
from .sampling import ResumableBatchSampler, SeededSamples
from .train import (
    _AMP_DTYPES,
    CHECKPOINT_NAME,
    FINAL_NAME,
    LOG_NAME,
    METRICS_NAME,
    TrainingInterrupted,
    TrainResult,
    _collate,
    _ignore_sigint,
    _log_image_sizes,
    _relay_schedule,
    build_datasets,
    build_optimizer,
    build_scheduler,
    make_eval_loader,
    resolve_amp,
    seed_everything,
)

__all__ = ["Trainer"]

# the messages of a run keep the name they always had: users filter on "detr_tutorial.train"
logger = logging.getLogger("detr_tutorial.train")


@dataclass
class _LogWindow:
    """The steps since the last ``"train"`` log record: sums of their loss and terms, images, time."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    def add(self, info: StepInfo) -> None:
        for k, v in {"loss": info.loss, **info.terms}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.images += info.images
        self.seconds += info.seconds

    def means(self) -> dict[str, float]:
        return {k: v / self.steps for k, v in self.sums.items()}


class Trainer:
    """A training run of a recipe; see :func:`detr_tutorial.train.train` for the arguments.

    ``Trainer(...)`` checks the arguments and builds nothing; :meth:`setup` builds the parts
    (``run`` calls it when it has not been called). After ``setup`` the parts are attributes:
    ``model`` (unwrapped), ``train_model`` (what the steps call: DDP / compiled), ``criterion``,
    ``postprocess``, ``optimizer``, ``scheduler``, ``scaler``, ``train_set``, ``val_set``,
    ``total_steps``, ``steps_per_epoch``, ``ema`` (a :class:`~detr_tutorial.ema.ModelEMA` when the
    recipe has ``ema_decay > 0``, else ``None``); ``step`` is the optimizer steps done and
    ``train_seconds`` the time spent in them (not in evaluation or checkpoints).
    """

    def __init__(
        self,
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
    ) -> None:
        self.recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps must be a positive int (or None for the recipe's budget), got {max_steps!r}")
        if Path(output_dir).exists() and not Path(output_dir).is_dir():
            raise ValueError(f"output_dir {os.fspath(output_dir)} is a file, expected a folder")
        self.amp = amp or self.recipe.amp
        if self.amp not in (*_AMP_DTYPES, "auto"):
            raise ValueError(f"amp must be one of {sorted(_AMP_DTYPES) + ['auto']}, got {self.amp!r}")
        self.output_dir = Path(output_dir)
        self.device_name, self.max_steps, self.data_dir = device, max_steps, data_dir
        self.resume_from, self.init_from, self.reset_class_head = resume, init_from, reset_class_head
        self.compile, self.channels_last = compile, channels_last or self.recipe.channels_last
        self.datasets, self.final_eval, self.progress, self.on_step_end = datasets, final_eval, progress, on_step_end
        self.step = 0
        self.train_seconds = 0.0  # training steps only (not evaluation or checkpoints)
        self._window = _LogWindow()
        self._interrupt = _DeferredInterrupt(enabled=False)
        self._is_set_up = False

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    # ------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Build the run: device, data, model, loss, optimizer, schedule; resume; wrappers; log."""
        self._setup_process()
        self._setup_data()
        self._setup_model()
        self._setup_optimization()
        if self.resume_from is not None:
            self.resume(self.resume_from)
        self._wrap_model()
        self._open_log()
        self._is_set_up = True

    def _setup_process(self) -> None:
        """Join the process group (under ``torchrun``), settle the precision, prepare the folder."""
        self.dist = init_distributed(self.device_name)
        self.device = self.dist.device
        if self.amp == "auto":
            self.amp = resolve_amp(self.amp, self.device)
            logger.info("amp=auto: %s on %s", "bfloat16 autocast" if self.amp == "bf16" else
                        "float32 (bfloat16 is not native or not faster here)", self.device)
        if self.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 mixed precision needs CUDA; on the CPU use --amp bf16")
        self.amp_dtype = _AMP_DTYPES[self.amp]
        self.main = is_main_process()
        if self.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            ckpt_io.remove_stale_temporaries(self.output_dir)  # left by writes a kill interrupted
        seed_everything(self.recipe.seed)

    def _setup_data(self) -> None:
        """The data sets, their class names and the sampler that numbers the steps."""
        recipe = self.recipe
        self.sizes_used = None
        datasets = self.datasets
        if datasets is None:
            self.sizes_used = _log_image_sizes(recipe) if self.main else None
            datasets = build_datasets(recipe, self.data_dir)
        self.train_set, self.val_set = datasets
        if recipe.batch_image_sizes and not callable(getattr(self.train_set, "sized_item", None)):
            raise ValueError(
                f"batch_image_sizes needs a training set that loads an image at a given size (a "
                f"DetectionDataset's sized_item); {type(self.train_set).__name__} has none"
            )
        self.class_names = _class_names(self.train_set)
        self.label_map = _label_map(self.train_set)
        self.sampler = ResumableBatchSampler(
            len(self.train_set), recipe.batch_size, seed=recipe.seed, rank=self.dist.rank,
            world_size=self.dist.world_size, shuffle=True, drop_last=True, sizes=recipe.batch_image_sizes,
        )
        self.steps_per_epoch = self.sampler.batches_per_epoch // recipe.accum_steps
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"one optimizer step needs {recipe.batch_size * self.dist.world_size * recipe.accum_steps} images "
                f"but the training set has {len(self.train_set)}"
            )
        self.total_steps = self.max_steps or recipe.max_steps or int(math.ceil(recipe.epochs * self.steps_per_epoch))

    def _setup_model(self) -> None:
        """The model of the recipe's config (sized to the class names), its loss and post-processing."""
        self.cfg = get_config(self.recipe.model, **{**self.recipe.model_overrides,
                                                    "num_classes": len(self.class_names), "class_names": self.class_names})
        try:
            self.model: nn.Module = build_model(self.cfg)
        except OSError as e:  # torchvision could not download the ImageNet trunk (offline?)
            if not self.cfg.pretrained_backbone:
                raise
            raise ValueError(
                f"could not load the pretrained {self.cfg.backbone} trunk ({e}); offline, train from scratch with "
                f"--set model.pretrained_backbone=false or point to a local file with "
                f"--set model.pretrained_backbone=/path/to/{self.cfg.backbone}.pth"
            ) from e
        if self.init_from is not None and self.resume_from is None:
            ckpt_io.load_model_weights(self.model, ckpt_io.load_checkpoint(self.init_from),
                                       reset_class_head=self.reset_class_head, source=f"checkpoint {self.init_from}")
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.criterion = build_criterion(self.cfg).to(self.device)
        self.postprocess = build_postprocess(self.cfg)
        self.ema: Optional[ModelEMA] = self._new_ema()

    def _new_ema(self) -> Optional[ModelEMA]:
        """The recipe's moving average of the weights, started from the model as it is now."""
        if not self.recipe.ema_decay:
            return None
        return ModelEMA(self.model, self.recipe.ema_decay, self.recipe.ema_warmup_steps)

    def _setup_optimization(self) -> None:
        """AdamW, the learning-rate schedule over ``total_steps`` and, for fp16, a grad scaler."""
        recipe = self.recipe
        self.optimizer = build_optimizer(self.model, recipe.lr, recipe.lr_backbone, recipe.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, recipe, self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None

    def resume(self, path: Union[str, os.PathLike]) -> None:
        """Continue the run of a checkpoint (or of a folder holding ``checkpoint.pth``) exactly:
        weights, optimizer, schedule, grad scaler, step and this process's RNG states."""
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        state = ckpt_io.load_checkpoint(path, map_location=self.device)
        _check_resumable(state, path, self.recipe, self.total_steps)
        ckpt_io.load_model_weights(self.model, state, source=f"checkpoint {path}", use_ema=False)
        self.ema = self._new_ema()
        if self.ema is not None:
            if state.get("ema"):
                self.ema.load_state_dict(state["ema"])
            else:
                logger.warning("%s holds no weight average: the EMA starts from its weights at step %d",
                               path, int(state["step"]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if int(state.get("total_steps", self.total_steps)) != self.total_steps:
            _relay_schedule(self.scheduler, self.recipe, self.total_steps)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        rng, rank, world_size = state["rng"], self.dist.rank, self.dist.world_size
        if len(rng) != world_size:
            logger.warning("checkpoint has RNG states of %d processes, this run has %d: resume is not exact",
                           len(rng), world_size)
        ckpt_io.restore_rng_state(rng[min(rank, len(rng) - 1)])
        logger.info("resumed from %s at step %d", path, self.step)

    def _wrap_model(self) -> None:
        """``train_model``: the model under DDP (with batch statistics over all processes) and/or compiled."""
        self.train_model: nn.Module = self.model
        if self.dist.world_size > 1:
            # each process holds part of the batch: BatchNorm must normalize with the whole batch's statistics
            self.model = convert_sync_batchnorm(self.model, self.device)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if self.compile:
            self.train_model = torch.compile(self.train_model)

    def _open_log(self) -> None:
        """The run log (records of resumed steps dropped) and the periodic evaluation's loader."""
        log_path = self.output_dir / LOG_NAME
        if self.main and self.resume_from is not None:
            dropped = trim_log(log_path, self.step)  # the steps after the checkpoint are trained again
            if dropped:
                logger.info("dropped %d log records of steps after %d (they are replayed now)", dropped, self.step)
        self.log = JsonlLogger(log_path, enabled=self.main)
        self.val_loader: Optional[DataLoader] = None
        if self.val_set is not None and (self.recipe.eval_every or self.final_eval):
            self.val_loader = make_eval_loader(self.val_set, max(1, self.recipe.batch_size), self.recipe.num_workers,
                                               self.recipe.eval_max_images)

    # ------------------------------------------------------------------------------- steps
    def run(self) -> TrainResult:
        """Train to ``total_steps``, then :meth:`finish`. Raises :class:`TrainingInterrupted` on Ctrl-C."""
        if not self._is_set_up:
            self.setup()
        self._started = time.perf_counter()
        self._log_start()
        self._train_steps()
        return self.finish()

    def _log_start(self) -> None:
        if self.main:
            self.log.log({"kind": "start", "step": self.step, "recipe": self.recipe.to_dict(),
                          "config": self.cfg.to_dict(), "total_steps": self.total_steps,
                          "world_size": self.dist.world_size, "device": str(self.device),
                          "image_sizes": self.sizes_used, "amp": self.amp, "channels_last": self.channels_last,
                          "torch_threads": torch.get_num_threads(),
                          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")})

    def _train_steps(self) -> None:
        """Epochs until ``total_steps``; Ctrl-C stops after the step in progress (see :meth:`step_end`)."""
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.recipe.name}",
                   disable=not (self.progress and self.main), dynamic_ncols=True, unit="step")
        samples = SeededSamples(self.train_set)
        self._interrupt = _DeferredInterrupt(enabled=self.dist.world_size == 1)
        try:
            with self._interrupt:
                while self.step < self.total_steps:
                    self._train_epoch(samples, bar)
        except _StopRequested:
            self.save()
            if self.main:
                self.log.log({"kind": "interrupted", "step": self.step})
            raise TrainingInterrupted(self.step, self.checkpoint_path) from None
        finally:
            bar.close()

    def _train_epoch(self, samples: SeededSamples, bar: Any) -> None:
        """The rest of the current epoch (from the step the run is at), or up to ``total_steps``."""
        recipe = self.recipe
        epoch, step_in_epoch = divmod(self.step, self.steps_per_epoch)
        summary = train_one_epoch(
            self.train_model, self.criterion, self._epoch_loader(samples, epoch, step_in_epoch), self.optimizer,
            self.device, epoch, max_norm=recipe.clip_max_norm, scaler=self.scaler, amp_dtype=self.amp_dtype,
            accum_steps=recipe.accum_steps, scheduler=self.scheduler, start_step=self.step,
            max_steps=self.total_steps, channels_last=self.channels_last, on_step_end=self.step_end, progress=bar,
        )
        if summary["steps"] == 0:
            raise RuntimeError(f"epoch {epoch} made no optimizer step (too few batches for accum_steps)")
        self.step = summary["step"]

    def _epoch_loader(self, samples: SeededSamples, epoch: int, step_in_epoch: int) -> DataLoader:
        """The training loader of ``epoch``, starting at its batch of ``step_in_epoch``."""
        self.sampler.set_epoch(epoch, start_batch=step_in_epoch * self.recipe.accum_steps)
        return DataLoader(
            samples,
            batch_sampler=self.sampler,
            num_workers=self.recipe.num_workers,
            collate_fn=_collate(),
            # the loader's own generator: creating an iterator must not consume global RNG,
            # or a resumed run would diverge from an uninterrupted one
            generator=torch.Generator().manual_seed(self.recipe.seed + epoch),
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_ignore_sigint,
        )

    def step_end(self, info: StepInfo) -> None:
        """After every optimizer step: the log record, the periodic evaluation and checkpoint (not
        at the last step: :meth:`finish` does those), the user's callback, then Ctrl-C."""
        self.step = info.step
        self.train_seconds += info.seconds
        if self.ema is not None:
            self.ema.update(self.model)
        self._window.add(info)
        recipe, last = self.recipe, info.step == self.total_steps
        if recipe.log_every and (info.step % recipe.log_every == 0 or last):
            self._log_train(info)
        if recipe.eval_every and self.val_loader is not None and info.step % recipe.eval_every == 0 and not last:
            self._periodic_eval(info.step)
        if recipe.checkpoint_every and info.step % recipe.checkpoint_every == 0 and not last:
            self.save()
        if self.on_step_end is not None:
            self.on_step_end(info)
        if self._interrupt.requested:  # Ctrl-C: stop here, between steps, where the state is whole
            raise _StopRequested()

    def _log_train(self, info: StepInfo) -> None:
        """One ``"train"`` record: the means over the steps since the last one."""
        window, self._window = self._window, _LogWindow()
        self.log.log({"kind": "train", "step": info.step, "epoch": info.epoch, "lr": info.lr, "lrs": info.lrs,
                      **window.means(),
                      "images_per_s": window.images * self.dist.world_size / max(window.seconds, 1e-9),
                      "train_minutes": self.train_seconds / 60})

    def _periodic_eval(self, step: int) -> None:
        metrics = self.evaluate(self.val_loader)
        if self.main:
            self.log.log({"kind": "eval", "step": step, "train_minutes": self.train_seconds / 60, "metrics": metrics})
            logger.info("step %d: AP %.4f AP50 %.4f", step, metrics.get("AP", float("nan")),
                        metrics.get("AP50", float("nan")))

    # ------------------------------------------------------------------------- save, evaluate
    def save(self, path: Optional[Path] = None) -> None:
        """Write the whole training state at :attr:`step` (default: ``checkpoint.pth``), atomically.

        Every process takes part (each contributes its RNG states); the main process writes.
        """
        rng_states = all_gather_object(ckpt_io.capture_rng_state())
        if self.main:
            ckpt_io.save_checkpoint(
                {
                    "format": ckpt_io.FORMAT,
                    "model": self.model.state_dict(),
                    "config": self.cfg.to_dict(),
                    "class_names": list(self.class_names),
                    "label_map": self.label_map,
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                    "ema": self.ema.state_dict() if self.ema is not None else None,
                    "step": self.step,
                    "epoch": self.step // self.steps_per_epoch,
                    "total_steps": self.total_steps,
                    "rng": rng_states,
                    "recipe": self.recipe.to_dict(),
                    "metrics": {},  # the final model's file carries the metrics
                },
                path if path is not None else self.checkpoint_path,
            )
        barrier()

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation and ``model_final.pth`` use: the weight average if there is one, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self, loader: DataLoader) -> dict[str, float]:
        """COCO metrics of :attr:`eval_model` over ``loader`` (computed on the main process, ``{}`` elsewhere)."""
        metrics: dict[str, float] = {}
        if self.main:
            metrics = engine.evaluate(self.eval_model, self.postprocess, loader, self.val_set, self.device, self.amp_dtype,
                                      self.channels_last, label_to_cat_id=self.label_map)
        barrier()
        return metrics

    def finish(self) -> TrainResult:
        """The last checkpoint, the final evaluation (whole validation set), ``model_final.pth``,
        the ``"end"`` record and ``metrics.json``."""
        train_minutes = self.train_seconds / 60
        self.save()
        metrics: dict[str, float] = {}
        if self.final_eval and self.val_set is not None:
            metrics = self.evaluate(make_eval_loader(self.val_set, max(1, self.recipe.batch_size),
                                                     self.recipe.num_workers, None))
        final_path = self.output_dir / FINAL_NAME
        if self.main:
            self._write_final(final_path, train_minutes, metrics)
        barrier()
        return TrainResult(steps=self.step, minutes=train_minutes, metrics=metrics, output_dir=self.output_dir,
                           checkpoint=self.checkpoint_path, final_model=final_path,
                           log=self.output_dir / LOG_NAME, config=self.cfg.to_dict())

    def _write_final(self, final_path: Path, train_minutes: float, metrics: dict[str, float]) -> None:
        """Main process: the inference checkpoint, the last log records and ``metrics.json``."""
        ckpt_io.save_checkpoint(
            {"format": ckpt_io.FORMAT, "model": self.eval_model.state_dict(), "config": self.cfg.to_dict(),
             "weights": "ema" if self.ema is not None else "model",
             "class_names": list(self.class_names), "label_map": self.label_map, "step": self.step,
             "recipe": self.recipe.to_dict(), "metrics": metrics},
            final_path,
        )
        wall = (time.perf_counter() - self._started) / 60
        self.log.log({"kind": "end", "step": self.step, "train_minutes": train_minutes, "wall_minutes": wall,
                      "metrics": metrics})
        if metrics:
            self.log.log({"kind": "eval", "step": self.step, "train_minutes": train_minutes, "metrics": metrics})
            with open(self.output_dir / METRICS_NAME, "w", encoding="utf-8") as f:
                json.dump({"step": self.step, "train_minutes": train_minutes, **metrics}, f, indent=2)


# ------------------------------------------------------------------------------ helpers
def _class_names(dataset: Dataset) -> list[str]:
    names = getattr(dataset, "class_names", None)
    if not names:
        raise ValueError("the training set has no class_names: cannot size the class head")
    return [str(n) for n in names]


def _label_map(dataset: Dataset) -> Optional[dict[int, int]]:
    m = getattr(dataset, "label_to_cat_id", None)
    return {int(k): int(v) for k, v in m.items()} if m else None


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


class _StopRequested(Exception):
    """Raised between two optimizer steps when Ctrl-C asked training to stop."""


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
