"""Multi-process training helpers: process group set-up from ``torchrun``, rank queries, reductions.

Everything works unchanged in a single process (no process group): ranks are 0, the world has
size 1 and reductions return their input. ``torchrun --nproc_per_node N -m detr_tutorial train``
sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them and chooses
NCCL for CUDA devices and gloo for the CPU.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "init_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "reduce_mean_dict",
    "all_gather_object",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_distributed(device: Optional[str] = None) -> DistInfo:
    """Join the process group ``torchrun`` describes (if any) and pick this process's device.

    ``device``: ``"cuda"``, ``"cpu"``, ``"cuda:1"``... or ``None`` for CUDA when available. Under
    ``torchrun`` each process on a CUDA machine takes GPU ``LOCAL_RANK``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but CUDA is not available on this machine")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        logger.info("process %d of %d joined the %s process group", dist.get_rank(), world_size, backend)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if is_distributed() else torch.cuda.current_device())
    return DistInfo(rank=get_rank(), world_size=get_world_size(), local_rank=local_rank, device=dev)


def reduce_mean_dict(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average scalar tensors over all processes (one all-reduce for the whole dict)."""
    if not is_distributed() or not values:
        return {k: v.detach() for k, v in values.items()}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    dist.all_reduce(stacked)
    stacked /= get_world_size()
    return dict(zip(keys, stacked))


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (a one-element list without a process group)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
