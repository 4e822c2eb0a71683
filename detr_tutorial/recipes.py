"""Named training recipes: everything a training run needs besides the data's location.

A recipe fixes the model (a preset plus overrides), the data set and its augmentation, the
optimizer and its schedule, and the budget. Budgets and schedules are counted in optimizer
*steps*, never in minutes: CPU training is deterministic step by step, while minutes depend on
how busy the machine is. Paper recipes that are defined in epochs give ``epochs``; the trainer
turns it into steps once it knows the data set size and the number of processes.

Recipes:

``shapes-cpu`` (the default)
    A DETR that learns the synthetic shapes data set on two CPU cores in minutes. Still DETR —
    a set of learned queries, Hungarian matching, no anchors, no NMS — with the changes that
    make it converge fast. Why each one helps, with its measurements, is in
    ``benchmarks/RESULTS.md`` ("Notes: why each shapes-cpu choice helps") and chapter 08 of the
    book.
``shapes-detr``, ``shapes-conditional``, ``shapes-deformable``, ``shapes-rtdetr``
    The four model families side by side on shapes (``benchmarks/bench_families.py``): one small
    trunk, width, depth and query count, the same data, batch and seed, the same budget of 12
    idle CPU minutes (each family's own number of steps, ``FAMILY_STEPS``), and
    multi-scale training with one canvas size per batch (96-176 px, no padding). Each family keeps
    its own paper's loss and matching weights; ``shapes-detr`` also keeps the paper's optimizer
    (AdamW 1e-4, step decay), to show its slow convergence honestly, while the three later
    families share one AdamW schedule (1e-3 after 100 warm-up steps, cosine decay; ``shapes-cpu``
    uses 3e-3). ``shapes-deformable`` sets ``exact_extent``: most canvases are not multiples of the
    strides 8, 16 and 32 (book pitfall 10).
``shapes-shipped``
    The shipped model (``make shipped-model``): ``shapes-rtdetr`` with anchors of a fixed size in
    pixels (``anchor_pixels=8``: 8 and 16 px at strides 8 and 16, on every canvas), a learning
    rate of 2e-3, 1800 steps of 16 images, on canvases of 80-176 px; benchmarks/RESULTS.md
    ("Notes: the shipped model") has the runs.
``detr-paper``
    The paper's settings (DETR-R50: frozen-BN ResNet-50 from ImageNet, hidden 256, 6+6 layers,
    100 queries, AdamW lr 1e-4 / backbone 1e-5, weight decay 1e-4, batch 2 per GPU on 8 GPUs as
    in the official code, clipping 0.1, ``eos_coef`` 0.1, auxiliary losses, 300 epochs with a 10x
    step decay at epoch 200 = 2/3) on the shapes data set, for comparison with ``shapes-cpu``.
``coco-r50``
    The same paper settings on COCO 2017 (the official DETR-R50 training run).
``voc-r50``
    The paper settings on Pascal VOC (20 classes); 150 epochs with the drop at 100.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from .ema import check_ema_settings

__all__ = ["Recipe", "RECIPES", "get_recipe"]


@dataclass
class Recipe:
    """One training recipe. All schedule quantities are in optimizer steps.

    Attributes:
        name, description: for logs and ``--help``.
        model: a preset name of ``dt.PRESETS``; ``model_overrides`` changes its fields
            (``num_classes`` and ``class_names`` always come from the data set).
        dataset: ``"shapes"``, ``"voc"``, ``"coco"`` or ``"folder"`` (a COCO-format folder).
        data_dir: where the data lives (``None``: the data set's default; shapes needs none).
        image_size: the shorter image side (pixels) the recipe was made for: training and
            evaluation both resize to it, whatever the data set (a model that learned boxes at
            128 px scores nothing on 800-px images). ``None``: the data set preset's sizes
            (for COCO-format data DETR's 480-800 px multi-scale training and 800 px
            evaluation). ``train`` logs the sizes each split uses.
        dataset_options: extra keyword arguments for the data set builder (``train_``/``val_``
            prefixed: that split only); ``scales``, ``max_size``, ``val_size`` and ``crop`` size
            the preset augmentation instead (:func:`~detr_tutorial.data.make_transforms`), and
            override ``image_size`` for their split.
        batch_image_sizes: multi-scale training with one image size per global batch: each
            batch draws one of these sizes (pixels) and every image of it is drawn (shapes: the
            canvas side, objects keep their pixel sizes) or resized (other data sets: the
            shorter side) to that size, so no training image is padded and a model cannot learn
            the image size from the padding. The training transforms then only flip.
            ``None``: the preset's per-image sizes (or ``image_size``).
        batch_size: images per process per micro-batch; the global batch of one optimizer step
            is ``batch_size * processes * accum_steps``.
        accum_steps: micro-batches accumulated per optimizer step.
        lr, lr_backbone, weight_decay: AdamW; the backbone (``backbone.*``) has its own lr.
        schedule: ``"step"`` (x ``lr_drop_factor`` at ``lr_drop_fraction`` of the run, DETR's),
            ``"cosine"`` (down to ``min_lr_ratio * lr``) or ``"constant"``; all after a linear
            warm-up of ``warmup_steps``.
        max_steps: the budget; ``None`` means ``epochs`` of the training set.
        clip_max_norm: gradient clipping by global norm (0 disables).
        amp: ``"none"``, ``"bf16"``, ``"fp16"`` (fp16 only on CUDA, with a grad scaler) or
            ``"auto"`` (bf16 where the device has native bfloat16 arithmetic, else none).
        channels_last: run the model in the channels-last memory format (faster convolutions
            with oneDNN on CPUs, and with cuDNN under autocast).
        eval_every, checkpoint_every, log_every: in steps (0 disables periodic ones; the end of
            training always evaluates and checkpoints).
        eval_max_images: evaluate periodic checkpoints on the first N validation images only
            (``None``: all); the final evaluation always uses the whole split.
        num_workers: data-loader worker processes.
        ema_decay, ema_warmup_steps: keep an exponential moving average of the weights
            (:class:`~detr_tutorial.ema.ModelEMA`, as the official RT-DETR does): the decay and the
            time constant of its ramp, in steps. Evaluation and ``model_final.pth`` then use the
            average; the training checkpoint holds both. ``ema_decay=0``: no average.
        seed: seeds the model initialization, the data order and every augmentation.
    """

    name: str
    description: str = ""
    model: str = "detr-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    dataset: str = "shapes"
    data_dir: Optional[str] = None
    image_size: Optional[int] = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    batch_image_sizes: Optional[list[int]] = None
    batch_size: int = 2
    accum_steps: int = 1
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    schedule: str = "step"
    warmup_steps: int = 0
    lr_drop_fraction: float = 2.0 / 3.0
    lr_drop_factor: float = 0.1
    min_lr_ratio: float = 0.01
    max_steps: Optional[int] = None
    epochs: Optional[float] = None
    clip_max_norm: float = 0.1
    amp: str = "none"
    channels_last: bool = False
    eval_every: int = 0
    checkpoint_every: int = 500
    log_every: int = 20
    eval_max_images: Optional[int] = None
    num_workers: int = 2
    ema_decay: float = 0.0
    ema_warmup_steps: int = 0
    seed: int = 42

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        if self.schedule not in ("step", "cosine", "constant"):
            raise ValueError(f"schedule must be 'step', 'cosine' or 'constant', got {self.schedule!r}")
        if self.amp not in ("none", "bf16", "fp16", "auto"):
            raise ValueError(f"amp must be 'none', 'bf16', 'fp16' or 'auto', got {self.amp!r}")
        if self.dataset not in ("shapes", "voc", "coco", "folder"):
            raise ValueError(f"dataset must be shapes, voc, coco or folder, got {self.dataset!r}")
        if self.max_steps is None and self.epochs is None:
            raise ValueError("a recipe needs a budget: max_steps or epochs")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        for name in ("batch_size", "accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "log_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.lr_drop_fraction <= 1.0:
            raise ValueError(f"lr_drop_fraction must be in (0, 1], got {self.lr_drop_fraction}")
        if self.image_size is not None and (
            isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1
        ):
            raise ValueError(f"image_size must be a positive int (pixels) or None, got {self.image_size!r}")
        if self.batch_image_sizes is not None:
            sizes = self.batch_image_sizes
            if not isinstance(sizes, (list, tuple)) or not sizes or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes
            ):
                raise ValueError(f"batch_image_sizes must be a non-empty list of positive ints (pixels), got {sizes!r}")
            if self.image_size is not None:
                raise ValueError(
                    "batch_image_sizes sizes the training images and image_size would size them again: "
                    "set image_size=None (the evaluation size then comes from dataset_options val_size)"
                )
            resizing = sorted(k for k in self.dataset_options if k in ("scales", "train_scales", "max_size", "train_max_size"))
            if resizing:
                raise ValueError(f"batch_image_sizes replaces the training resize: drop dataset_options {resizing}")
        if self.lr <= 0 or self.lr_backbone < 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0, lr_backbone and weight_decay >= 0")
        check_ema_settings(self.ema_decay, self.ema_warmup_steps)

    def replace(self, **overrides: Any) -> "Recipe":
        """A copy with some fields changed; unknown names are an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown Recipe field(s) {unknown}; known fields: {sorted(known)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


_PAPER = dict(
    model="detr-r50",
    batch_size=2,  # per GPU; the official code trains on 8 GPUs (the paper: 4/GPU on 16 GPUs)
    lr=1e-4,
    lr_backbone=1e-5,
    weight_decay=1e-4,
    schedule="step",
    warmup_steps=0,
    lr_drop_fraction=2.0 / 3.0,  # epoch 200 of 300
    lr_drop_factor=0.1,
    clip_max_norm=0.1,
    amp="none",
    checkpoint_every=2000,
    log_every=50,
)

#: canvas sizes of the family recipes' multi-scale training (one per batch): 96-176 px in steps of
#: 8, so half of them are not multiples of 16
SHAPES_BATCH_SIZES = [96, 104, 112, 120, 128, 136, 144, 152, 160, 168, 176]

#: canvas sizes of ``shapes-shipped``: 80-176 px in steps of 8 (the sweep covers 96-176 px)
SHIPPED_BATCH_SIZES = [80, 88, *SHAPES_BATCH_SIZES]

#: optimizer steps of each family recipe: what the family does in 12 minutes on 2 idle cores, less
#: 10-30 % for a noisy machine (benchmarks/RESULTS.md, "Families: step cost", measured side by
#: side: a Deformable DETR step costs 3.6x a shapes-cpu step, RT-DETR 2.5x, DETR 1.2x)
FAMILY_STEPS = {"detr": 2200, "conditional": 2000, "deformable": 600, "rtdetr": 1000}


def _family_recipes() -> dict[str, dict[str, Any]]:
    """The ``shapes-<family>`` recipes: shared trunk, sizes, data and budget (module docstring)."""
    trunk = dict(backbone="smallcnn", pretrained_backbone=False, backbone_norm="bn", backbone_stride=16,
                 hidden_dim=128, dropout=0.0, num_queries=20, aux_loss=True)
    layers = dict(nheads=8, enc_layers=2, dec_layers=2, dim_feedforward=512)
    shared = dict(dataset="shapes", batch_image_sizes=list(SHAPES_BATCH_SIZES), batch_size=32, weight_decay=1e-4,
                  clip_max_norm=0.1, amp="auto", channels_last=True, eval_every=200,
                  eval_max_images=200, checkpoint_every=200, log_every=20, num_workers=1)
    fast = dict(lr=1e-3, lr_backbone=1e-3, schedule="cosine", warmup_steps=100)
    return {
        "shapes-detr": dict(
            description="the paper's DETR, scaled down, on shapes with the paper's optimizer (family comparison)",
            model="detr-tiny", model_overrides={**trunk, **layers}, lr=1e-4, lr_backbone=1e-4, schedule="step",
            warmup_steps=0, max_steps=FAMILY_STEPS["detr"], **shared),
        "shapes-conditional": dict(
            description="the shipped model's family (conditional, two-stage, box refinement) on shapes (family comparison)",
            model="detr-tiny", model_overrides={**trunk, **layers, **_CONDITIONAL}, max_steps=FAMILY_STEPS["conditional"],
            **fast, **shared),
        "shapes-deformable": dict(
            description="Deformable DETR (two-stage, box refinement, 3 levels) on shapes (family comparison)",
            model="deformable-detr-two-stage",
            model_overrides={**trunk, **layers, "num_feature_levels": 3, "exact_extent": True},
            max_steps=FAMILY_STEPS["deformable"], **fast, **shared),
        "shapes-rtdetr": dict(
            description="RT-DETR (hybrid encoder, IoU-aware selection, denoising) on shapes (family comparison)",
            model="rtdetr-r18", model_overrides={
                **trunk, "enc_nheads": 8, "dec_nheads": 8, "enc_dim_feedforward": 512, "dec_dim_feedforward": 512,
                "dec_layers": 2, "eval_spatial_size": None, "num_top_queries": 20, "num_denoising": 40,
                "freeze_stem": None},
            max_steps=FAMILY_STEPS["rtdetr"], **fast, **shared),
    }


def _shipped_recipe() -> dict[str, Any]:
    """``shapes-shipped``: ``shapes-rtdetr`` (the best family of the comparison) with what made it
    better in benchmarks/RESULTS.md ("Notes: the shipped model"): anchors of a fixed size in pixels
    (``anchor_pixels``), twice the learning rate, batches of 16 for 1800 steps (a step of 16
    images costs 0.53 of a step of 32, so the budget stays that of 1000 steps of 32), and canvases
    from 80 px (``SHIPPED_BATCH_SIZES``), so that 96 px, the hardest size of the sweep, is not the
    edge of the training range. Same data and seed."""
    rtdetr = _family_recipes()["shapes-rtdetr"]
    return dict(
        rtdetr,
        description="the shipped model: RT-DETR on shapes, anchors in pixels, 1800 steps of 16 (~12 idle CPU minutes)",
        model_overrides={**rtdetr["model_overrides"], "anchor_pixels": 8.0}, lr=2e-3, lr_backbone=2e-3,
        batch_size=16, max_steps=1800, batch_image_sizes=list(SHIPPED_BATCH_SIZES))


#: what makes the shipped model's family fast on shapes (``shapes-cpu``; RESULTS.md says why)
_CONDITIONAL = dict(
    family="conditional", position_at_input=True, encoder_aux_loss=True, encoder_cell_units=True, two_stage=True,
    box_refine=True, focal_loss=True, focal_prior_prob=0.01, set_cost_class=2.0, ce_loss_coef=2.0,
    set_cost_giou=4.0, giou_loss_coef=4.0,
)

RECIPES: dict[str, Recipe] = {
    "shapes-cpu": Recipe(
        name="shapes-cpu",
        # 2700 steps of 32 images of 128 px: 10.7 minutes of training on 2 idle cores (bfloat16
        # autocast, channels-last; 0.237 s per step), inside the 12-minute budget with room for a
        # noisy machine. Why each choice below helps: benchmarks/RESULTS.md, "Notes: why each
        # shapes-cpu choice helps"; the runs that led to them: "Notes: the shapes-cpu recipe search".
        description="DETR on the shapes data set on 2 CPU cores: 2700 steps of 32 images (~11 idle minutes)",
        model="detr-tiny",
        model_overrides=dict(
            family="conditional",
            backbone="smallcnn",
            pretrained_backbone=False,
            backbone_norm="bn",
            backbone_stride=16,
            hidden_dim=128,
            nheads=8,
            enc_layers=2,
            dec_layers=2,
            dim_feedforward=512,
            dropout=0.0,
            num_queries=20,
            aux_loss=True,
            position_at_input=True,
            encoder_aux_loss=True,
            encoder_cell_units=True,
            two_stage=True,
            box_refine=True,
            focal_loss=True,
            focal_prior_prob=0.01,
            set_cost_class=2.0,
            ce_loss_coef=2.0,
            set_cost_giou=4.0,
            giou_loss_coef=4.0,
        ),
        dataset="shapes",
        image_size=128,  # the shapes images' size, for both splits: no padding anywhere
        batch_size=32,
        lr=3e-3,
        lr_backbone=3e-3,
        weight_decay=1e-4,
        schedule="cosine",
        warmup_steps=100,
        max_steps=2700,
        clip_max_norm=0.1,
        amp="auto",
        channels_last=True,
        eval_every=400,
        eval_max_images=200,
        checkpoint_every=200,
        log_every=20,
        num_workers=1,
    ),
    **{name: Recipe(name=name, **kw) for name, kw in _family_recipes().items()},
    "shapes-shipped": Recipe(name="shapes-shipped", **_shipped_recipe()),
    "detr-paper": Recipe(
        name="detr-paper",
        description="the paper's DETR-R50 settings, on the shapes data set, for comparison",
        dataset="shapes",
        epochs=300,
        **_PAPER,
    ),
    "coco-r50": Recipe(
        name="coco-r50",
        description="the paper's DETR-R50 training on COCO 2017 (300 epochs, lr drop at 200)",
        dataset="coco",
        epochs=300,
        **_PAPER,
    ),
    "voc-r50": Recipe(
        name="voc-r50",
        description="the paper's DETR-R50 settings on Pascal VOC (150 epochs, lr drop at 100)",
        dataset="voc",
        epochs=150,
        **_PAPER,
    ),
}


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """A named recipe, with fields overridden by keyword."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name].replace(**overrides) if overrides else RECIPES[name]
