"""The DETR model, its prediction heads, the post-processor and a ``predict`` helper.

``images -> backbone -> input_proj -> (+ positions) transformer -> class_embed / bbox_embed``.
Each of the ``num_queries`` decoder outputs becomes one prediction: a class distribution over
``num_classes + 1`` labels (the last is "no object", ∅) and a box ``(cx, cy, w, h)`` in ``[0, 1]``.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import box_ops
from ..config import DETRConfig, get_config
from ..nested import NestedTensor, to_nested
from .backbone import build_backbone
from .position_encoding import build_position_encoding
from .transformer import MLP, Transformer

__all__ = ["DETR", "MLP", "PostProcess", "build_model", "predict", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DETR(nn.Module):
    """DEtection TRansformer (Carion et al., 2020).

    Args:
        backbone: a :class:`Backbone` (any module returning ``(features, mask)`` with ``num_channels``;
            ``cell_units`` also reads its ``stride``).
        position_embedding: module mapping a mask ``[B, h, w]`` to ``[B, d, h, w]``.
        transformer: a :class:`Transformer` of width ``d``.
        num_classes: real classes; the class head has one more output for "no object".
        num_queries: how many predictions per image (an upper bound on objects per image).
        aux_loss: also return the predictions of every earlier decoder layer.
        query_groups: Group DETR (Chen et al., 2022): train ``query_groups`` independent sets of
            ``num_queries`` queries that cannot see each other in the decoder's self-attention,
            each matched one-to-one to the targets on its own. More queries learn from every
            image, which speeds training up; in ``eval()`` mode only the first group runs, so the
            model predicts ``num_queries`` boxes exactly as a plain DETR does (no NMS needed).
        reference_points: Conditional DETR: each query learns a point ``sigmoid(MLP(query))`` and
            predicts its box centre as an offset from it (in logit space). With a conditional
            decoder (``Transformer(conditional=True)``) the point also steers the cross-attention.
        encoder_aux: add the dense head on the encoder cells (``enc_class_embed``,
            ``enc_bbox_embed``); its predictions appear as ``enc_outputs`` in training mode only
            (with ``two_stage`` it also picks the proposals at inference).
        box_refine: with a conditional decoder, each layer looks at (and offsets from) the box
            centres of the layer before instead of the learned points.
        two_stage: Deformable DETR's two-stage variant, with DINO's "mixed" queries: the dense
            encoder head (``encoder_aux`` is required) scores every memory cell, and the
            ``num_queries`` best cells' boxes (detached) become the queries' reference *boxes*;
            each query predicts its box as an offset from its reference box (centre and size,
            in logit space) and looks near its centre. The content queries stay learned
            (``query_embed``). The encoder head is then used at inference too; the output is still
            one set of ``num_queries`` predictions matched one-to-one, with no NMS.
        cell_units: the encoder head predicts box sizes relative to its cell's size (in logit
            space) and places cells at their exact centres in each image's pixels. Without it
            the head must guess each image's size to state a box as a fraction of it, and the
            only cue is the padding the batch adds around the image: trained on padded batches,
            such a head drew 128-px validation images' boxes ~10% too small (they come unpadded,
            as only the largest training images did). It also measures the map in the trunk's
            pixels (``backbone.stride``): cells whose centre lies outside the image are padding
            and the sine positions are normalized by the image's true extent in cells (see
            :func:`cell_geometry`), so boxes and positions do not depend on whether an image's
            side is a multiple of the stride.
        fine_features: the decoder's cross-attention also reads the trunk's previous stage (twice
            the resolution; the backbone must be built with ``fine_features=True``), projected
            by ``fine_proj`` and told apart by a learned ``fine_level_embed`` added to its
            positions. The encoder still works on the coarse map; the decoder gets the detail
            that tight boxes need (the idea of Deformable DETR's multi-scale features, with plain
            attention).
    """

    def __init__(
        self,
        backbone: nn.Module,
        position_embedding: nn.Module,
        transformer: Transformer,
        num_classes: int,
        num_queries: int,
        aux_loss: bool = True,
        config: Optional[DETRConfig] = None,
        query_groups: int = 1,
        reference_points: bool = False,
        encoder_aux: bool = False,
        box_refine: bool = False,
        two_stage: bool = False,
        cell_units: bool = False,
        fine_features: bool = False,
    ) -> None:
        super().__init__()
        hidden_dim = transformer.d_model
        self.backbone = backbone
        self.position_embedding = position_embedding
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.transformer = transformer
        self.fine_proj = self.fine_level_embed = None
        if fine_features:
            if not getattr(backbone, "fine_features", False):
                raise ValueError("fine_features needs a backbone built with fine_features=True")
            self.fine_proj = nn.Conv2d(backbone.fine_channels, hidden_dim, kernel_size=1)
            self.fine_level_embed = nn.Parameter(torch.zeros(hidden_dim))
        if query_groups < 1:
            raise ValueError(f"query_groups must be >= 1, got {query_groups}")
        self.query_embed = nn.Embedding(num_queries * query_groups, hidden_dim)  # group g: rows g*Q..(g+1)*Q-1
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        # Conditional DETR's reference points: each query's own point s = sigmoid(MLP(query)) in
        # [0, 1]^2; the box centre is predicted as an offset from it (in logit space)
        if two_stage and not (encoder_aux and transformer.decoder.conditional and query_groups == 1):
            raise ValueError("two_stage needs the encoder head (encoder_aux), a conditional decoder and one query group")
        self.reference_points = MLP(hidden_dim, hidden_dim, 2, 2) if reference_points and not two_stage else None
        # A dense head on the encoder memory (one-to-many supervision of every cell
        # near an object's centre, as Co-DETR's auxiliary heads); inference uses it only to pick
        # the two-stage proposals.
        self.enc_class_embed = nn.Linear(hidden_dim, num_classes) if encoder_aux else None
        self.enc_bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3) if encoder_aux else None
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss
        self.query_groups = query_groups
        self.box_refine = box_refine
        self.two_stage = two_stage
        self.cell_units = cell_units
        self.config = config

    def _queries(self) -> tuple[Tensor, Optional[Tensor], int]:
        """The object queries of this pass ``[G*Q, d]``, their self-attention mask and ``G``."""
        groups = self.query_groups if self.training else 1
        queries = self.query_embed.weight[: self.num_queries * groups]
        if groups == 1:
            return queries, None, 1
        group_of = torch.arange(self.num_queries * groups, device=queries.device) // self.num_queries
        return queries, group_of[:, None] != group_of[None, :], groups  # True = other group: blocked

    def forward(
        self, samples: Union[NestedTensor, Tensor, Sequence[Tensor]], return_attention: bool = False
    ) -> dict[str, Any]:
        """Predict ``num_queries`` (class, box) pairs per image.

        ``samples``: normalized images as ``[B, 3, H, W]``, a list of ``[3, H, W]`` of any sizes
        (padded here, padding masked out), or a :class:`NestedTensor`.

        Returns ``pred_logits [B, Q, C+1]``, ``pred_boxes [B, Q, 4]`` (normalized cxcywh),
        ``aux_outputs`` (one dict per earlier decoder layer, if ``aux_loss``), in training with
        ``query_groups = G > 1`` ``G*Q`` predictions and ``query_groups: G``, and, with
        ``return_attention``, ``enc_attn [L_enc, B, heads, hw, hw]``,
        ``dec_attn [L_dec, B, heads, Q, hw]`` and ``feature_shape (h, w)``.
        """
        nested = to_nested(samples)
        features, mask, *finer = self.backbone(nested.tensors, nested.mask)  # [B, C, h, w], [B, h, w]
        if self.cell_units:
            mask, extent = cell_geometry(nested.mask, features.shape[-2:], self.backbone.stride)
            pos = self.position_embedding(mask, extent).to(features.dtype)  # [B, d, h, w]
        else:
            pos = self.position_embedding(mask).to(features.dtype)  # [B, d, h, w]
        src = self.input_proj(features)  # [B, d, h, w]
        fine = None
        if self.fine_proj is not None:
            fine_features, fine_mask = finer  # [B, C', h', w'], [B, h', w']
            fine_pos = self.position_embedding(fine_mask).to(fine_features.dtype)  # [B, d, h', w']
            fine_pos = fine_pos + self.fine_level_embed.to(fine_pos.dtype)[None, :, None, None]
            fine = (self.fine_proj(fine_features), fine_mask, fine_pos)
        queries, query_mask, groups = self._queries()  # [G*Q, d]
        ref = None
        if self.reference_points is not None:
            ref = self.reference_points(queries).sigmoid().clamp(1e-4, 1 - 1e-4)  # [G*Q, 2] as (x, y)
        encoder_out: dict[str, Tensor] = {}
        if self.two_stage:

            def choose(memory: Tensor, key_padding_mask: Tensor) -> Tensor:  # memory [B, hw, d]
                b, d, h, w = src.shape
                cells = memory.transpose(1, 2).reshape(b, d, h, w)
                encoder_out.update(self._encoder_predictions(cells, mask, nested.mask))
                return self._proposals(encoder_out)  # [B, Q, 4] reference boxes

            ref = choose
        t = self.transformer(
            src, mask, queries, pos, return_attention=return_attention, query_mask=query_mask, reference=ref,
            refine=self._box_head if self.box_refine else None, fine=fine,
        )
        hs = t["hs"]  # [L_dec, B, G*Q, d]
        with _full_precision(hs):
            outputs_class = self.class_embed(hs.to(self.class_embed.weight.dtype))  # [L_dec, B, Q, C+1]
        box_logits = self._box_head(hs)  # [L_dec, B, G*Q, 4]
        if ref is not None:
            # each layer's centres are offsets from the points its queries looked at: the learned
            # reference points, or with box refinement the previous layer's centres
            layer_refs = t["references"] if "references" in t else ref  # [L_dec, B, G*Q, 2 or 4] or [G*Q, 2]
            r = layer_refs.shape[-1]  # 2: centres offset from points; 4: whole boxes from proposals
            anchor = torch.logit(layer_refs.to(box_logits.dtype))
            box_logits = torch.cat([box_logits[..., :r] + anchor, box_logits[..., r:]], dim=-1)
        outputs_coord = box_logits.sigmoid()  # [L_dec, B, G*Q, 4]
        out: dict[str, Any] = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": c, "pred_boxes": b} for c, b in zip(outputs_class[:-1], outputs_coord[:-1])
            ]
        if groups > 1:
            out["query_groups"] = groups
        if self.enc_class_embed is not None and self.training:
            out["enc_outputs"] = encoder_out or self._encoder_predictions(t["memory"], mask, nested.mask)
        if return_attention:
            if "references" in t:
                out["reference_points"] = t["references"][..., :2]  # [L_dec, B, Q, 2] (x, y): where each layer looked
            out["enc_attn"] = t["enc_attn"]
            out["dec_attn"] = t["dec_attn"]
            out["feature_shape"] = (int(features.shape[-2]), int(features.shape[-1]))
            if fine is not None:
                out["dec_attn_fine"] = t["dec_attn_fine"]  # [L_dec, B, heads, Q, h'w']
                out["fine_shape"] = (int(fine[0].shape[-2]), int(fine[0].shape[-1]))
        return out

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script(model)`` compiles: :class:`~detr_tutorial.models.scriptable.ScriptableDETR`,
        this model's own modules chained in TorchScript's subset of Python (paper's family only;
        it raises a ``ValueError`` naming the options that do not script)."""
        from .scriptable import ScriptableDETR

        return ScriptableDETR(self)

    def _box_head(self, hs: Tensor) -> Tensor:
        """``bbox_embed`` in float32 even under autocast: its outputs are sub-pixel coordinates
        (bfloat16 keeps 8 bits of mantissa, ~0.4%: a pixel of error on a 12 px object)."""
        with _full_precision(hs):
            return self.bbox_embed(hs.to(self.bbox_embed.layers[0].weight.dtype))

    def _encoder_predictions(self, memory: Tensor, mask: Tensor, image_mask: Tensor) -> dict[str, Tensor]:
        """The dense head on every memory cell: class logits and a box around the cell's centre.

        Cell centres are in the normalized coordinates of each image's valid area (padding cells
        get centres beyond 1 and are masked out of the loss); ``mask [B, h, w]`` marks the padding
        cells, ``image_mask [B, H, W]`` the padding pixels. With ``cell_units`` the centres are
        exact for images whose side is not a multiple of the stride, and the box sizes are
        predicted relative to the cell's size (in logit space): a box is then measured in the
        features' own pixels, not guessed from how much of the padded batch canvas the image fills.
        """
        b, d, h, w = memory.shape
        cells = memory.flatten(2).transpose(1, 2).to(self.enc_class_embed.weight.dtype)  # [B, hw, d]
        if self.cell_units:
            # valid extent in cells, fractional: e.g. 120 px at stride 16 = 7.5 cells. The stride
            # is the trunk's, never canvas / map side: a 117 px canvas gives a map of ceil(117/16)
            # = 8 cells, and 117 / 8 = 14.6 px would shrink every box by 9 %.
            stride = float(self.backbone.stride)
            valid_h = (~image_mask[:, :, 0]).sum(1).clamp(min=1).to(cells.dtype) / stride  # [B]
            valid_w = (~image_mask[:, 0, :]).sum(1).clamp(min=1).to(cells.dtype) / stride  # [B]
        else:
            valid_h = (~mask[:, :, 0]).sum(1).clamp(min=1).to(cells.dtype)  # [B] rows of the image itself
            valid_w = (~mask[:, 0, :]).sum(1).clamp(min=1).to(cells.dtype)  # [B]
        ys, xs = torch.meshgrid(
            torch.arange(h, device=cells.device, dtype=cells.dtype) + 0.5,
            torch.arange(w, device=cells.device, dtype=cells.dtype) + 0.5,
            indexing="ij",
        )
        centres = torch.stack(
            [xs.flatten()[None] / valid_w[:, None], ys.flatten()[None] / valid_h[:, None]], dim=-1
        )  # [B, hw, 2] as (x, y)
        with _full_precision(cells):  # float32 heads, as for the decoder's boxes
            offsets = self.enc_bbox_embed(cells)  # [B, hw, 4]
            logits = self.enc_class_embed(cells)  # [B, hw, C]
        cell_size = torch.stack([1.0 / valid_w, 1.0 / valid_h], dim=-1)  # [B, 2]
        anchor = torch.logit(centres.clamp(1e-4, 1 - 1e-4))
        sizes = offsets[..., 2:]
        if self.cell_units:
            sizes = sizes + torch.logit(cell_size.clamp(1e-4, 1 - 1e-4))[:, None, :]  # a cell-sized box at 0
        boxes = torch.cat([offsets[..., :2] + anchor, sizes], dim=-1).sigmoid()
        return {
            "pred_logits": logits,  # [B, hw, C] (sigmoid scores, no "no object")
            "pred_boxes": boxes,  # [B, hw, 4] normalized cxcywh
            "centres": centres,
            "cell_size": cell_size,
            "padding": mask.flatten(1),  # [B, hw]
        }

    def _proposals(self, encoder_out: dict[str, Tensor]) -> Tensor:
        """Two-stage: the boxes of the ``num_queries`` highest-scoring memory cells ``[B, Q, 4]``.

        A cell's score is its best class probability; padding cells are never chosen. The boxes
        are detached: the decoder refines them, the dense loss alone trains the encoder head.
        """
        logits, boxes = encoder_out["pred_logits"], encoder_out["pred_boxes"]  # [B, hw, C], [B, hw, 4]
        if logits.shape[1] < self.num_queries:
            raise ValueError(
                f"two-stage DETR picks its {self.num_queries} queries among the feature map's cells, but this "
                f"batch's map has only {logits.shape[1]}: use larger images or fewer queries"
            )
        scores = logits.detach().max(-1).values.masked_fill(encoder_out["padding"], float("-inf"))  # [B, hw]
        top = scores.topk(self.num_queries, dim=1).indices  # [B, Q]
        chosen = torch.gather(boxes.detach(), 1, top[..., None].expand(-1, -1, 4))  # [B, Q, 4]
        return chosen.clamp(1e-4, 1 - 1e-4)

    def reset_class_head(self, num_classes: int, class_names: Optional[Sequence[str]] = None) -> None:
        """Replace ``class_embed`` by a fresh head for ``num_classes`` real classes (+ "no object").

        The usual first step of fine-tuning a COCO-trained DETR on another data set: everything
        else (backbone, transformer, box head, queries) is kept.
        """
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        old = self.class_embed
        self.class_embed = nn.Linear(old.in_features, num_classes + 1).to(old.weight.device, old.weight.dtype)
        if self.enc_class_embed is not None:  # the dense encoder head predicts the classes too
            enc = self.enc_class_embed
            self.enc_class_embed = nn.Linear(enc.in_features, num_classes).to(enc.weight.device, enc.weight.dtype)
        self.num_classes = num_classes
        if self.config is not None:
            self.config = self.config.replace(
                num_classes=num_classes, class_names=list(class_names) if class_names else None
            )
            _init_class_prior(self, self.config)


