"""Checkpoints: written atomically, read safely, resumed exactly.

A training checkpoint is a plain dict that :func:`torch.load` can read with
``weights_only=True`` (no pickled classes, so opening a checkpoint from the internet cannot run
code): tensors, dicts, lists, strings and numbers only. Configurations are stored as dicts.

Layout (``format`` = :data:`FORMAT`)::

    {"format": "detr_tutorial/1",
     "model": state_dict, "config": DETRConfig.to_dict(), "class_names": [...],
     "label_map": {category_id: label} or None,
     # training checkpoints only:
     "optimizer": ..., "scheduler": ..., "scaler": ... or None,
     "step": int, "epoch": int, "step_in_epoch": int,
     "rng": [per-rank RNG states], "recipe": {...}, "metrics": {...}}

Writing goes to a temporary file in the same directory followed by :func:`os.replace`, which is
atomic on POSIX and Windows: a crash (or SIGKILL) in the middle of a write leaves the previous
checkpoint untouched, and the next training run in the folder removes the temporary file it left
(:func:`remove_stale_temporaries`). A failed write (disk full, read-only folder) raises
:class:`CheckpointError` naming the file. Every weights file the package reads goes through
:func:`read_weights_file` (``weights_only=True``, one-line errors).
"""
from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from .weights_io import CheckpointError, read_weights_file  # noqa: F401 (re-exported)

__all__ = [
    "FORMAT",
    "CheckpointError",
    "ClassHeadMismatchError",
    "save_checkpoint",
    "load_checkpoint",
    "read_weights_file",
    "checkpoint_weights",
    "remove_stale_temporaries",
    "capture_rng_state",
    "restore_rng_state",
    "load_model_weights",
    "model_from_checkpoint",
    "unwrap_model",
    "export_model",
]

logger = logging.getLogger(__name__)

FORMAT = "detr_tutorial/1"
PathLike = Union[str, os.PathLike]


class ClassHeadMismatchError(CheckpointError):
    """The checkpoint's class head was trained for another number of classes."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model under ``DistributedDataParallel`` and/or ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def save_checkpoint(state: Mapping[str, Any], path: PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder + ``os.replace``).

    The temporary file lives next to the target so the final rename never crosses file systems
    (a cross-device rename is a copy, which is not atomic). It is fsynced before the rename so a
    power loss cannot leave a renamed but empty file. On any failure the temporary file is removed
    and the previous checkpoint at ``path`` (if any) stays as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a read-only or missing folder, a file where the folder should be
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}") from e
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as e:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):  # disk full, quota, I/O error: the previous checkpoint is intact
            raise CheckpointError(
                f"cannot write checkpoint {path}: {e.strerror or e} (the previous checkpoint, if any, is unchanged)"
            ) from e
        raise
    return path


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Delete the temporary files that interrupted :func:`save_checkpoint` calls left in ``folder``.

    A process killed between creating its temporary file and renaming it cannot clean up; the
    next run in the same folder does (called when training starts). Returns the removed paths.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(".*.pth.*.tmp"):
        try:
            tmp.unlink()
        except FileNotFoundError:
            continue
        removed.append(tmp)
    if removed:
        logger.info("removed %d temporary file(s) of interrupted checkpoint writes in %s", len(removed), folder)
    return removed


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` with one clear line.

    Accepts our format and bare state dicts (``{"model": state_dict}`` or a state dict itself, as
    the official repository and ``torch.save(model.state_dict())`` write them).
    """
    path = Path(path)
    ckpt = read_weights_file(path, map_location)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    if "model" not in ckpt:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            ckpt = {"model": ckpt}  # a bare state dict
        else:
            raise CheckpointError(f"checkpoint {path} has no 'model' entry (keys: {sorted(ckpt)[:8]})")
    return ckpt


