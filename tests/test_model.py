"""The DETR model: presets, parameter counts, shapes, padding invariance, attention outputs."""
import json

import pytest
import torch
from torch import nn
from PIL import Image

import detr_tutorial as dt
from detr_tutorial.models import PositionEmbeddingSine, Transformer
from detr_tutorial.models.backbone import build_backbone
from detr_tutorial.models.detr import DETR
from reference_data import reference_path

TINY = dict(num_classes=3, hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=5)


def _official_counts() -> dict:
    return json.loads(reference_path("official_r50_keys.json").read_text())


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset, key", [("detr-r50", "resnet50"), ("detr-r101", "resnet101")])
def test_paper_presets_have_the_official_parameter_count(preset, key):
    counts = _official_counts()
    model = dt.build_model(preset, num_classes=91, pretrained_backbone=False)
    assert _num_params(model) == counts[key]["num_parameters"]


def test_detr_r50_has_the_papers_hyper_parameters():
    cfg = dt.PRESETS["detr-r50"]
    assert (cfg.backbone, cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers) == ("resnet50", 256, 8, 6, 6)
    assert (cfg.dim_feedforward, cfg.dropout, cfg.num_queries) == (2048, 0.1, 100)
    assert (cfg.pre_norm, cfg.position_embedding, cfg.backbone_norm, cfg.aux_loss) == (False, "sine", "frozen_bn", True)
    assert (cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou, cfg.eos_coef) == (1, 5, 2, 0.1)
    model = dt.build_model("detr-r50", num_classes=91, pretrained_backbone=False)
    assert isinstance(model.backbone.body.bn1, dt.models.FrozenBatchNorm2d)
    assert model.class_embed.out_features == 92 and len(model.bbox_embed.layers) == 3


def test_pretrained_trunks_freeze_the_stem_like_the_official_code():
    counts = _official_counts()
    model = dt.build_model("detr-r50", num_classes=91, pretrained_backbone=False, freeze_stem=True)
    trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    assert trainable == counts["resnet50"]["num_trainable_parameters_backbone_lr"]


def test_tiny_forward_and_backward_on_cpu():
    torch.manual_seed(0)
    model = dt.build_model("detr-tiny", pretrained_backbone=False)
    out = model(torch.randn(2, 3, 128, 128))
    assert out["pred_logits"].shape == (2, 20, 4)
    assert out["pred_boxes"].shape == (2, 20, 4)
    assert len(out["aux_outputs"]) == 1
    (out["pred_logits"].sum() + out["pred_boxes"].sum()).backward()
    assert model.class_embed.weight.grad is not None


def test_overrides_follow_the_official_option_names():
    model = dt.build_model(
        "detr-tiny", num_classes=5, backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=2, dec_layers=3,
        dim_feedforward=128, num_queries=10, dropout=0.0, position_embedding="learned", pre_norm=True, aux_loss=False,
    )
    out = model(torch.randn(1, 3, 64, 64))
    assert out["pred_logits"].shape == (1, 10, 6) and "aux_outputs" not in out
    assert model.transformer.encoder.norm is not None  # pre-norm adds a final encoder LayerNorm
    assert model.config.position_embedding == "learned"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_clases=3), "unknown DETRConfig field"),
        (dict(hidden_dim=30, nheads=4), "divisible"),
        (dict(backbone="vgg16"), "backbone must be one of"),
        (dict(dilation=True), "resnet50 or resnet101"),
        (dict(position_embedding="rope"), "position_embedding"),
        (dict(backbone="smallcnn", backbone_norm="bn", backbone_stride=32), "backbone_stride must be one of"),
        (dict(backbone="smallcnn", backbone_norm="frozen_bn", backbone_stride=16), "trained from scratch"),
        (dict(backbone="resnet18", backbone_stride=8), "backbone_stride must be one of"),
        (dict(query_groups=2), "unknown DETRConfig field"),  # Group DETR was removed
        (dict(family="deformable-ish"), "family must be one of"),
        (dict(two_stage=True), "belongs to family 'conditional'"),
        (dict(focal_loss=True, focal_prior_prob=1.5), "focal_prior_prob"),
    ],
)
def test_bad_configurations_are_rejected(overrides, message):
    with pytest.raises((ValueError, TypeError), match=message):
        dt.build_model("detr-tiny", **overrides)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="detr-r50"):
        dt.build_model("detr-r51")