def cell_geometry(image_mask: Tensor, size: Sequence[int], stride: int) -> tuple[Tensor, Tensor]:
    """Which feature cells belong to the image, and the image's extent in cells.

    ``image_mask [B, H, W]`` (True = padding), ``size`` the map's ``(h, w)``, ``stride`` the
    trunk's. A cell belongs to the image when its centre ``(i + 0.5) * stride`` lies on a valid
    pixel: a 129 px side gives 9 cells, the 9th covering one pixel row, and that sliver is padding
    here (the official nearest-neighbour mask keeps it, and a model trained on 128 px images has
    never seen such a cell). Returns ``mask [B, h, w]`` and ``extent [B, 2]``, the valid height and
    width divided by the stride (fractional: 120 px at stride 16 is 7.5 cells).
    """
    h, w = size[0], size[1]  # no int(): under torch.export these are symbolic sizes, int() would fix them
    big_h, big_w = image_mask.shape[-2:]
    rows = ((torch.arange(h, device=image_mask.device) + 0.5) * stride).long()  # [h] centre pixel rows
    cols = ((torch.arange(w, device=image_mask.device) + 0.5) * stride).long()  # [w]
    inside = (rows < big_h)[:, None] & (cols < big_w)[None, :]  # [h, w]: centre on the canvas
    sampled = image_mask[:, rows.clamp(max=big_h - 1)][:, :, cols.clamp(max=big_w - 1)]  # [B, h, w]
    mask = sampled | ~inside[None]
    mask[:, 0, 0] = image_mask[:, 0, 0]  # an image smaller than half a cell keeps its one cell
    valid_h = (~image_mask[:, :, 0]).sum(1).clamp(min=1)  # [B] pixel rows of the image itself
    valid_w = (~image_mask[:, 0, :]).sum(1).clamp(min=1)  # [B]
    extent = torch.stack([valid_h, valid_w], dim=-1).float() / stride  # [B, 2] in cells
    return mask, extent