# --------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (CPU) and CUDA generator states, in ``weights_only``-loadable types."""
    py_version, py_state, py_gauss = random.getstate()
    np_key, np_state, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "key": str(np_key),
            "state": torch.from_numpy(np.asarray(np_state, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            logger.warning(
                "checkpoint has CUDA RNG states for %d devices, this machine has %d: not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )


# ------------------------------------------------------------------------------ model weights
def _class_head_key(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    for key in ("class_embed.weight",):
        if key in state_dict:
            return key
    matches = [k for k in state_dict if k.endswith("class_embed.weight")]
    return matches[0] if matches else None


def _num_logits(state_dict: Mapping[str, torch.Tensor]) -> Optional[int]:
    key = _class_head_key(state_dict)
    return None if key is None else int(state_dict[key].shape[0])


def _class_head_prefixes(model: nn.Module) -> Optional[tuple[str, ...]]:
    """State-dict prefixes of everything that depends on the class set, read off the model: its
    ``class_heads()`` and RT-DETR's denoising label embedding. ``None`` for a model without
    ``class_heads`` (then the key names decide)."""
    if not hasattr(model, "class_heads"):
        return None
    names = {id(module): name for name, module in model.named_modules()}
    prefixes = [names[id(head)] + "." for head in model.class_heads() if id(head) in names]
    for name, module in model.named_modules():
        if name.endswith("denoising_class_embed"):
            prefixes.append(name + ".")
    return tuple(prefixes) or None


def _num_classes(model: nn.Module, state: Mapping[str, Any], config: Optional[Mapping[str, Any]]) -> tuple[Optional[int], Optional[int]]:
    """``(checkpoint's, model's)`` number of real classes: from the configs where there are some,
    else from the class head's rows (``num_classes + 1``, DETR's "no object" included)."""
    ours_cfg = getattr(model, "config", None)
    ours = getattr(ours_cfg, "num_classes", None)
    theirs = config.get("num_classes") if isinstance(config, Mapping) else None
    if ours is None or theirs is None:
        theirs_logits, ours_logits = _num_logits(state), _num_logits(model.state_dict())
        if theirs is None and theirs_logits is not None:
            theirs = theirs_logits - 1
        if ours is None and ours_logits is not None:
            ours = ours_logits - 1
    return theirs, ours


def checkpoint_weights(checkpoint: Mapping[str, Any], use_ema: bool = True) -> Mapping[str, torch.Tensor]:
    """The state dict to load from a checkpoint: with ``use_ema``, a training checkpoint's moving
    average of the weights (``checkpoint["ema"]["module"]``, the weights its evaluations scored)
    when it holds one, else ``checkpoint["model"]`` (a final model file already holds the average
    there, marked ``"weights": "ema"``)."""
    ema = checkpoint.get("ema")
    if use_ema and isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping):
        return ema["module"]
    return checkpoint["model"]


def load_model_weights(
    model: nn.Module,
    checkpoint: Mapping[str, Any],
    reset_class_head: bool = False,
    source: str = "checkpoint",
    use_ema: bool = True,
) -> None:
    """Load the checkpoint's weights into ``model`` (strictly), checking the class head first.

    The weights are :func:`checkpoint_weights`: the moving average of a training checkpoint that
    has one, unless ``use_ema=False`` (resuming a run loads the raw weights and the average apart).

    A checkpoint trained for another number of classes is refused with
    :class:`ClassHeadMismatchError`, whose message says how to proceed. With
    ``reset_class_head=True`` every weight except the class head is loaded and the model keeps its
    own, freshly initialized class head — the usual way to fine-tune on a new class set.
    """
    model = unwrap_model(model)
    state = checkpoint_weights(checkpoint, use_ema)
    ours = model.state_dict()
    head_key = _class_head_key(ours)
    theirs_classes, ours_classes = _num_classes(model, state, checkpoint.get("config"))
    if theirs_classes is not None and ours_classes is not None and theirs_classes != ours_classes:
        if not reset_class_head:
            raise ClassHeadMismatchError(
                f"{source} was trained for {theirs_classes} classes but the model has "
                f"{ours_classes}: build the model with num_classes={theirs_classes}, load the "
                f"weights, then call model.reset_class_head({ours_classes}) to fine-tune on the new "
                f"classes (command line: --reset-class-head)"
            )
    if reset_class_head:
        heads = _class_head_prefixes(model)
        if heads is None:
            prefix = head_key.rsplit("weight", 1)[0] if head_key else "class_embed."
            # the class heads: class_embed, and the dense encoder head's enc_class_embed
            heads = (prefix, prefix[: -len("class_embed.")] + "enc_class_embed.")
        state = {k: v for k, v in state.items() if not k.startswith(heads)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(heads)]
        if missing or unexpected:
            raise CheckpointError(
                f"{source} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        logger.info("loaded %s without its class heads (%s kept freshly initialized)", source, ", ".join(heads))
        return
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(f"{source} does not fit the model ({detail[:300]})") from e


def model_from_checkpoint(
    checkpoint: Union[PathLike, Mapping[str, Any]],
    map_location: Union[str, torch.device] = "cpu",
    **overrides: Any,
) -> nn.Module:
    """Rebuild the model a checkpoint was trained with (from its stored config) and load its weights.

    ``overrides`` change config fields before building; ``num_classes`` different from the
    checkpoint's is refused (see :func:`load_model_weights`).
    """
    from .config import DETRConfig
    from .families import build_model  # local import: checkpoint I/O alone needs no model code

    ckpt = load_checkpoint(checkpoint, map_location) if not isinstance(checkpoint, Mapping) else checkpoint
    source = f"checkpoint {checkpoint}" if not isinstance(checkpoint, Mapping) else "checkpoint"
    if not ckpt.get("config"):
        raise CheckpointError(
            f"{source} has no model config (a bare state dict?): build the model yourself and use "
            f"load_model_weights(model, ckpt)"
        )
    cfg = DETRConfig.from_dict(dict(ckpt["config"]))
    # the trunk's weights come from the checkpoint: never download or read ImageNet weights here
    # (keeping the stem frozen exactly as it was trained, which "pretrained" used to decide)
    freeze_stem = cfg.freeze_stem if cfg.freeze_stem is not None else bool(cfg.pretrained_backbone)
    cfg = cfg.replace(pretrained_backbone=False, freeze_stem=freeze_stem, **overrides)
    model = build_model(cfg)
    load_model_weights(model, ckpt, source=source)
    return model


def export_model(
    src: Union[PathLike, Mapping[str, Any]],
    dst: PathLike,
    half: bool = True,
    keep: tuple[str, ...] = ("format", "config", "class_names", "label_map", "step", "recipe", "metrics", "weights"),
) -> Path:
    """Write a small inference checkpoint: the weights (float16 if ``half``) and the metadata.

    The weights are :func:`checkpoint_weights`: a training checkpoint's moving average when it
    holds one (the file is then marked ``"weights": "ema"``).

    Optimizer, scheduler and RNG states are dropped. Loading converts the weights back to the
    model's float32 (``load_state_dict`` copies across dtypes), so a float16 file halves the size
    at the cost of rounding each weight to 11 significant bits.

    ``src`` must describe its model (a ``config``, as training and ``convert`` write): a bare
    state dict is refused with :class:`CheckpointError`, since a file labelled ``detr_tutorial/1``
    that :func:`model_from_checkpoint` cannot rebuild would only fail later, somewhere else.
    """
    if not isinstance(src, (Mapping, str, os.PathLike)):
        raise TypeError(f"export_model expects a checkpoint path or dict, got {type(src).__name__}")
    ckpt = load_checkpoint(src) if not isinstance(src, Mapping) else src
    source = f"checkpoint {src}" if not isinstance(src, Mapping) else "the checkpoint"
    state = checkpoint_weights(ckpt) if isinstance(ckpt.get("model"), Mapping) else None
    weights_ok = isinstance(state, Mapping) and all(isinstance(v, torch.Tensor) for v in state.values())
    if not weights_ok:
        raise CheckpointError(f"{source} has no 'model' state dict of tensors: nothing to export")
    if not ckpt.get("config"):
        raise CheckpointError(
            f"{source} has no model config (a bare state dict?), so the exported file could not be rebuilt: "
            f"load the weights into a model and save a checkpoint with its config (convert does this)"
        )
    weights = {
        k: (v.half() if half and v.is_floating_point() else v) for k, v in state.items()
    }
    out: dict[str, Any] = {k: ckpt[k] for k in keep if k in ckpt}
    out["model"] = weights
    if state is not ckpt["model"]:
        out["weights"] = "ema"
    out.setdefault("format", FORMAT)
    return save_checkpoint(out, dst)


#: The model the book uses offline: the ``shapes-shipped`` recipe trained on the shapes data set
#: (``make shipped-model``), exported with :func:`export_model`; its training log lies beside it
#: (``shapes_detr_log.jsonl``).
SHIPPED_MODEL = Path(__file__).resolve().parent / "checkpoints" / "shapes_detr.pth"


def load_shipped_model(map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """The shipped shapes model (3 classes: circle, rectangle, triangle), in eval mode."""
    if not SHIPPED_MODEL.is_file():
        raise FileNotFoundError(f"{SHIPPED_MODEL} is missing: reinstall the package (it ships the file)")
    return model_from_checkpoint(SHIPPED_MODEL, map_location).eval()
