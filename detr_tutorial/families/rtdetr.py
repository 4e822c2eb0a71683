"""The rtdetr family: RT-DETR (Zhao et al., 2024, "DETRs Beat YOLOs on Real-time Object Detection"),
equal to the official ``lyuwenyu/RT-DETR`` ``rtdetr_pytorch`` code.

``images -> backbone (PResNet-vd, strides 8/16/32) -> encoder (HybridEncoder: AIFI + CCFM) ->
decoder (IoU-aware query selection, deformable decoder with box refinement) -> boxes``:

- :mod:`detr_tutorial.models.presnet`: the trunk (``backbone.*``); the package's ``smallcnn`` and
  torchvision ResNets can stand in (their ``stages()``), for CPU recipes;
- :mod:`detr_tutorial.families.rtdetr_encoder`: ``encoder.*``;
- :mod:`detr_tutorial.families.rtdetr_decoder`: ``decoder.*``, with the denoising groups of
  :mod:`detr_tutorial.families.rtdetr_denoising` in training;
- :mod:`detr_tutorial.families.rtdetr_loss`: the varifocal criterion and the top-k post-processing.

**Input convention.** The official model takes RGB in ``[0, 1]``; the package feeds every model
ImageNet-normalized images (``dt.predict``, the data pipeline, the CLI). This model takes the
package's input and maps it back to ``[0, 1]`` inside (``pixel_mean``/``pixel_std``, non-persistent
buffers, so the state dict stays the official one); ``pixels=True`` takes ``[0, 1]`` images as
they are (the official convention, used by the reference tests). One conversion in the model
keeps ``dt.predict``, ``dt.train`` and the CLI right for every family with no family switch.

**Padding.** RT-DETR has no padding mask, and its FPN needs sides divisible by 32. Images of a
batch are padded (bottom-right) to a common size that is a multiple of 32, padding pixels black;
the predicted boxes, relative to that canvas, are rescaled to each image's own size (the
package's box convention), and the denoising targets the other way. An unpadded batch whose sides
are multiples of 32 (the official case) is not touched at all.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..config import DETRConfig
from ..image_io import IMAGENET_MEAN, IMAGENET_STD
from ..models.detr import build_trunk
from ..models.ms_deform_attn import splat_sampling_points
from ..models.presnet import build_presnet
from ..nested import NestedTensor, to_nested
from .rtdetr_decoder import RTDETRTransformer
from .rtdetr_encoder import HybridEncoder

__all__ = ["RTDETR", "build_model"]

Samples = Union[NestedTensor, Tensor, Sequence[Tensor]]


def _scale_boxes(out: dict[str, Any], scale: Tensor) -> dict[str, Any]:
    """Every ``pred_boxes [B, Q, 4]`` of an output dict (and its aux lists) times ``scale [B, 1, 4]``."""
    new = dict(out)
    if "pred_boxes" in new:
        new["pred_boxes"] = new["pred_boxes"] * scale
    for key in ("aux_outputs", "dn_aux_outputs"):
        if key in new:
            new[key] = [_scale_boxes(o, scale) for o in new[key]]
    return new


class RTDETR(nn.Module):
    """RT-DETR: ``backbone``, ``encoder``, ``decoder`` as the official ``RTDETR`` (see the module docstring).

    Outputs (``forward``): ``pred_logits [B, Q, C]`` (sigmoid logits), ``pred_boxes [B, Q, 4]`` and,
    in training, ``aux_outputs`` (decoder layers ``0 .. L-2``, then the encoder's top-k selection)
    and, when ``targets`` are given and ``num_denoising > 0``, ``dn_aux_outputs`` and ``dn_meta``.
    """

    #: the training engine passes the targets to ``forward`` (the denoising queries are made from them)
    trains_with_targets = True

    def __init__(self, backbone: nn.Module, encoder: HybridEncoder, decoder: RTDETRTransformer) -> None:
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.decoder = decoder
        self.num_classes = decoder.num_classes
        self.num_queries = decoder.num_queries
        self.aux_loss = decoder.aux_loss
        self.config: Optional[DETRConfig] = None
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def pixels(self, samples: Samples, pixels: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        """``[B, 3, H', W']`` RGB in ``[0, 1]`` (sides multiples of 32) and ``scale [B, 1, 4]``
        (canvas-relative -> image-relative boxes), ``None`` when nothing was padded."""
        nested = to_nested(samples)
        x, mask = nested.tensors, nested.mask
        if not pixels:
            x = x * self.pixel_std.to(x.dtype) + self.pixel_mean.to(x.dtype)
        h, w = x.shape[-2:]
        hp, wp = (h + 31) // 32 * 32, (w + 31) // 32 * 32  # integer ops: a traced program saves them
        # A plain tensor has no padding: its mask is not read (``mask.any()`` is data-dependent,
        # which torch.export cannot trace). Under torch.export the sides are symbolic and the
        # multiple-of-32 shortcut is not known statically: the general path pads by zero or more
        # pixels and scales by one or more, the same numbers, without a guard on the image size.
        unpadded = isinstance(samples, Tensor) or not bool(mask.any())
        if unpadded and statically_known_true(hp == h) and statically_known_true(wp == w):
            return x, None
        if not unpadded:  # zero the padding of the smaller images (a batch of one size has none)
            x = x.masked_fill(mask[:, None], 0.0)
        x = F.pad(x, (0, wp - w, 0, hp - h))
        heights = (~mask[:, :, 0]).sum(1).to(x.dtype)  # [B]
        widths = (~mask[:, 0, :]).sum(1).to(x.dtype)
        sx, sy = wp / widths, hp / heights
        return x, torch.stack([sx, sy, sx, sy], -1)[:, None, :]

    def forward_with_intermediates(self, samples: Samples, targets: Optional[Sequence[dict]] = None,
                                   pixels: bool = False, keep_attention: bool = False
                                   ) -> tuple[dict[str, Any], dict[str, Any]]:
        """:meth:`forward`'s outputs and the stages: ``images`` (the ``[0, 1]`` canvas),
        ``backbone_features``, ``encoder_outputs``, ``enc_attn`` and ``enc_grid`` (AIFI's weights and
        grid, see :meth:`HybridEncoder.forward_with_attention`; None unless ``keep_attention``) and
        the decoder's (``memory``, ``enc_outputs_class``, ``target``, ``ref_unact``, ``enc_topk_*``,
        ``decoder_layer_outputs``, ``decoder_sampling``, ``dn``)."""
        x, scale = self.pixels(samples, pixels)
        if scale is not None and targets is not None:
            targets = [dict(t, boxes=t["boxes"] / s[0].to(t["boxes"])) for t, s in zip(targets, scale)]
        mask = torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.bool, device=x.device)
        feats = [f for f, _ in self.backbone.stages(x, mask)]
        enc_attn = enc_grid = None
        if keep_attention:
            enc, enc_attn, enc_grid = self.encoder.forward_with_attention(feats)
        else:
            enc = self.encoder(feats)
        out, inter = self.decoder.forward_with_intermediates(enc, targets)
        if scale is not None:
            out = _scale_boxes(out, scale)
        return out, dict(inter, images=x, scale=scale, backbone_features=feats, encoder_outputs=enc,
                         enc_attn=enc_attn, enc_grid=enc_grid)

    def forward(self, samples: Samples, targets: Optional[Sequence[dict]] = None, pixels: bool = False,
                return_attention: bool = False) -> dict[str, Any]:
        """ImageNet-normalized images (``pixels=True``: RGB in ``[0, 1]``) -> the outputs above.

        ``return_attention=True`` adds what the attention figures draw (the other outputs are the
        same tensors, bit for bit):

        - ``enc_attn [L_enc, B, heads, hw, hw]``: AIFI's self-attention over the ``h x w`` cells of
          the coarsest level (the only level with attention in the encoder), rows summing to 1, and
          ``enc_feature_shape`` ``(h, w)``;
        - ``dec_sampling_locations [L_dec, B, Q, M, L, P, 2]`` and ``dec_attention_weights
          [L_dec, B, Q, M, L, P]``: each decoder layer's deformable cross-attention, ``P`` points per
          head ``m`` and level ``l``, ``(x, y)`` relative to the *image* as ``pred_boxes`` are (a padded
          canvas is undone; a point on the padding lies beyond 1); the weights sum to 1 over the
          ``L * P`` points of a query and head;
        - ``spatial_shapes``: ``(H_l, W_l)`` of each level;
        - ``dec_attn [L_dec, B, M, Q, h0 * w0]`` on ``feature_shape`` ``(h0, w0)``, the finest level's
          grid: the points' weights splatted bilinearly onto that grid laid over the image
          (:func:`~detr_tutorial.models.ms_deform_attn.splat_sampling_points`), so the heatmaps of
          dense DETR models can show where a query put its weight. It is not a softmax over cells:
          a map sums to 1 minus the weight of points within half a cell of the border or outside.

        The decoder queries are the ``Q`` matching queries (training-time denoising queries are
        left out). In eval mode only the layers up to ``eval_idx`` run, so ``L_dec`` counts those.
        """
        out, inter = self.forward_with_intermediates(samples, targets, pixels, keep_attention=return_attention)
        if not return_attention:
            return out
        q = self.num_queries
        locations = torch.stack([loc[:, -q:] for loc, _ in inter["decoder_sampling"]])  # [L_dec, B, Q, M, L, P, 2]
        weights = torch.stack([w[:, -q:] for _, w in inter["decoder_sampling"]])  # [L_dec, B, Q, M, L, P]
        if inter["scale"] is not None:  # canvas-relative -> image-relative (x, y), as the boxes
            locations = locations * inter["scale"][None, :, None, None, None, :, :2].to(locations.dtype)
        grid = tuple(inter["spatial_shapes"][0])
        n_layers, b, _, m, nl, p, _ = locations.shape
        dense = splat_sampling_points(locations.reshape(n_layers, b, q, m, nl * p, 2),
                                      weights.reshape(n_layers, b, q, m, nl * p), grid)  # [L_dec, B, Q, M, h0*w0]
        return dict(out, enc_attn=inter["enc_attn"], enc_feature_shape=tuple(inter["enc_grid"]),
                    dec_sampling_locations=locations, dec_attention_weights=weights,
                    spatial_shapes=[tuple(hw) for hw in inter["spatial_shapes"]],
                    dec_attn=dense.transpose(2, 3), feature_shape=grid)

    # -- class heads (fine-tuning on other classes) -------------------------------------------------
    def class_heads(self) -> list[nn.Linear]:
        """The encoder's and every decoder layer's score heads."""
        return [self.decoder.enc_score_head, *self.decoder.dec_score_head]

    def init_class_prior(self, prob: float) -> None:
        """Every sigmoid class score starts at ``prob`` (the official 0.01)."""
        with torch.no_grad():
            for head in self.class_heads():
                head.bias.fill_(-math.log((1.0 - prob) / prob))

    def reset_class_head(self, num_classes: int, class_names: Optional[Sequence[str]] = None) -> None:
        """Fresh score heads (and denoising label embedding) for ``num_classes`` real classes."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        dec = self.decoder
        ref = dec.enc_score_head.weight

        def fresh() -> nn.Linear:
            return nn.Linear(dec.hidden_dim, num_classes).to(ref.device, ref.dtype)

        dec.enc_score_head = fresh()
        dec.dec_score_head = nn.ModuleList(fresh() for _ in dec.dec_score_head)
        if hasattr(dec, "denoising_class_embed"):
            dec.denoising_class_embed = nn.Embedding(num_classes + 1, dec.hidden_dim, padding_idx=num_classes).to(ref.device)
        dec.num_classes = self.num_classes = num_classes
        self.init_class_prior(0.01)
        if self.config is not None:
            self.config = self.config.replace(num_classes=num_classes, class_names=list(class_names) if class_names else None)

    def __prepare_scriptable__(self) -> nn.Module:
        from ..models.scriptable import scripting_blockers, scripting_error

        raise scripting_error(scripting_blockers(self))


