"""Access to ../shared/reference (data written by the official DETR code); skip when absent."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

#: the configuration the reference checkpoint was written with (see its README)
REFERENCE_MODEL = dict(
    num_classes=5, backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2,
    dim_feedforward=128, num_queries=10, dropout=0.1, position_embedding="sine", pretrained_backbone=False,
)


def reference_path(name: str) -> Path:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: ../shared/reference holds the official DETR code's outputs")
    return path


def load_io() -> dict:
    return torch.load(reference_path("io.pt"), weights_only=True)


def load_json() -> dict:
    return json.loads(reference_path("reference.json").read_text())


def load_official_state_dict() -> dict:
    state = torch.load(reference_path("official_detr.pth"), weights_only=True)
    # backbone tensors are stored as float16; every reference output was computed from them as float32
    return {"model": {k: v.float() for k, v in state["model"].items()}}
