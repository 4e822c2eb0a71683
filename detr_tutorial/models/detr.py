"""The DETR model, its prediction heads and the post-processor.

``images -> backbone -> input_proj -> (+ positions) transformer -> class_embed / bbox_embed``.
Each of the ``num_queries`` decoder outputs becomes one prediction: a class distribution over
``num_classes + 1`` labels (the last is "no object", ∅) and a box ``(cx, cy, w, h)`` in ``[0, 1]``.

This is the paper's model in the official code's shape; the later families (Conditional DETR
with two-stage proposals, ...) subclass it in :mod:`detr_tutorial.families`.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import box_ops
from ..config import DETRConfig
from ..nested import NestedTensor, to_nested
from .backbone import build_backbone
from .position_encoding import build_position_encoding
from .transformer import Transformer

__all__ = ["DETR", "MLP", "PostProcess", "build_detr", "build_parts", "build_trunk", "finish_model", "full_precision"]


class MLP(nn.Module):
    """A few linear layers with ReLU in between (DETR's 3-layer box head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DETR(nn.Module):
    """DEtection TRansformer (Carion et al., 2020), as the official ``models/detr.py`` builds it.

    Args:
        backbone: a :class:`Backbone` (any module returning ``(features, mask)`` with ``num_channels``).
        position_embedding: module mapping a mask ``[B, h, w]`` to ``[B, d, h, w]``. The official
            code joins it to the backbone (``Joiner``); here it is its own step, the one chapter 02
            builds, and its parameters (learned encoding) keep their own ``position_embedding.`` keys.
        transformer: a :class:`Transformer` of width ``d``.
        num_classes: real classes; the class head has one more output for "no object".
        num_queries: how many predictions per image (an upper bound on objects per image).
        aux_loss: also return the predictions of every earlier decoder layer.
    """

    def __init__(
        self,
        backbone: nn.Module,
        position_embedding: nn.Module,
        transformer: Transformer,
        num_classes: int,
        num_queries: int,
        aux_loss: bool = True,
    ) -> None:
        super().__init__()
        hidden_dim = transformer.d_model
        self.backbone = backbone
        self.position_embedding = position_embedding
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.transformer = transformer
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss
        self.config: Optional[DETRConfig] = None  # set by the builders: the config it was built from

    def forward(
        self, samples: Union[NestedTensor, Tensor, Sequence[Tensor]], return_attention: bool = False
    ) -> dict[str, Any]:
        """Predict ``num_queries`` (class, box) pairs per image.

        ``samples``: normalized images as ``[B, 3, H, W]``, a list of ``[3, H, W]`` of any sizes
        (padded here, padding masked out), or a :class:`NestedTensor`.

        Returns ``pred_logits [B, Q, C+1]``, ``pred_boxes [B, Q, 4]`` (normalized cxcywh),
        ``aux_outputs`` (one dict per earlier decoder layer, if ``aux_loss``) and, with
        ``return_attention``, ``enc_attn [L_enc, B, heads, hw, hw]``,
        ``dec_attn [L_dec, B, heads, Q, hw]`` and ``feature_shape (h, w)``.
        """
        nested = to_nested(samples)
        features, mask = self.backbone(nested.tensors, nested.mask)  # [B, C, h, w], [B, h, w]
        pos = self.position_embedding(mask).to(features.dtype)  # [B, d, h, w]
        src = self.input_proj(features)  # [B, d, h, w]
        t = self.transformer(src, mask, self.query_embed.weight, pos, return_attention=return_attention)
        hs = t["hs"]  # [L_dec, B, Q, d]
        out = self.set_outputs(self.class_head(hs), self.box_head(hs).sigmoid())
        if return_attention:
            out.update(enc_attn=t["enc_attn"], dec_attn=t["dec_attn"])
            out["feature_shape"] = (int(features.shape[-2]), int(features.shape[-1]))
        return out

    def class_head(self, hs: Tensor) -> Tensor:
        """``class_embed`` in float32 even under autocast: ``[L, B, Q, d]`` -> ``[L, B, Q, C+1]``."""
        with full_precision(hs):
            return self.class_embed(hs.to(self.class_embed.weight.dtype))

    def box_head(self, hs: Tensor) -> Tensor:
        """``bbox_embed``'s box *logits* ``[L, B, Q, 4]`` (before the sigmoid), in float32 even under
        autocast: boxes are sub-pixel coordinates (bfloat16 keeps 8 bits of mantissa, ~0.4%: a
        pixel of error on a 12 px object)."""
        with full_precision(hs):
            return self.bbox_embed(hs.to(self.bbox_embed.layers[0].weight.dtype))

    def set_outputs(self, outputs_class: Tensor, outputs_coord: Tensor) -> dict[str, Any]:
        """The last layer's predictions, and the earlier layers' as ``aux_outputs`` (``aux_loss``)."""
        out: dict[str, Any] = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": c, "pred_boxes": b} for c, b in zip(outputs_class[:-1], outputs_coord[:-1])
            ]
        return out

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script(model)`` compiles: :class:`~detr_tutorial.models.scriptable.ScriptableDETR`,
        this model's own modules chained in TorchScript's subset of Python (the paper's family
        only; another family raises a ``ValueError`` naming it)."""
        from .scriptable import ScriptableDETR

        return ScriptableDETR(self)

    def class_heads(self) -> list[nn.Linear]:
        """The linear layers that score classes (a family with more heads adds its own)."""
        return [self.class_embed]

    def init_class_prior(self, prob: float) -> None:
        """Deformable DETR's prior for the focal loss: every sigmoid class score starts at ``prob``
        (0.01), so the first steps are not spent pushing down the many "no object" queries."""
        bias = -math.log((1.0 - prob) / prob)
        with torch.no_grad():
            for head in self.class_heads():
                head.bias.fill_(bias)

    def reset_class_head(self, num_classes: int, class_names: Optional[Sequence[str]] = None) -> None:
        """Replace the class heads by fresh ones for ``num_classes`` real classes (+ "no object").

        The usual first step of fine-tuning a COCO-trained DETR on another data set: everything
        else (backbone, transformer, box head, queries) is kept.
        """
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        self._replace_class_heads(num_classes)
        self.num_classes = num_classes
        if self.config is not None:
            self.config = self.config.replace(
                num_classes=num_classes, class_names=list(class_names) if class_names else None
            )
            if self.config.focal_loss and self.config.focal_prior_prob is not None:
                self.init_class_prior(self.config.focal_prior_prob)

    def _replace_class_heads(self, num_classes: int) -> None:
        old = self.class_embed
        self.class_embed = nn.Linear(old.in_features, num_classes + 1).to(old.weight.device, old.weight.dtype)


def full_precision(x: Tensor):
    """Switch autocast off (the prediction heads run in float32 whatever the trunk runs in)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


