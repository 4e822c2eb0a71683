"""An exponential moving average (EMA) of a model's weights, the copy RT-DETR evaluates and ships.

The official RT-DETR trains with ``ModelEMA`` (decay 0.9999, 2000 warm-up updates) and its released
files hold the averaged weights. After every optimizer step the average moves toward the model:

    ema = d_t * ema + (1 - d_t) * model,     d_t = decay * (1 - exp(-t / warmup_steps))

where ``t`` counts the updates. The ramp keeps the average close to the model while the model
still changes fast (``d_t`` starts near 0); ``warmup_steps=0`` uses ``decay`` from the first
update. BatchNorm's running statistics are averaged like the weights (floating-point buffers, as
the official does); integer buffers (``num_batches_tracked``) are copied.

The averaging itself is :class:`torch.optim.swa_utils.AveragedModel` with a multi-tensor update;
this class adds the ramp, argument checks and a checkpoint format.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["ModelEMA", "check_ema_settings"]


def check_ema_settings(decay: float, warmup_steps: int) -> None:
    """Raise ``ValueError`` unless ``0 <= decay < 1`` (0: no EMA) and ``warmup_steps`` is an int >= 0."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= float(decay) < 1.0:
        raise ValueError(f"ema_decay must be a number in [0, 1) (0 disables the EMA), got {decay!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"ema_warmup_steps must be an int >= 0, got {warmup_steps!r}")


class ModelEMA:
    """The moving average of ``model``'s parameters and buffers (module docstring).

    Args:
        model: the model being trained (unwrapped: not DDP or compiled). The average starts as a
            copy of it, in eval mode and without gradients.
        decay: the average's decay once warmed up, in (0, 1).
        warmup_steps: the time constant of the ramp, in updates (0: no ramp).

    Call :meth:`update` after every optimizer step; :attr:`module` is the averaged model.
    """

    def __init__(self, model: nn.Module, decay: float, warmup_steps: int = 0) -> None:
        check_ema_settings(decay, warmup_steps)
        if decay == 0:
            raise ValueError("ModelEMA needs decay > 0 (a decay of 0 is the model itself)")
        self.decay, self.warmup_steps = float(decay), int(warmup_steps)
        self._averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self._averaged.module.eval()
        self._averaged.module.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (eval mode)."""
        return self._averaged.module

    @property
    def updates(self) -> int:
        """Optimizer steps averaged so far."""
        return int(self._averaged.n_averaged)

    def decay_at(self, updates: int) -> float:
        """``d_t`` of the ``updates``-th update (1-based): the weight the average keeps."""
        if self.warmup_steps == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-updates / self.warmup_steps))

    @torch.no_grad()
    def _average(self, averaged: list[Tensor], current: list[Tensor], n_averaged: Tensor) -> None:
        # AveragedModel copies the model at the first update (n_averaged = 0) and calls this from the
        # second on, with n_averaged = the updates before this one
        d = self.decay_at(int(n_averaged) + 1)
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked): no average, the model's count
            for a, c in zip(averaged, current):
                a.copy_(c)

    def update(self, model: nn.Module) -> None:
        """Move the average toward ``model`` (the same architecture, after an optimizer step)."""
        self._averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and the update count (what a training checkpoint stores)."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the decay and ramp stay this object's."""
        missing = [k for k in ("module", "updates") if k not in state]
        if missing:
            raise ValueError(f"not an EMA state: it lacks {', '.join(missing)}")
        self.module.load_state_dict(state["module"])
        self._averaged.n_averaged.fill_(int(state["updates"]))