def _full_precision(x: Tensor):
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


def build_model(name_or_cfg: Union[str, DETRConfig] = "detr-r50", **overrides: Any) -> DETR:
    """Build a DETR from a preset name (``dt.PRESETS``) or a :class:`DETRConfig`, with overrides.

    >>> model = build_model("detr-tiny", num_classes=5, pretrained_backbone=False)
    """
    cfg = get_config(name_or_cfg, **overrides)
    backbone = build_backbone(
        cfg.backbone,
        weights=None if cfg.pretrained_backbone is False else cfg.pretrained_backbone,
        norm=cfg.backbone_norm,
        train_backbone=cfg.train_backbone,
        freeze_stem=cfg.freeze_stem,
        dilation=cfg.dilation,
        stride=cfg.backbone_stride,
        fine_features=cfg.fine_features,
    )
    transformer = Transformer(
        d_model=cfg.hidden_dim,
        nhead=cfg.nheads,
        num_encoder_layers=cfg.enc_layers,
        num_decoder_layers=cfg.dec_layers,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        normalize_before=cfg.pre_norm,
        position_at_input=cfg.position_at_input,
        conditional=cfg.conditional_spatial_query,
    )
    position_embedding = build_position_encoding(cfg.position_embedding, cfg.hidden_dim)
    model = DETR(
        backbone, position_embedding, transformer, cfg.num_classes, cfg.num_queries, cfg.aux_loss,
        config=cfg, query_groups=cfg.query_groups, reference_points=cfg.reference_points,
        encoder_aux=cfg.encoder_aux_loss, box_refine=cfg.box_refine, two_stage=cfg.two_stage,
        cell_units=cfg.encoder_cell_units,
        fine_features=cfg.fine_features,
    )
    _init_class_prior(model, cfg)
    return model


