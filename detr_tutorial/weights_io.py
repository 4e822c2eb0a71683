"""Reading files of weights safely: the one place the package calls ``torch.load``.

Low in the package (it imports only torch), so the models can read a local backbone file
through it without importing the checkpoint module above them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import torch

__all__ = ["CheckpointError", "read_weights_file"]

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or not one of ours."""


def read_weights_file(
    path: PathLike, map_location: Union[str, torch.device] = "cpu", what: str = "checkpoint"
) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line :class:`CheckpointError` on failure.

    Every file of weights the package reads goes through here (our checkpoints, official DETR
    checkpoints, local backbone weights): ``weights_only`` means a malicious pickle cannot run
    code, and an empty, truncated or foreign file is reported as ``cannot read WHAT PATH: ...``
    instead of a bare ``EOFError`` or an ``UnpicklingError`` with a page of advice.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{what} path is a directory, not a file: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types (EOFError, pickle, zip, RuntimeError)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {what} {path}: {first}") from e
