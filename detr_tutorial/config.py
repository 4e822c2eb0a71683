"""Model configuration: one dataclass and the named presets.

Field names follow the official DETR command-line options (``hidden_dim``, ``nheads``,
``enc_layers``, ``dec_layers``, ``dim_feedforward``, ``num_queries``, ``dropout``,
``position_embedding``, ``dilation``, ``pre_norm``, ``aux_loss``, ``set_cost_*``,
``*_loss_coef``, ``eos_coef``) so that readers can move between the two code bases.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Union

__all__ = ["DETRConfig", "PRESETS", "get_config", "FAMILIES", "FAMILY_OPTIONS"]

_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "smallcnn",
              "presnet18", "presnet34", "presnet50", "presnet101")  # presnet*: the rtdetr family's ResNet-vd

#: The model families (``DETRConfig.family``), built by :mod:`detr_tutorial.families`.
FAMILIES = ("detr", "conditional", "deformable", "rtdetr")

#: The options of each family, with their defaults: a config of a family an option does not
#: belong to must leave it at the default (``two_stage=True`` on the paper's DETR is an error, not
#: ignored). An option may belong to several families (``two_stage``), with the same default.
FAMILY_OPTIONS: dict[str, dict[str, Any]] = {
    "detr": {},
    "conditional": {
        "position_at_input": False,
        "two_stage": False,
        "box_refine": False,
        "encoder_aux_loss": False,
        "encoder_cell_units": False,
        "encoder_aux_coef": 1.0,
        "encoder_aux_radius": 0.25,
    },
    "deformable": {  # the official Deformable DETR option names
        "num_feature_levels": 4,
        "enc_n_points": 4,
        "dec_n_points": 4,
        "with_box_refine": False,
        "two_stage": False,
        "exact_extent": False,
    },
    "rtdetr": {  # the official RT-DETR option names (HybridEncoder / RTDETRTransformer / postprocessor)
        "enc_nheads": 8,
        "enc_dim_feedforward": 1024,
        "expansion": 1.0,
        "depth_mult": 1.0,
        "dec_nheads": 8,
        "dec_dim_feedforward": 1024,
        "dec_n_points": 4,
        "eval_spatial_size": None,
        "eval_idx": -1,
        "num_top_queries": 300,
        "num_denoising": 100,
        "label_noise_ratio": 0.5,
        "box_noise_scale": 1.0,
        "vfl_alpha": 0.75,
        "anchor_pixels": None,
        "decoder_aux_coef": 1.0,
    },
}

# Field kinds for the type and range checks of DETRConfig.validate (consistency checks follow them).
_POSITIVE_INTS = ("num_classes", "hidden_dim", "nheads", "dec_layers", "dim_feedforward", "num_queries",
                  "backbone_stride", "num_feature_levels", "enc_n_points", "dec_n_points",
                  "enc_nheads", "enc_dim_feedforward", "dec_nheads", "dec_dim_feedforward", "num_top_queries")
_NON_NEGATIVE_INTS = ("enc_layers", "num_denoising")
_BOOLS = ("train_backbone", "dilation", "pre_norm", "position_at_input", "aux_loss", "box_refine", "two_stage",
          "encoder_aux_loss", "encoder_cell_units", "focal_loss", "with_box_refine", "exact_extent")
_NON_NEGATIVE_NUMBERS = ("set_cost_class", "set_cost_bbox", "set_cost_giou", "ce_loss_coef", "bbox_loss_coef",
                         "giou_loss_coef", "encoder_aux_coef", "decoder_aux_coef", "focal_gamma", "box_noise_scale")
_STRINGS = ("family", "backbone", "backbone_norm", "position_embedding")


def _is_int(value: Any) -> bool:
    """A Python int that is not a bool (``True`` is an ``int`` to Python, never a size here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: (fields, test, what the message says they must be), checked in this order
_FIELD_RULES = (
    (_POSITIVE_INTS, lambda v: _is_int(v) and v >= 1, "a positive int"),
    (_NON_NEGATIVE_INTS, lambda v: _is_int(v) and v >= 0, "a non-negative int"),
    (_BOOLS, lambda v: isinstance(v, bool), "True or False"),
    (_NON_NEGATIVE_NUMBERS, lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    (_STRINGS, lambda v: isinstance(v, str), "a str"),
)


def _check_field_types(cfg: "DETRConfig") -> None:
    """Type and range of every field on its own: ``ValueError`` naming the field and the value.

    A wrong type is reported as a ``ValueError`` too (not ``TypeError``): to the user who wrote
    ``--set model.aux_loss=yes`` or ``num_classes=True`` it is one more wrong value for the field.
    """
    for names, valid, what in _FIELD_RULES:
        for name in names:
            value = getattr(cfg, name)
            if not valid(value):
                raise ValueError(f"{name} must be {what}, got {value!r}")
    weights = cfg.pretrained_backbone
    if not (isinstance(weights, bool) or (isinstance(weights, str) and weights)):
        raise ValueError(f"pretrained_backbone must be True, False or a weights file path, got {weights!r}")
    if cfg.freeze_stem is not None and not isinstance(cfg.freeze_stem, bool):
        raise ValueError(f"freeze_stem must be None, True or False, got {cfg.freeze_stem!r}")
    if cfg.class_names is not None and (
        not isinstance(cfg.class_names, (list, tuple)) or not all(isinstance(n, str) for n in cfg.class_names)
    ):
        raise ValueError(f"class_names must be None or a list of str, got {cfg.class_names!r}")
    if not _is_number(cfg.dropout) or not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {cfg.dropout!r}")
    if not _is_number(cfg.eos_coef) or cfg.eos_coef <= 0:
        raise ValueError(f"eos_coef must be a finite number > 0, got {cfg.eos_coef!r}")
    if not _is_number(cfg.focal_alpha) or not 0.0 <= cfg.focal_alpha <= 1.0:
        raise ValueError(f"focal_alpha must be a number in [0, 1], got {cfg.focal_alpha!r}")
    if not _is_number(cfg.encoder_aux_radius) or cfg.encoder_aux_radius <= 0:
        raise ValueError(f"encoder_aux_radius must be a finite number > 0, got {cfg.encoder_aux_radius!r}")
    _check_rtdetr_types(cfg)
    if cfg.focal_prior_prob is not None and not (_is_number(cfg.focal_prior_prob) and 0.0 < cfg.focal_prior_prob < 1.0):
        raise ValueError(f"focal_prior_prob must be None or a number in (0, 1), got {cfg.focal_prior_prob!r}")


def _check_rtdetr_types(cfg: "DETRConfig") -> None:
    """The rtdetr family's fields that are not plain ints or numbers >= 0."""
    for name in ("expansion", "depth_mult"):
        value = getattr(cfg, name)
        if not _is_number(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    for name in ("label_noise_ratio", "vfl_alpha"):
        value = getattr(cfg, name)
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not _is_int(cfg.eval_idx):
        raise ValueError(f"eval_idx must be an int (a decoder layer, -1: the last), got {cfg.eval_idx!r}")
    if cfg.anchor_pixels is not None and (not _is_number(cfg.anchor_pixels) or cfg.anchor_pixels <= 0):
        raise ValueError(f"anchor_pixels must be None or a finite number of pixels > 0, got {cfg.anchor_pixels!r}")
    size = cfg.eval_spatial_size
    if size is not None and not (isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(v) and v >= 32 for v in size)):
        raise ValueError(f"eval_spatial_size must be None or (h, w), two ints >= 32, got {size!r}")


@dataclass
class DETRConfig:
    """Everything needed to build a DETR model, its matcher and its loss.

    Attributes are grouped as in the paper: backbone, transformer, heads, matching and loss.
    ``num_classes`` counts real classes only; the class head has ``num_classes + 1`` outputs, the
    last one being "no object" (∅). ``family`` chooses the model family; the options under
    "family options" belong to the family named in :data:`FAMILY_OPTIONS` and must keep their
    defaults in any other.
    """

    family: str = "detr"  # "detr" (the paper's), "conditional" (Conditional DETR), "deformable" or "rtdetr"
    num_classes: int = 91
    class_names: Optional[list[str]] = None
    # backbone
    backbone: str = "resnet50"
    pretrained_backbone: Union[bool, str] = False  # True: torchvision ImageNet weights; str: local file
    backbone_norm: str = "frozen_bn"  # "frozen_bn" (pretrained trunks) or "bn" (trunks trained from scratch)
    train_backbone: bool = True
    freeze_stem: Optional[bool] = None  # None: freeze conv1+layer1 iff the trunk is pretrained (official)
    dilation: bool = False  # DC5: dilate the last stage, stride 16 instead of 32
    backbone_stride: int = 32  # 16 stops a ResNet after layer3 (a cheaper stride-16 map); smallcnn: 8 or 16
    # transformer
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pre_norm: bool = False
    position_embedding: str = "sine"  # or "learned"
    # heads
    num_queries: int = 100
    aux_loss: bool = True
    # family options of "conditional" (FAMILY_OPTIONS): Conditional DETR's decoder is the family itself
    position_at_input: bool = False  # also add the positions to the encoder's input (the paper's Table 3)
    two_stage: bool = False  # queries start from the encoder's best boxes (conditional: needs encoder_aux_loss)
    box_refine: bool = False  # each decoder layer looks at (and offsets from) the previous layer's boxes
    encoder_aux_loss: bool = False  # the dense encoder head and its loss (training-only unless two_stage)
    encoder_cell_units: bool = False  # the dense head's box sizes are relative to its cell's (exact centres too)
    encoder_aux_coef: float = 1.0  # its weight, relative to ce/bbox/giou_loss_coef
    encoder_aux_radius: float = 0.25  # a cell is positive when its centre is within radius * box size of the object's
    # family options of "deformable" (Deformable DETR's official option names; two_stage too)
    num_feature_levels: int = 4  # levels: the trunk's stride 8/16/32 maps plus stride-2 convs of the last
    enc_n_points: int = 4  # sampling points per head and level in the encoder's deformable attention
    dec_n_points: int = 4  # ... and in the decoder's cross-attention
    with_box_refine: bool = False  # iterative box refinement: each decoder layer refines the previous boxes
    # each level's valid extent is the image's size in cells, fractional (146 px at stride 8: 18.25 of
    # 19 cells), not the count of cells it touches (19, the official rule): exact geometry at sizes that
    # are not multiples of the strides (the official rule stretches it, by 4 % at 146 px)
    exact_extent: bool = False
    # family options of "rtdetr" (RT-DETR's official option names; dec_n_points too). This family reads
    # hidden_dim, enc_layers (AIFI layers), dec_layers, num_queries, dropout, but not nheads/dim_feedforward
    # (the official code has one of each per part: enc_* for the AIFI layer, dec_* for the decoder)
    enc_nheads: int = 8  # AIFI's attention heads
    enc_dim_feedforward: int = 1024  # AIFI's feed-forward width
    expansion: float = 1.0  # CSPRepLayer width: hidden channels = expansion * hidden_dim
    depth_mult: float = 1.0  # RepVGG blocks per CSPRepLayer: round(3 * depth_mult)
    dec_nheads: int = 8  # decoder heads (self- and deformable cross-attention)
    dec_dim_feedforward: int = 1024  # decoder feed-forward width
    eval_spatial_size: Optional[tuple[int, int]] = None  # (h, w): anchors and AIFI positions precomputed for it
    eval_idx: int = -1  # the decoder layer whose predictions inference returns
    num_top_queries: int = 300  # post-processing: the best (query, class) pairs kept per image
    num_denoising: int = 100  # training: denoising queries (positive + negative, all groups); 0: none
    label_noise_ratio: float = 0.5  # a denoising label is replaced with probability ratio / 2
    box_noise_scale: float = 1.0  # corner noise, in half box sizes
    vfl_alpha: float = 0.75  # varifocal loss: weight of the negatives (focal_alpha is the matcher's)
    # the anchors' side at the finest level in pixels, doubling per level (8: 8, 16, 32 px at strides 8,
    # 16, 32), so a cell's anchor is the same size in pixels on every canvas; None: the official
    # 0.05 * 2^l of the canvas (32 px at 640 px, but 4.8 px at 96 px and 9.6 px at 192 px)
    anchor_pixels: Optional[float] = None
    # the weight of the decoder layers before the last (their matched and denoising terms), relative to
    # the last layer's; 1: the official equal weights. Below 1 the last layer has more to correct.
    decoder_aux_coef: float = 1.0
    # matching costs (HungarianMatcher) and loss weights (SetCriterion)
    set_cost_class: float = 1.0
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    ce_loss_coef: float = 1.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    eos_coef: float = 0.1
    focal_loss: bool = False  # sigmoid focal classification (Deformable DETR) instead of softmax CE
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    focal_prior_prob: Optional[float] = None  # focal only: start every class score at this probability

    def __post_init__(self) -> None:
        if isinstance(self.eval_spatial_size, list):  # from JSON / to_dict: one spelling, a tuple
            self.eval_spatial_size = tuple(self.eval_spatial_size)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and its value: each
        field's type and range first, then the fields' consistency with each other."""
        _check_field_types(self)
        if self.backbone not in _BACKBONES:
            raise ValueError(f"backbone must be one of {_BACKBONES}, got {self.backbone!r}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}"
            )
        if self.hidden_dim % self.nheads != 0:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be divisible by nheads ({self.nheads})")
        if self.position_embedding not in ("sine", "learned"):
            raise ValueError(f"position_embedding must be 'sine' or 'learned', got {self.position_embedding!r}")
        if self.position_embedding == "sine" and self.hidden_dim % 4 != 0:
            raise ValueError(f"the sine encoding needs hidden_dim divisible by 4, got {self.hidden_dim}")
        if self.backbone_norm not in ("frozen_bn", "bn"):
            raise ValueError(f"backbone_norm must be 'frozen_bn' or 'bn', got {self.backbone_norm!r}")
        strides = (8, 16) if self.backbone == "smallcnn" else (32,) if self.backbone.startswith("presnet") else (16, 32)
        if self.backbone_stride not in strides:
            raise ValueError(f"backbone_stride must be one of {strides} for {self.backbone}, got {self.backbone_stride}")
        if self.backbone == "smallcnn" and (self.pretrained_backbone or self.backbone_norm != "bn"):
            raise ValueError("the smallcnn trunk is trained from scratch: pretrained_backbone=False, backbone_norm='bn'")
        if self.dilation and self.backbone in ("resnet18", "resnet34"):
            raise ValueError("dilation (DC5) needs resnet50 or resnet101: torchvision's BasicBlock cannot dilate")
        if self.dilation and self.backbone_stride == 16:
            raise ValueError("choose either dilation=True (DC5) or backbone_stride=16, not both")
        _check_family_options(self)

    def replace(self, **overrides: Any) -> "DETRConfig":
        """A copy with some fields changed; unknown names are an error (typos must not pass)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown DETRConfig field(s) {unknown}; known fields: {sorted(known)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON and ``torch.load(weights_only=True)`` friendly)."""
        d = dataclasses.asdict(self)
        if d["class_names"] is not None:
            d["class_names"] = list(d["class_names"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DETRConfig":
        """A config from :meth:`to_dict`'s dict, also one written before families existed
        (``reference_points``/``conditional_spatial_query`` flags: see :func:`_translate_flags`)."""
        d = _translate_flags(d) if "family" not in d else dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config has unknown field(s) {unknown}: written by another version?")
        return cls(**d)


def _option_families() -> dict[str, tuple[list[str], Any]]:
    """Each family option -> (the families it belongs to, in :data:`FAMILY_OPTIONS` order, its default)."""
    owners: dict[str, tuple[list[str], Any]] = {}
    for family, options in FAMILY_OPTIONS.items():
        for name, default in options.items():
            owners.setdefault(name, ([], default))[0].append(family)
    return owners


def _check_family_options(cfg: DETRConfig) -> None:
    """Each option belongs to one family or a few: elsewhere it must keep its default. Then the
    family's own rules. All family checks are here, so a wrong combination is refused when the
    config is made, naming the option and its families."""
    if cfg.family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {cfg.family!r}")
    for name, (families, default) in _option_families().items():
        if cfg.family in families or getattr(cfg, name) == default:
            continue
        if len(families) == 1:
            owner, choice = f"family {families[0]!r}", f"family={families[0]!r}"
        else:
            # "family 'a' and to family 'b'": the first family is named as for a single-family option
            owner = " and to ".join(f"family {f!r}" for f in families)
            choice = " or ".join(f"family={f!r}" for f in families)
        raise ValueError(
            f"option {name}={getattr(cfg, name)!r} belongs to {owner}, but this config's family "
            f"is {cfg.family!r} (set {choice}, or leave {name} at {default!r})"
        )
    if cfg.family == "deformable":
        _check_deformable(cfg)
    if cfg.family == "rtdetr":
        _check_rtdetr(cfg)
    elif cfg.backbone.startswith("presnet"):
        raise ValueError(f"the {cfg.backbone} trunk (ResNet-vd) belongs to family 'rtdetr': use resnet* here")
    if cfg.family == "conditional":
        if cfg.pre_norm:
            raise ValueError("the conditional family's decoder is post-norm only: set pre_norm=False")
        if cfg.two_stage and not cfg.encoder_aux_loss:
            raise ValueError("two_stage takes its reference boxes from the dense encoder head: set encoder_aux_loss=True")
        if cfg.encoder_cell_units and not cfg.encoder_aux_loss:
            raise ValueError("encoder_cell_units shapes the dense encoder head's boxes: set encoder_aux_loss=True")


def _check_deformable(cfg: DETRConfig) -> None:
    """What the official Deformable DETR builds: post-norm layers, sine positions, focal loss,
    GroupNorm(32) projections, and a two-stage variant only on top of box refinement."""
    if cfg.pre_norm:
        raise ValueError("the deformable family's layers are post-norm only: set pre_norm=False")
    if cfg.position_embedding != "sine":
        raise ValueError("the deformable family uses Deformable DETR's sine positions: set position_embedding='sine'")
    if not cfg.focal_loss:
        raise ValueError("the deformable family's class heads are sigmoid (no 'no object' output): set focal_loss=True")
    if cfg.hidden_dim % 32 != 0:
        raise ValueError(f"the deformable family's input projections use GroupNorm(32, hidden_dim): "
                         f"hidden_dim must be a multiple of 32, got {cfg.hidden_dim}")
    if cfg.two_stage and not cfg.with_box_refine:
        raise ValueError("two-stage Deformable DETR scores its proposals with the refinement heads "
                         "(the official code needs both): set with_box_refine=True")


def _check_rtdetr(cfg: DETRConfig) -> None:
    """What the official RT-DETR builds: sigmoid heads, post-norm layers, head counts dividing ``d``."""
    if not cfg.focal_loss:
        raise ValueError("the rtdetr family's class heads are sigmoid (no 'no object' output): set focal_loss=True")
    if cfg.pre_norm:
        raise ValueError("the rtdetr family's layers are post-norm only: set pre_norm=False")
    if cfg.dilation:
        raise ValueError("the rtdetr family reads the stride 8/16/32 maps: set dilation=False")
    for name in ("enc_nheads", "dec_nheads"):
        if cfg.hidden_dim % getattr(cfg, name) != 0:
            raise ValueError(f"hidden_dim ({cfg.hidden_dim}) must be divisible by {name} ({getattr(cfg, name)})")
    if cfg.hidden_dim % 4 != 0:
        raise ValueError(f"AIFI's 2-D sin-cos positions need hidden_dim divisible by 4, got {cfg.hidden_dim}")
    if not -cfg.dec_layers <= cfg.eval_idx < cfg.dec_layers:
        raise ValueError(f"eval_idx must name one of the {cfg.dec_layers} decoder layers, got {cfg.eval_idx}")


#: Options of configs written before ``family`` existed that no longer exist, with the reason.
_REMOVED_OPTIONS = {
    "query_groups": (1, "Group DETR (query_groups) was measured and removed (benchmarks/RESULTS.md)"),
    "fine_features": (False, "the decoder's second, finer map (fine_features) was measured and removed "
                             "(benchmarks/RESULTS.md)"),
}


def _translate_flags(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict of the flag era -> this version's fields.

    ``conditional_spatial_query=True`` (with ``reference_points``) is the ``"conditional"``
    family; without it every option of that family must be off. Options that were removed must
    hold their old defaults (a model that used them cannot be rebuilt: ``ValueError`` saying so).
    """
    d = dict(d)
    for name, (default, why) in _REMOVED_OPTIONS.items():
        if d.pop(name, default) != default:
            raise ValueError(f"this checkpoint's model uses {name}: {why}; it cannot be rebuilt by this version")
    conditional = bool(d.pop("conditional_spatial_query", False))
    if d.pop("reference_points", False) and not conditional:
        raise ValueError(
            "this checkpoint's model has reference points without the conditional decoder "
            "(reference_points=True, conditional_spatial_query=False), a variant this version does not build"
        )
    d["family"] = "conditional" if conditional else "detr"
    return d


_R50 = DETRConfig(
    num_classes=91,
    backbone="resnet50",
    pretrained_backbone=True,
    hidden_dim=256,
    nheads=8,
    enc_layers=6,
    dec_layers=6,
    dim_feedforward=2048,
    dropout=0.1,
    num_queries=100,
    pre_norm=False,
    position_embedding="sine",
    aux_loss=True,
)

#: Deformable DETR (Zhu et al., 2021) as its paper and official configs train it on COCO.
_DEFORMABLE = _R50.replace(
    family="deformable",
    dim_feedforward=1024,
    num_queries=300,
    num_feature_levels=4,
    enc_n_points=4,
    dec_n_points=4,
    set_cost_class=2.0,
    set_cost_bbox=5.0,
    set_cost_giou=2.0,
    ce_loss_coef=2.0,
    bbox_loss_coef=5.0,
    giou_loss_coef=2.0,
    focal_loss=True,
    focal_alpha=0.25,
    focal_prior_prob=0.01,
)

#: RT-DETR-R50 as the official ``configs/rtdetr/rtdetr_r50vd_6x_coco.yml`` (with ``include/rtdetr_r50vd.yml``):
#: COCO's 80 classes, ImageNet-pretrained PResNet-50-vd with frozen BatchNorm and stem, inputs 640 x 640.
_RTDETR_R50 = DETRConfig(
    family="rtdetr", num_classes=80, backbone="presnet50", pretrained_backbone=True, backbone_norm="frozen_bn",
    freeze_stem=True, hidden_dim=256, nheads=8, enc_layers=1, dim_feedforward=1024, dropout=0.0, dec_layers=6,
    num_queries=300, aux_loss=True, enc_nheads=8, enc_dim_feedforward=1024, expansion=1.0, depth_mult=1.0,
    dec_nheads=8, dec_dim_feedforward=1024, dec_n_points=4, eval_spatial_size=(640, 640), eval_idx=-1,
    num_top_queries=300, num_denoising=100, label_noise_ratio=0.5, box_noise_scale=1.0,
    set_cost_class=2.0, set_cost_bbox=5.0, set_cost_giou=2.0, ce_loss_coef=1.0, bbox_loss_coef=5.0,
    giou_loss_coef=2.0, eos_coef=1e-4, focal_loss=True, focal_alpha=0.25, focal_gamma=2.0, vfl_alpha=0.75,
)

#: Named configurations. ``detr-r50``/``detr-r101`` (and their DC5 variants) are the paper's models;
#: ``detr-tiny`` is small enough to train and test on a laptop CPU (it is also the fixed
#: configuration our benchmarks compare with the official implementation).
PRESETS: dict[str, DETRConfig] = {
    "detr-r50": _R50,
    "detr-r101": _R50.replace(backbone="resnet101"),
    "detr-r50-dc5": _R50.replace(dilation=True),
    "detr-r101-dc5": _R50.replace(backbone="resnet101", dilation=True),
    "detr-tiny": DETRConfig(
        num_classes=3,
        backbone="resnet18",
        pretrained_backbone=False,
        hidden_dim=128,
        nheads=8,
        enc_layers=2,
        dec_layers=2,
        dim_feedforward=512,
        dropout=0.1,
        num_queries=20,
    ),
    "deformable-detr": _DEFORMABLE,
    "deformable-detr-refine": _DEFORMABLE.replace(with_box_refine=True),
    "deformable-detr-two-stage": _DEFORMABLE.replace(with_box_refine=True, two_stage=True),
    # rtdetr_r18vd_6x_coco.yml: trainable BatchNorm and stem, half-width CSP blocks, 3 decoder layers
    "rtdetr-r18": _RTDETR_R50.replace(backbone="presnet18", backbone_norm="bn", freeze_stem=False, expansion=0.5,
                                      dec_layers=3),
    "rtdetr-r50": _RTDETR_R50,
}


def get_config(name_or_cfg: Union[str, DETRConfig], **overrides: Any) -> DETRConfig:
    """Resolve a preset name (or a config) and apply keyword overrides."""
    if isinstance(name_or_cfg, DETRConfig):
        base = name_or_cfg
    elif isinstance(name_or_cfg, str):
        if name_or_cfg not in PRESETS:
            raise ValueError(f"unknown preset {name_or_cfg!r}; choose one of {sorted(PRESETS)}")
        base = PRESETS[name_or_cfg]
    else:
        raise TypeError(f"expected a preset name or a DETRConfig, got {type(name_or_cfg).__name__}")
    if overrides.get("class_names") is not None and "num_classes" not in overrides:
        overrides["num_classes"] = len(overrides["class_names"])
    if "num_classes" in overrides and "class_names" not in overrides and base.class_names is not None:
        if len(base.class_names) != overrides["num_classes"]:
            overrides["class_names"] = None
    return base.replace(**overrides)
