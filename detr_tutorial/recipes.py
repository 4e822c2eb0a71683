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
    make it converge fast, each explained in :data:`SHAPES_CPU_NOTES`.
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

__all__ = ["Recipe", "RECIPES", "get_recipe", "SHAPES_CPU_NOTES"]


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
        if self.lr <= 0 or self.lr_backbone < 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0, lr_backbone and weight_decay >= 0")

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


#: Why each choice of ``shapes-cpu`` helps (the docs and the book quote this). The measurements
#: quoted are the 600-step runs of benchmarks/RESULTS.md ("the shapes-cpu recipe search"); all but
#: those of the first note were made while the recipe still trained at 112-144 px (see that note).
SHAPES_CPU_NOTES: dict[str, str] = {
    "training at the validation size, box sizes in cell units": (
        "DETR states every box as a fraction of the image, so the network has to know how large "
        "the image is, and nothing tells it directly. The recipe used to resize each training "
        "image to a random 112-144 px; a batch is padded to its largest image, nearly always "
        "144 px, so only the 144-px images came without padding. The 128-px validation images "
        "come without padding too, and the model took them for 144-px images: it drew every box "
        "0.9 times too small (128/144). Measured on the model shipped before this fix: 0.905 of "
        "the true width and height at 128 px, 0.80 at 112 px, 1.00 at 144 px, and 1.00 at every "
        "size inside a padded batch; enlarging its boxes by 1/0.905 alone raised its mAP from "
        "0.567 to 0.783. The recipe now trains at 128 px, the only size the data set has "
        "(image_size=128, for both splits and any data set), and the dense encoder head predicts each box's "
        "size relative to its cell (encoder_cell_units), so a box is measured in the "
        "features' own pixels whatever the image size (as FCOS scales its regression by the "
        "stride; Deformable DETR's two-stage proposals are cell centres with a fixed size of "
        "0.05 of the image instead). At 600 steps: mAP 0.469 -> 0.644 (cell units, still "
        "112-144 px) / 0.687 (128 px) / 0.693 (both). Trained at 128 px only, the shipped model "
        "still draws boxes of the true size (0.99-1.01) at 112 and 144 px, padded or not."
    ),
    "a small CNN trunk trained from scratch": (
        "A ResNet-18 spends most of a CPU training step in its trunk, and flat shapes on 128 px "
        "images need none of its ImageNet-sized capacity. The 'smallcnn' trunk (a 3x3 stem and one "
        "residual block per stage, 32-64-128-256 channels) makes a step of 32 images 1.7x faster "
        "(0.27 s instead of 0.46 s), so 12 minutes buy more steps. Its BatchNorm is ordinary, "
        "trainable BatchNorm: frozen statistics of a random trunk would be the identity and leave "
        "the activations unnormalized."
    ),
    "stride 16": (
        "A 128x128 image gives a 4x4 feature map at stride 32: 16 cells for up to 6 objects of "
        "12-48 px. Stride 16 gives 8x8 = 64 cells. Stride 8 (256 cells) learned no faster per step "
        "in our runs and made each step 1.4x slower; letting the decoder read the stride-8 map "
        "beside the encoded stride-16 one (fine_features) did not help either."
    ),
    "bfloat16 autocast and channels-last on the CPU": (
        "On a CPU with bfloat16 instructions (avx512_bf16 or AMX; amp='auto' checks) the trunk's "
        "convolutions and the transformer's matrix products run in bfloat16, in the channels-last "
        "layout that oneDNN's convolutions prefer. PyTorch's fused attention kernel is several "
        "times slower in bfloat16 on the CPU, so attention takes the explicit softmax(QK^T)V path "
        "there, and the prediction heads stay in float32 (a box is a sub-pixel quantity). A step "
        "takes 0.24-0.26 s instead of 0.43 s: 1.7x more steps in the same minutes, for about the "
        "same result per step (600 steps: mAP 0.368 against 0.377 in float32). Without native "
        "bfloat16 the recipe runs in float32 and its 2700 steps take about 19 minutes."
    ),
    "positions added to the encoder input": (
        "DETR adds the positional encoding to queries and keys only, so the features that attention "
        "averages (the values) do not say where they come from; a deep pretrained ResNet encodes "
        "position in its features, a small trunk trained from scratch hardly does. Adding the "
        "encoding once to the encoder's input (the paper's Table 3 tries this placement) lets the "
        "decoder read positions out of the values it collects."
    ),
    "a dense auxiliary loss on the encoder": (
        "With a trunk trained from scratch nothing in the features knows what an object is, and "
        "one-to-one matching gives the encoder a weak, noisy signal (Co-DETR's argument). A small "
        "head on every encoder cell is trained to predict the class and box of the object whose "
        "centre region the cell lies in (sigmoid focal + L1 + GIoU). It teaches the trunk and "
        "encoder classes and positions from the first step. Measured at 600 steps (before "
        "two-stage), with conditional spatial queries: mAP 0.285 with it, a collapse without it."
    ),
    "conditional spatial queries": (
        "Conditional DETR (Meng et al., 2021): each query has a reference point, its box is "
        "predicted relative to it, and its cross-attention scores each cell by content plus a "
        "separate spatial term that compares the point's sine code with the cell's. A query "
        "therefore looks near its point from the start instead of having to learn where to look "
        "through the content channels - the slow part of DETR's training."
    ),
    "two-stage queries and box refinement": (
        "Deformable DETR's two-stage variant: the dense encoder head scores every cell, and the 20 "
        "best cells' boxes (detached) become the queries' reference boxes; each query predicts "
        "its box as a correction of its reference box, and each decoder layer refines the box of "
        "the layer before. The content of the queries stays learned (DINO's 'mixed' query "
        "selection). The queries now start on the objects of *this* image, so they cannot settle "
        "on fixed slot boxes, and the decoder's work is to decide which proposal is the object "
        "and to tighten it (in the shipped model it only does the first: its box head has stopped "
        "correcting the proposals - none of its 128 hidden units is active - so the boxes are the "
        "encoder head's; zero-initializing the head's last layer, a lower rate for it or another "
        "activation did not change that). It is still DETR: one set of 20 predictions, one-to-one "
        "Hungarian matching, no anchors, no NMS (duplicate proposals are what the set loss trains "
        "the decoder to suppress). At 600 steps: mAP 0.368 -> 0.400 (two-stage) -> 0.406 (with "
        "refinement)."
    ),
    "sigmoid focal classification with a prior": (
        "With 20 queries and ~3 objects most queries are 'no object'. The focal loss (as in "
        "Deformable DETR) down-weights the easy negatives instead of a fixed eos_coef and gives "
        "per-class scores, which is what mAP ranks by; its class bias starts at log(0.01/0.99) so "
        "the first steps are not spent pushing every score down."
    ),
    "matching and loss weights that favour tight boxes": (
        "Without two-stage, the paper's matching costs let every query settle on a fixed slot "
        "box (a collapse), and only a class-driven matching (class cost 8) avoided it. With "
        "image-dependent starting boxes that danger is gone, so the recipe returns to Deformable "
        "DETR's class cost and weight of 2 (600 steps: 0.432 -> 0.441) and doubles the GIoU cost "
        "and weight to 4, because mAP@[.5:.95] rewards tight boxes (0.454 -> 0.469; AP75 0.454 "
        "-> 0.497)."
    ),
    "warm-up, a high rate and cosine decay": (
        "A short linear warm-up (100 steps) keeps the first steps (random matching, large "
        "gradients) from diverging; the rate is 3e-3, thirty times the paper's 1e-4. At 600 "
        "steps, with class cost 8: 1e-3 0.406, 2e-3 0.432, 4e-3 0.434; with class cost 2: 2e-3 "
        "0.441, 3e-3 0.454; with the GIoU weight 4: 3e-3 0.469, 4e-3 0.437. Cosine decay anneals "
        "the boxes at the end, which is when they become tight."
    ),
    "the whole model at one learning rate": (
        "The separate, 10x smaller backbone learning rate protects ImageNet features; a trunk trained "
        "from scratch has nothing to protect and must learn as fast as the transformer."
    ),
}


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

RECIPES: dict[str, Recipe] = {
    "shapes-cpu": Recipe(
        name="shapes-cpu",
        # 2700 steps of 32 images of 128 px: 10.7 minutes of training on 2 idle cores (bfloat16
        # autocast, channels-last; 0.237 s per step), inside the 12-minute budget with room for a
        # noisy machine. Every choice below is explained in SHAPES_CPU_NOTES and the runs that led to it
        # are in benchmarks/RESULTS.md.
        description="DETR on the shapes data set on 2 CPU cores: 2700 steps of 32 images (~11 idle minutes)",
        model="detr-tiny",
        model_overrides=dict(
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
            reference_points=True,
            conditional_spatial_query=True,
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