class PostProcess(nn.Module):
    """Turn raw outputs into detections in the pixels of the original images.

    For each query: the most likely real class (∅ excluded) and its probability as the score, and
    the box converted to absolute ``(x1, y1, x2, y2)``. No NMS: each object is predicted by one
    query, duplicates are what the set loss trains away. ``score_mode="sigmoid"`` is for models
    trained with the focal loss (independent per-class probabilities, no ∅ output used).
    """

    def __init__(self, score_mode: str = "softmax") -> None:
        super().__init__()
        if score_mode not in ("softmax", "sigmoid"):
            raise ValueError(f"score_mode must be 'softmax' or 'sigmoid', got {score_mode!r}")
        self.score_mode = score_mode

    @classmethod
    def for_config(cls, config: Optional[DETRConfig]) -> "PostProcess":
        """Sigmoid scores for a model trained with the focal loss, softmax otherwise (and for ``None``)."""
        return cls("sigmoid" if config is not None and config.focal_loss else "softmax")

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], target_sizes: Tensor) -> list[dict[str, Tensor]]:
        """``target_sizes [B, 2]`` holds each original image's ``(h, w)``."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        target_sizes = torch.as_tensor(target_sizes, device=boxes.device)
        if target_sizes.dim() != 2 or target_sizes.shape != (logits.shape[0], 2):
            raise ValueError(f"target_sizes must be [B, 2] = [{logits.shape[0]}, 2] as (h, w), got {list(target_sizes.shape)}")
        if self.score_mode == "softmax":
            prob = logits.softmax(-1)[..., :-1]  # drop the "no object" column
        else:
            prob = logits[..., :-1].sigmoid()
        scores, labels = prob.max(-1)  # [B, Q]
        img_h, img_w = target_sizes.to(boxes.dtype).unbind(1)
        scale = torch.stack([img_w, img_h, img_w, img_h], dim=1)  # [B, 4]
        xyxy = box_ops.box_cxcywh_to_xyxy(boxes) * scale[:, None, :]  # [B, Q, 4] pixels
        return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, xyxy)]


def build_detr(cfg: DETRConfig) -> DETR:
    """The paper's DETR for a config of the ``"detr"`` family (``dt.build_model`` dispatches here)."""
    backbone, position_embedding, transformer = build_parts(cfg, Transformer)
    model = DETR(backbone, position_embedding, transformer, cfg.num_classes, cfg.num_queries, cfg.aux_loss)
    return finish_model(model, cfg)


def build_parts(cfg: DETRConfig, transformer_class: type = Transformer) -> tuple[nn.Module, nn.Module, Transformer]:
    """The trunk, the position encoding and the transformer a config describes, created in the
    official order (trunk, transformer, encoding: a seed gives the same weights in every family)."""
    backbone = build_trunk(cfg)
    transformer = transformer_class(
        d_model=cfg.hidden_dim,
        nhead=cfg.nheads,
        num_encoder_layers=cfg.enc_layers,
        num_decoder_layers=cfg.dec_layers,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        normalize_before=cfg.pre_norm,
    )
    return backbone, build_position_encoding(cfg.position_embedding, cfg.hidden_dim), transformer


def build_trunk(cfg: DETRConfig) -> nn.Module:
    """The CNN trunk a config names (:func:`~detr_tutorial.models.backbone.build_backbone`)."""
    return build_backbone(
        cfg.backbone,
        weights=None if cfg.pretrained_backbone is False else cfg.pretrained_backbone,
        norm=cfg.backbone_norm,
        train_backbone=cfg.train_backbone,
        freeze_stem=cfg.freeze_stem,
        dilation=cfg.dilation,
        stride=cfg.backbone_stride,
    )


def finish_model(model: DETR, cfg: DETRConfig) -> DETR:
    """What every builder does last: remember the config and set the focal loss's class prior."""
    model.config = cfg
    if cfg.focal_loss and cfg.focal_prior_prob is not None:
        model.init_class_prior(cfg.focal_prior_prob)
    return model
