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
from torch import nn

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
    "AllReduceBatchNorm",
    "convert_sync_batchnorm",
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
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available on this machine")
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


class _SumOverProcesses(torch.autograd.Function):
    """``all_reduce(SUM)`` that autograd can differentiate: every process's output is the sum of
    all inputs, so each input's gradient is the sum of all processes' output gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the whole global batch, on the CPU (gloo) too.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors ("SyncBatchNorm expected input tensor to be on
    GPU"), so gloo runs get this subclass: in training under a process group it all-reduces the
    per-channel sums and counts, then the sums of squared deviations from the global mean (two
    passes, as exact as one process's BatchNorm), with differentiable all-reduces
    (:class:`_SumOverProcesses`), so the backward pass sums each statistic's
    gradient over all processes, as ``SyncBatchNorm``'s backward does. Outside a process group
    and in evaluation it is plain BatchNorm. (It is not a ``SyncBatchNorm`` subclass: DDP refuses
    those on the CPU.) Its state dict has the same keys as ``nn.BatchNorm2d``'s.
    """

    def __init__(self, *args: Any, process_group: Optional[Any] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input [B, C, ...], got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self.process_group or dist.group.WORLD
        if not (self.training and is_distributed() and dist.get_world_size(group) > 1):
            return super().forward(input)
        self._check_input_dim(input)
        factor = self._momentum_factor()
        return self._synchronized(input, group, factor)

    def _momentum_factor(self) -> float:
        """The running-statistics update factor of this step (``_BatchNorm.forward``'s rule)."""
        if not self.track_running_stats:
            return 0.0
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            return 1.0 / float(self.num_batches_tracked.item())
        return self.momentum

    def _synchronized(self, input: torch.Tensor, group: Any, factor: float) -> torch.Tensor:
        all_reduce = _SumOverProcesses.apply
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # float32 or better, also under bf16 autocast
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)  # broadcast per channel over [B, C, *spatial]
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dims), count]), group)  # [C + 1]: sums, then the count
        n = sums[-1]
        mean = sums[:-1] / n  # [C]
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims), group) / n  # [C], biased as BatchNorm normalizes
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():  # running variance is unbiased, as in BatchNorm and SyncBatchNorm
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * (n.detach() / (n.detach() - 1).clamp(min=1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out.to(input.dtype)


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm of ``module`` normalize with the statistics of the global batch.

    Under DDP each process sees only its part of the batch; a BatchNorm that computes its
    statistics there normalizes differently from one process on the whole batch, so N processes
    would not train what one process trains. On CUDA this is ``nn.SyncBatchNorm``; on the CPU
    (gloo), where that class refuses to run, :class:`AllReduceBatchNorm`. ``FrozenBatchNorm2d``
    (fixed statistics) is not a BatchNorm here and stays. The parameters and buffers are the same
    objects, so an optimizer built before the conversion keeps working. Returns ``module``
    (converted in place), or the new module when ``module`` itself is a BatchNorm.
    """
    if not _has_batchnorm(module):
        return module
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_to(module, AllReduceBatchNorm)


def _convert_to(module: nn.Module, cls: type) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = _convert_to(child, cls)
        if converted is not child:
            setattr(module, name, converted)
    return module