def _trunk(cfg: DETRConfig) -> nn.Module:
    if cfg.backbone.startswith("presnet"):
        weights = None if cfg.pretrained_backbone is False else cfg.pretrained_backbone
        return build_presnet(cfg.backbone, weights, norm=cfg.backbone_norm, train_backbone=cfg.train_backbone,
                             freeze_stem=bool(cfg.freeze_stem))
    return build_trunk(cfg)


def build_model(cfg: DETRConfig) -> RTDETR:
    """The rtdetr family's model for a config (the official ``RTDETR(PResNet, HybridEncoder, RTDETRTransformer)``)."""
    backbone = _trunk(cfg)
    channels, strides = list(backbone.stage_channels), list(backbone.stage_strides)
    encoder = HybridEncoder(
        in_channels=channels, feat_strides=strides, hidden_dim=cfg.hidden_dim, nhead=cfg.enc_nheads,
        dim_feedforward=cfg.enc_dim_feedforward, dropout=cfg.dropout, num_encoder_layers=cfg.enc_layers,
        expansion=cfg.expansion, depth_mult=cfg.depth_mult, eval_spatial_size=cfg.eval_spatial_size,
    )
    decoder = RTDETRTransformer(
        num_classes=cfg.num_classes, hidden_dim=cfg.hidden_dim, num_queries=cfg.num_queries,
        feat_channels=[cfg.hidden_dim] * len(channels), num_levels=len(channels), num_decoder_points=cfg.dec_n_points,
        nhead=cfg.dec_nheads, num_decoder_layers=cfg.dec_layers, dim_feedforward=cfg.dec_dim_feedforward,
        dropout=cfg.dropout, num_denoising=cfg.num_denoising, label_noise_ratio=cfg.label_noise_ratio,
        box_noise_scale=cfg.box_noise_scale, eval_spatial_size=cfg.eval_spatial_size, feat_strides=strides,
        eval_idx=cfg.eval_idx, aux_loss=cfg.aux_loss, anchor_pixels=cfg.anchor_pixels,
    )
    model = RTDETR(backbone, encoder, decoder)
    model.config = cfg
    return model