def _init_class_prior(model: DETR, cfg: DETRConfig) -> None:
    """Deformable DETR's prior: every sigmoid class score starts at ``focal_prior_prob`` (0.01), so
    the first steps' focal loss is not dominated by the many queries that should say "no object"."""
    if not (cfg.focal_loss and cfg.focal_prior_prob is not None):
        return
    bias = -math.log((1.0 - cfg.focal_prior_prob) / cfg.focal_prior_prob)
    with torch.no_grad():
        model.class_embed.bias.fill_(bias)
        if model.enc_class_embed is not None:
            model.enc_class_embed.bias.fill_(bias)


def _to_image_tensor(image: Any) -> Tensor:
    """PIL image or ``[3, H, W]`` tensor in ``[0, 1]`` (uint8 also accepted) -> float ``[3, H, W]``."""
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"each image must be [3, H, W], got {list(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float() / 255.0
        if not image.is_floating_point():
            raise TypeError(f"image tensors must be float in [0, 1] or uint8, got {image.dtype}")
        if image.min() < 0 or image.max() > 1:
            raise ValueError("float image tensors must hold values in [0, 1] (unnormalized); normalize is done here")
        return image
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow is a dependency
        raise TypeError("PIL is needed to read PIL images") from exc
    if isinstance(image, Image.Image):
        from torchvision.transforms.functional import pil_to_tensor

        from ..image_io import exif_orientation, to_rgb

        if exif_orientation(image) != 1:
            warnings.warn(
                f"this image has EXIF orientation {exif_orientation(image)}: predicting on its stored pixels, "
                "and the boxes refer to them; pass PIL.ImageOps.exif_transpose(image) (or an image read by "
                "detr_tutorial.image_io.open_image) to predict on the image as viewers show it",
                stacklevel=3,
            )
        return pil_to_tensor(to_rgb(image)).float() / 255.0  # 16-bit and float modes rescaled, not clipped
    raise TypeError(f"images must be PIL images or [3, H, W] tensors, got {type(image).__name__}")


