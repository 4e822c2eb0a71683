"""SetCriterion: official values, perfect boxes, gradients, weighting, errors."""
import pytest
import torch

import detr_tutorial as dt
from reference_data import load_io, load_json

WEIGHTS = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}


def _criterion(num_classes: int = 5) -> dt.SetCriterion:
    return dt.SetCriterion(num_classes, dt.HungarianMatcher(1, 5, 2), weight_dict=WEIGHTS, eos_coef=0.1)


@pytest.mark.parametrize("targets_key, losses_key", [("targets", "losses"), ("empty_targets", "losses_with_empty")])
def test_losses_equal_the_official_implementation(targets_key, losses_key):
    io, ref = load_io(), load_json()
    losses = _criterion()(io["outputs"], io[targets_key])
    assert sorted(losses) == sorted(ref[losses_key])
    for key, expected in ref[losses_key].items():
        assert losses[key].item() == pytest.approx(expected, abs=1e-5, rel=1e-6), key


def test_perfect_boxes_give_zero_box_losses():
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])
    pred_boxes = torch.full((1, 4, 4), 0.5)
    pred_boxes[0, 1], pred_boxes[0, 3] = boxes[0], boxes[1]
    logits = torch.zeros(1, 4, 4)
    logits[0, 1, 2], logits[0, 3, 0] = 10.0, 10.0  # the right classes, confidently
    targets = [{"labels": torch.tensor([2, 0]), "boxes": boxes}]
    losses = _criterion(3)({"pred_logits": logits, "pred_boxes": pred_boxes}, targets)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-7)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["class_error"].item() == 0.0


def test_total_is_the_weighted_sum_with_aux_weights_filled_in():
    io = load_io()
    criterion = _criterion()
    losses = criterion(io["outputs"], io["targets"])
    expected = sum(WEIGHTS[k.rstrip("_0")] * v for k, v in losses.items() if k.rstrip("_0") in WEIGHTS)
    assert criterion.total(losses).item() == pytest.approx(expected.item(), rel=1e-6)
    assert criterion.weight_for("loss_giou_0") == 2 and criterion.weight_for("class_error") == 0


def test_no_object_class_is_down_weighted_by_eos_coef():
    criterion = _criterion(3)
    assert criterion.empty_weight.tolist() == pytest.approx([1, 1, 1, 0.1])
    # a batch with no objects: every query's target is "no object"; the weighted mean equals plain CE
    logits = torch.randn(1, 4, 4)
    losses = criterion({"pred_logits": logits, "pred_boxes": torch.full((1, 4, 4), 0.5)},
                       [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}])
    expected = torch.nn.functional.cross_entropy(logits[0], torch.full((4,), 3))
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    model = dt.build_model(
        "detr-tiny", num_classes=3, hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64,
        num_queries=5, pretrained_backbone=False, backbone_norm="bn",
    )
    criterion = dt.build_criterion(model.config)
    targets = [
        {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.7, 0.3, 0.2]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    criterion.total(criterion(model(torch.randn(2, 3, 64, 64)), targets)).backward()
    without_grad = {n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())}
    # The decoder starts from tgt = 0, so at initialization (zero biases) the first decoder layer's
    # self-attention outputs zeros whatever its weights: exactly these three tensors get a zero
    # gradient at step 0, in the official code too. Everything else must be reached.
    assert without_grad <= {
        "transformer.decoder.layers.0.self_attn.in_proj_weight",
        "transformer.decoder.layers.0.self_attn.out_proj.weight",
        "transformer.decoder.layers.0.norm1.weight",
    }
    assert not any(n.startswith(("backbone", "input_proj", "query_embed", "class_embed", "bbox_embed", "transformer.encoder"))
                   for n in without_grad)


def test_focal_loss_option_runs_and_ignores_the_no_object_logit():
    torch.manual_seed(0)
    criterion = dt.SetCriterion(3, dt.HungarianMatcher(2, 5, 2, focal=True), {"loss_ce": 2, "loss_bbox": 5, "loss_giou": 2}, focal=True)
    logits = torch.randn(1, 4, 4, requires_grad=True)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    losses = criterion({"pred_logits": logits, "pred_boxes": torch.full((1, 4, 4), 0.4)}, targets)
    losses["loss_ce"].backward()
    assert logits.grad[..., -1].abs().sum() == 0 and logits.grad[..., :-1].abs().sum() > 0


def test_wrong_number_of_classes_is_named():
    io = load_io()
    with pytest.raises(ValueError, match="num_classes"):
        _criterion(num_classes=91)(io["outputs"], [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])}] * 2)
