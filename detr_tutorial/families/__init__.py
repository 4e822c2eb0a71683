"""Model families: each builds its model, its loss and its post-processing from one config.

``DETRConfig.family`` names the family; :data:`FAMILIES` maps each name to its :class:`Family`:

- ``"detr"``: the paper's DETR (:mod:`detr_tutorial.models`, nothing added);
- ``"conditional"``: Conditional DETR's decoder with a dense encoder head, two-stage queries and
  box refinement (:mod:`detr_tutorial.families.conditional`), the book's fast CPU model;
- ``"deformable"``: Deformable DETR, multi-scale deformable attention, box refinement and the
  two-stage variant, equal to the official code (:mod:`detr_tutorial.families.deformable`, its
  loss and post-processing in :mod:`detr_tutorial.families.deformable_loss`);
- ``"rtdetr"``: RT-DETR, PResNet-vd trunk, hybrid encoder, IoU-aware query selection, varifocal
  loss and denoising groups, equal to the official code (:mod:`detr_tutorial.families.rtdetr`).

A family module subclasses or composes the vanilla parts of :mod:`detr_tutorial.models`; those
never import a family. This package sits above ``models``, ``matcher`` and ``criterion`` (it wires
them together) and below ``engine``, ``train`` and ``cli``. Which options belong to which family
is :data:`detr_tutorial.config.FAMILY_OPTIONS`, checked when a config is made.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

from torch import nn

from .. import criterion as _paper_criterion
from ..config import DETRConfig, get_config
from ..criterion import SetCriterion
from ..models.detr import PostProcess, build_detr
from . import conditional, deformable, deformable_loss, rtdetr, rtdetr_loss

__all__ = ["Family", "FAMILIES", "get_family", "build_model", "build_criterion", "build_postprocess"]


@dataclass(frozen=True)
class Family:
    """What a family provides: a builder for its model, its loss and its post-processing."""

    name: str
    description: str
    build_model: Callable[[DETRConfig], nn.Module]
    build_criterion: Callable[[DETRConfig], SetCriterion]
    build_postprocess: Callable[[DETRConfig], nn.Module]


def _postprocess(cfg: DETRConfig) -> PostProcess:
    return PostProcess.for_config(cfg)


FAMILIES: dict[str, Family] = {
    "detr": Family("detr", "DETR (Carion et al., 2020), as the official code", build_detr,
                   _paper_criterion.build_criterion, _postprocess),
    "conditional": Family("conditional", "Conditional DETR's decoder, dense encoder head, two-stage queries",
                          conditional.build_model, conditional.build_criterion, _postprocess),
    "deformable": Family("deformable", "Deformable DETR (Zhu et al., 2021), as the official code",
                         deformable.build_model, deformable_loss.build_criterion, deformable_loss.build_postprocess),
    "rtdetr": Family("rtdetr", "RT-DETR (Zhao et al., 2024), as the official rtdetr_pytorch code",
                     rtdetr.build_model, rtdetr_loss.build_criterion, rtdetr_loss.build_postprocess),
}


def get_family(name_or_cfg: Union[str, DETRConfig]) -> Family:
    """The :class:`Family` of a name or of a config's ``family`` field."""
    name = name_or_cfg.family if isinstance(name_or_cfg, DETRConfig) else name_or_cfg
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def build_model(name_or_cfg: Union[str, DETRConfig] = "detr-r50", **overrides: Any) -> nn.Module:
    """The model of a preset name (``dt.PRESETS``) or a :class:`DETRConfig`, with field overrides.

    >>> model = build_model("detr-tiny", num_classes=5, pretrained_backbone=False)
    """
    cfg = get_config(name_or_cfg, **overrides)
    return get_family(cfg).build_model(cfg)


def build_criterion(cfg: DETRConfig) -> SetCriterion:
    """The matcher and loss of the config's family, with the auxiliary weights filled in."""
    return get_family(cfg).build_criterion(cfg)


def build_postprocess(cfg: DETRConfig) -> nn.Module:
    """Raw outputs -> detections in pixels: softmax scores, or sigmoid ones for a focal-loss model."""
    return get_family(cfg).build_postprocess(cfg)