class _Patchify(nn.Module):
    """A stride-32 backbone without any border effect: each feature cell sees only its own patch."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, kernel_size=32, stride=32)
        self.num_channels = channels

    def forward(self, images, mask):
        features = self.conv(images)
        return features, dt.models.backbone.mask_to_feature_size(mask, features.shape[-2:])


def test_an_image_gives_the_same_outputs_alone_and_batched_with_a_larger_one():
    # Everything after the trunk (mask resizing, positions, encoder, decoder, heads) must ignore
    # padding exactly. A convolutional trunk cannot be exact at the right/bottom border (its zero
    # padding differs from the padded image's activations), in the official code as here, so this
    # test uses a trunk with no border effect.
    torch.manual_seed(0)
    model = DETR(_Patchify(), PositionEmbeddingSine(8), Transformer(16, 2, 2, 2, 32, dropout=0.0), 3, 6).eval()
    small, large = torch.randn(3, 64, 96), torch.randn(3, 160, 128)
    with torch.no_grad():
        alone = model([small])
        batched = model([small, large])
    torch.testing.assert_close(batched["pred_logits"][:1], alone["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched["pred_boxes"][:1], alone["pred_boxes"], atol=1e-5, rtol=1e-5)


def test_padding_keys_get_zero_attention_and_rows_sum_to_one():
    torch.manual_seed(0)
    model = dt.build_model("detr-tiny", pretrained_backbone=False, **TINY).eval()
    with torch.no_grad():
        out = model([torch.randn(3, 64, 64), torch.randn(3, 128, 96)], return_attention=True)
    h, w = out["feature_shape"]
    assert (h, w) == (4, 3)
    assert out["enc_attn"].shape == (1, 2, 2, h * w, h * w)
    assert out["dec_attn"].shape == (2, 2, 2, 5, h * w)
    torch.testing.assert_close(out["enc_attn"].sum(-1), torch.ones(1, 2, 2, h * w))
    torch.testing.assert_close(out["dec_attn"].sum(-1), torch.ones(2, 2, 2, 5))
    pad = torch.ones(h, w, dtype=torch.bool)
    pad[:2, :2] = False  # image 0 covers the top-left 2x2 cells of the 4x3 map
    assert out["enc_attn"][:, 0][..., pad.flatten()].abs().max() == 0
    assert out["dec_attn"][:, 0][..., pad.flatten()].abs().max() == 0


def test_attention_path_gives_the_same_outputs_as_the_fast_path():
    torch.manual_seed(0)
    model = dt.build_model("detr-tiny", pretrained_backbone=False, **TINY).eval()
    images = [torch.randn(3, 64, 64), torch.randn(3, 96, 64)]
    with torch.no_grad():
        fast, slow = model(images), model(images, return_attention=True)
    torch.testing.assert_close(fast["pred_logits"], slow["pred_logits"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast["pred_boxes"], slow["pred_boxes"], atol=1e-5, rtol=1e-4)


def test_reset_class_head_keeps_everything_else():
    model = dt.build_model("detr-tiny", pretrained_backbone=False, **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("class_embed")}
    model.reset_class_head(7, class_names=[f"c{i}" for i in range(7)])
    assert model.class_embed.out_features == 8
    assert model.config.num_classes == 7 and model.config.class_names[6] == "c6"
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert model(torch.randn(1, 3, 64, 64))["pred_logits"].shape[-1] == 8


def test_predict_returns_pixel_boxes_for_pil_images_and_tensors():
    torch.manual_seed(0)
    model = dt.build_model("detr-tiny", pretrained_backbone=False, class_names=["a", "b", "c"], **{**TINY, "num_classes": 3})
    pil = Image.new("RGB", (80, 60), color=(120, 30, 200))
    dets = dt.predict(model, [pil, torch.rand(3, 40, 50)], threshold=0.0)
    assert len(dets) == 2
    assert dets[0]["boxes"].shape == (5, 4) and len(dets[0]["names"]) == 5
    assert (dets[0]["boxes"][:, [0, 2]] <= 80 + 1e-3).all() and (dets[0]["boxes"][:, [1, 3]] <= 60 + 1e-3).all()
    assert model.training  # predict restores the mode it found


def test_predict_rejects_normalized_tensors():
    model = dt.build_model("detr-tiny", pretrained_backbone=False, **TINY)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dt.predict(model, torch.randn(3, 32, 32))


def test_backbone_loads_a_local_resnet_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    backbone = dt.Backbone("resnet18", weights=str(path), norm="frozen_bn")
    torch.testing.assert_close(backbone.body.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    assert not backbone.body.conv1.weight.requires_grad  # pretrained -> stem frozen, as the official code
    assert backbone.body.layer2[0].conv1.weight.requires_grad


def test_backbone_reports_a_missing_weights_file():
    with pytest.raises(FileNotFoundError, match="not found"):
        dt.Backbone("resnet18", weights="/nonexistent/resnet18.pth")


def test_stride_16_backbone_stops_after_layer3():
    backbone = dt.Backbone("resnet18", stride=16, norm="bn")
    feats, mask = backbone(torch.randn(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool))
    assert feats.shape == (1, 256, 4, 6) and mask.shape == (1, 4, 6)
    assert not hasattr(backbone.body, "layer4")


@pytest.mark.parametrize("stride, channels", [(8, 128), (16, 256)])
def test_smallcnn_trunk_gives_a_stride_8_or_16_map(stride, channels):
    model = dt.build_model("detr-tiny", num_classes=3, backbone="smallcnn", backbone_norm="bn", backbone_stride=stride)
    assert isinstance(model.backbone, dt.models.SmallCNN) and model.backbone.num_channels == channels
    feats, mask = model.backbone(torch.randn(2, 3, 64, 96), torch.zeros(2, 64, 96, dtype=torch.bool))
    assert feats.shape == (2, channels, 64 // stride, 96 // stride) and mask.shape == (2, 64 // stride, 96 // stride)
    out = model(torch.randn(2, 3, 64, 96))
    assert out["pred_boxes"].shape == (2, 20, 4)


def test_focal_prior_starts_every_class_score_at_the_prior():
    model = dt.build_model("detr-tiny", num_classes=3, focal_loss=True, focal_prior_prob=0.01).eval()
    probs = model(torch.randn(1, 3, 64, 64))["pred_logits"][..., :-1].sigmoid()
    # the bias sets the prior; the (random) weights only spread the scores around it
    assert probs.mean().item() == pytest.approx(0.01, rel=0.5)
    assert torch.allclose(model.class_embed.bias, torch.full((4,), -4.59512), atol=1e-4)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_under_cpu_autocast_matches_float32(masked):
    """Under bfloat16 autocast on the CPU attention takes the explicit path (SDPA's fused kernel is
    several times slower there); it must give the float32 result to bfloat16 precision, gradients
    included."""
    from detr_tutorial.models.transformer import MultiheadAttention

    torch.manual_seed(0)
    attn = MultiheadAttention(64, 8)
    q, kv = torch.randn(4, 20, 64, requires_grad=True), torch.randn(4, 50, 64)
    padding = torch.zeros(4, 50, dtype=torch.bool)
    if masked:
        padding[1, 30:] = True
    reference, _ = attn(q, kv, kv, padding if masked else None)
    (grad_reference,) = torch.autograd.grad(reference.square().sum(), q)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, weights = attn(q, kv, kv, padding if masked else None)
    assert out.dtype == torch.bfloat16 and weights is None
    (grad,) = torch.autograd.grad(out.float().square().sum(), q)
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(grad, grad_reference, atol=5e-2, rtol=5e-2)


def test_an_attention_mask_blocks_pairs_as_in_torchs_multihead_attention():
    """``attn_mask [Lq, Lk]`` (True = blocked), with or without padding, on the fast path and the
    explicit one: the outputs of ``nn.MultiheadAttention`` with the same weights, and the blocked
    pairs get exactly zero weight (RT-DETR's denoising groups rely on it)."""
    from detr_tutorial.models.transformer import MultiheadAttention

    torch.manual_seed(0)
    ours = MultiheadAttention(32, 4)
    theirs = nn.MultiheadAttention(32, 4, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 32)
    blocked = torch.zeros(6, 6, dtype=torch.bool)
    blocked[:3, 3:] = True  # the first three queries may not see the last three keys
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, 2] = True
    for pad in (None, padding):
        expected, _ = theirs(x, x, x, key_padding_mask=pad, attn_mask=blocked, need_weights=False)
        fast, _ = ours(x, x, x, key_padding_mask=pad, attn_mask=blocked)
        explicit, weights = ours(x, x, x, key_padding_mask=pad, attn_mask=blocked, need_weights=True)
        torch.testing.assert_close(fast, expected)
        torch.testing.assert_close(explicit, expected)
        assert weights[:, :, :3, 3:].abs().max() == 0
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 6))
    with pytest.raises(ValueError, match=r"attn_mask must be a bool \[Lq, Lk\] = \[6, 6\] mask"):
        ours(x, x, x, attn_mask=blocked.float())
