"""The whole loop learns: a tiny DETR overfits two images (the loss falls by at least 80%)."""
import torch

import detr_tutorial as dt


def _two_images():
    images = torch.zeros(2, 3, 64, 64)
    images[0, 0, 8:24, 10:40] = 2.0  # a red-ish rectangle
    images[1, 1, 30:60, 20:44] = 2.0  # a green-ish one
    images[1, 2, 4:20, 4:20] = 2.0  # and a blue square
    targets = [
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[25 / 64, 16 / 64, 30 / 64, 16 / 64]])},
        {"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[32 / 64, 45 / 64, 24 / 64, 30 / 64], [12 / 64, 12 / 64, 16 / 64, 16 / 64]])},
    ]
    return images, targets


def test_tiny_model_overfits_two_images():
    torch.manual_seed(0)
    model = dt.build_model(
        "detr-tiny", num_classes=3, hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=128,
        num_queries=5, dropout=0.0, backbone_norm="bn", backbone_stride=16, pretrained_backbone=False,
    )
    criterion = dt.build_criterion(model.config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    images, targets = _two_images()
    history = []
    for _ in range(120):
        total = criterion.total(criterion(model(images), targets))
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        history.append(total.item())
    first, last = history[0], min(history[-5:])
    assert last <= 0.2 * first, f"loss went from {first:.3f} to {last:.3f}"
