"""The whole loop learns: a tiny DETR overfits two images (the loss falls by at least 80%)."""
import torch

import detr_tutorial as dt
from training_helpers import overfit_two_images


def test_tiny_model_overfits_two_images():
    torch.manual_seed(0)
    model = dt.build_model(
        "detr-tiny", num_classes=3, hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=128,
        num_queries=5, dropout=0.0, backbone_norm="bn", backbone_stride=16, pretrained_backbone=False,
    )
    first, last = overfit_two_images(model, steps=120, lr=5e-4)
    assert last <= 0.2 * first, f"loss went from {first:.3f} to {last:.3f}"
