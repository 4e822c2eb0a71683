"""Access to ../shared/reference (written by the official DETR, Deformable DETR, RT-DETR code).

A clone with nothing beside it has no ``../shared``: every test that compares with the official
code then skips, and its reason names the file and the comparison that did not run, so a green
run on such a clone never reads as "checked against the official code".
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

#: what each reference file lets the tests check (said in the skip reason when it is absent)
CHECKS = {
    "io.pt": "the official DETR model's outputs on two padded images (and the losses, matching and "
             "post-processing computed from them)",
    "reference.json": "the official HungarianMatcher's indices, SetCriterion's loss terms and "
                      "PostProcess's detections",
    "official_detr.pth": "loading an official facebookresearch/detr checkpoint and reproducing its outputs",
    "official_r50_keys.json": "the state-dict keys, shapes and parameter counts of the official "
                              "DETR-R50/R101/R50-DC5",
    "deformable/msda_core.pt": "multi-scale deformable attention against the official "
                               "ms_deform_attn_core_pytorch (output and the three gradients)",
    "deformable/msda_module_init.pth": "MSDeformAttn's initialization against the official module's",
    "deformable/msda_module_perturbed.pth": "MSDeformAttn with the official module's weights",
    "deformable/msda_module_io.pt": "MSDeformAttn's outputs and sampling against the official module's",
    "deformable/deformable_detr_models.pth": "loading official Deformable DETR checkpoints (plain, box "
                                             "refinement, two-stage)",
    "deformable/deformable_detr_io.pt": "the official Deformable DETR's outputs, intermediates and "
                                        "matcher costs on two padded images",
    "deformable/reference.json": "the official Deformable DETR's matcher indices, loss terms and "
                                 "post-processed detections",
    "rtdetr/rtdetr_model.pth": "loading an official RT-DETR (PResNet-18-vd) checkpoint strictly, with the "
                               "official parameter count",
    "rtdetr/rtdetr_io.pt": "the official RT-DETR's stage outputs (backbone, AIFI, hybrid encoder, query "
                           "selection, decoder layers), final and training-mode outputs and matcher costs",
    "rtdetr/reference.json": "the official RT-DETR's matcher indices, varifocal/box loss terms (eval and "
                             "training mode, with and without an empty image) and post-processed detections",
}

#: the configuration the reference checkpoint was written with (see its README)
REFERENCE_MODEL = dict(
    num_classes=5, backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2,
    dim_feedforward=128, num_queries=10, dropout=0.1, position_embedding="sine", pretrained_backbone=False,
)


def skip_reason(name: str) -> str:
    """Why a test that needs ``../shared/reference/<name>`` is skipped, and what it leaves unchecked."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    what = CHECKS.get(name, f"the comparison that reads {name}")
    return (
        f"{REFERENCE / name} is absent (../shared/reference, written by the official implementations, is not "
        f"beside this clone): NOT checked here: {what}" + (f" [{test}]" if test else "")
    )


def reference_path(name: str) -> Path:
    """The path of a reference file; skips the calling test (saying what goes unchecked) when absent."""
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(skip_reason(name))
    return path


def load_io() -> dict:
    return torch.load(reference_path("io.pt"), weights_only=True)


def load_json() -> dict:
    return json.loads(reference_path("reference.json").read_text())


def load_official_state_dict() -> dict:
    state = torch.load(reference_path("official_detr.pth"), weights_only=True)
    # backbone tensors are stored as float16; every reference output was computed from them as float32
    return {"model": {k: v.float() for k, v in state["model"].items()}}