@torch.no_grad()
def predict(
    model: DETR,
    images: Union[Any, Sequence[Any]],
    threshold: float = 0.7,
    device: Union[None, str, torch.device] = None,
) -> list[dict[str, Any]]:
    """Detect objects in PIL images or ``[3, H, W]`` tensors in ``[0, 1]``.

    Images are normalized here and batched at their own sizes (padding masked). Returns one dict
    per image with ``boxes`` (xyxy pixels), ``scores``, ``labels``, ``query`` (which query made
    each detection) and, when the model knows them, ``names``; only scores ``>= threshold`` kept.

    A PIL image is taken as its pixels, 16-bit and float modes rescaled to ``[0, 1]`` (not
    clipped); one whose EXIF orientation says it is shown turned gets a warning, as the boxes
    then refer to the stored, unturned pixels (``detr_tutorial.image_io.open_image`` reads a file
    upright). Tensors with NaN or infinite pixels are a ``ValueError``, float64 a ``TypeError``.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a score in [0, 1], got {threshold!r}")  # NaN fails too
    single = not isinstance(images, (list, tuple))
    batch = [_to_image_tensor(im) for im in ([images] if single else images)]
    if device is None:
        device = next(model.parameters()).device
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    normalized = [((im - mean) / std).to(device) for im in batch]
    was_training = model.training
    model.eval()
    try:
        outputs = model(normalized)
    finally:
        model.train(was_training)
    sizes = torch.tensor([im.shape[-2:] for im in batch], device=device)
    focal = bool(model.config is not None and model.config.focal_loss)
    results = PostProcess("sigmoid" if focal else "softmax")(outputs, sizes)
    names = model.config.class_names if model.config is not None else None
    detections = []
    for r in results:
        keep = r["scores"] >= threshold
        det: dict[str, Any] = {k: v[keep].cpu() for k, v in r.items()}
        det["query"] = torch.nonzero(keep).flatten().cpu()
        if names is not None:
            det["names"] = [names[int(i)] for i in det["labels"]]
        detections.append(det)
    return detections
