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
        (dict(query_groups=0), "query_groups"),
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


def _grouped_model(groups: int = 3) -> DETR:
    torch.manual_seed(0)
    return dt.build_model(
        "detr-tiny", num_classes=3, num_queries=5, query_groups=groups, dropout=0.0, backbone="smallcnn",
        backbone_norm="bn", backbone_stride=16,
    )


def test_query_groups_train_g_times_the_queries_and_predict_with_the_first_group():
    model = _grouped_model(groups=3)
    images = torch.randn(2, 3, 64, 64)
    out = model(images)
    assert out["pred_logits"].shape == (2, 15, 4) and out["query_groups"] == 3
    assert all(aux["pred_boxes"].shape == (2, 15, 4) for aux in out["aux_outputs"])
    model.eval()
    out = model(images)
    assert out["pred_logits"].shape == (2, 5, 4) and "query_groups" not in out


def test_query_groups_cannot_see_each_other():
    """Group 0 in training equals the model at inference: other groups change nothing in it."""
    model = _grouped_model(groups=3)
    model.backbone.eval()  # fixed BatchNorm statistics, so training and eval passes compare
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first_group = model(images)["pred_boxes"][:, :5].clone()
        model.query_embed.weight[5:] += 1.0  # move every query of groups 1 and 2
        again = model(images)["pred_boxes"][:, :5]
        model.eval()
        inference = model(images)["pred_boxes"]
    torch.testing.assert_close(again, first_group)
    torch.testing.assert_close(inference, first_group)


def test_position_at_input_changes_only_what_the_encoder_reads():
    torch.manual_seed(0)
    plain = dt.build_model("detr-tiny", num_classes=3, dropout=0.0).eval()
    at_input = dt.build_model("detr-tiny", num_classes=3, dropout=0.0, position_at_input=True).eval()
    at_input.load_state_dict(plain.state_dict())  # same parameters: the option adds none
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = plain(images)["pred_boxes"], at_input(images)["pred_boxes"]
        at_input.transformer.position_at_input = False
        torch.testing.assert_close(at_input(images)["pred_boxes"], a)
    assert not torch.allclose(a, b)


def test_reference_points_are_where_each_query_predicts_its_box_centre():
    """With a zero box offset the predicted centre is the query's reference point."""
    torch.manual_seed(0)
    model = dt.build_model("detr-tiny", num_classes=3, reference_points=True, num_queries=6).eval()
    last = model.bbox_embed.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        boxes = model(torch.randn(2, 3, 64, 64))["pred_boxes"]  # [2, 6, 4]
        refs = model.reference_points(model.query_embed.weight).sigmoid()  # [6, 2]
    torch.testing.assert_close(boxes[..., :2], refs.expand(2, -1, -1))
    torch.testing.assert_close(boxes[..., 2:], torch.full((2, 6, 2), 0.5))


def test_point_code_equals_the_feature_maps_position_code_at_each_cell():
    from detr_tutorial.models.transformer import sine_embed_points

    h, w = 4, 6
    pos = PositionEmbeddingSine(32, normalize=True)(torch.zeros(1, h, w, dtype=torch.bool))[0]  # [64, h, w]
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    points = torch.stack([(cols + 1) / w, (rows + 1) / h], dim=-1).float()  # (x, y) as the sine code counts them
    torch.testing.assert_close(sine_embed_points(points, 64).permute(2, 0, 1), pos)


def _conditional_model(**overrides) -> DETR:
    torch.manual_seed(0)
    return dt.build_model(
        "detr-tiny", num_classes=3, dropout=0.0, reference_points=True, conditional_spatial_query=True, **overrides
    )


def test_conditional_decoder_attention_path_equals_the_fast_path():
    model = _conditional_model().eval()
    images = [torch.randn(3, 64, 64), torch.randn(3, 96, 64)]
    with torch.no_grad():
        fast, slow = model(images), model(images, return_attention=True)
    torch.testing.assert_close(slow["pred_boxes"], fast["pred_boxes"])
    torch.testing.assert_close(slow["pred_logits"], fast["pred_logits"])
    torch.testing.assert_close(slow["dec_attn"].sum(-1), torch.ones_like(slow["dec_attn"].sum(-1)))


def test_conditional_queries_look_near_their_reference_points():
    """The spatial channels alone (content zeroed) put a query's attention peak at its point."""
    model = _conditional_model().eval()
    layer = model.transformer.decoder.layers[0]
    d = layer.cross_attn.embed_dim
    with torch.no_grad():
        layer.cross_attn.in_proj_weight.zero_()  # no content channels
        for proj in (layer.ca_qpos_sine_proj, layer.ca_kpos_proj):  # spatial channels: identity
            proj.weight.copy_(torch.eye(d) * 4)
            proj.bias.zero_()
        model.reference_points.layers[-1].weight.zero_()
        model.reference_points.layers[-1].bias.copy_(torch.logit(torch.tensor([0.75, 0.25])))  # x, y
        out = model(torch.randn(1, 3, 128, 128), return_attention=True)
    h, w = out["feature_shape"]
    peak = out["dec_attn"][0, 0].mean(0).mean(0).argmax().item()  # layer 0, image 0, mean of heads, queries
    # the sine code counts cells from 1: x = (col + 1) / w, y = (row + 1) / h
    assert (peak // w, peak % w) == (round(0.25 * h) - 1, round(0.75 * w) - 1)


def test_conditional_spatial_query_needs_reference_points():
    with pytest.raises(ValueError, match="reference_points"):
        dt.build_model("detr-tiny", conditional_spatial_query=True)


def test_box_refinement_moves_each_layers_points_to_the_previous_layers_box_centres():
    model = _conditional_model(box_refine=True, dec_layers=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), return_attention=True)
    refs = out["reference_points"]  # [3, 2, Q, 2]
    first = model.reference_points(model.query_embed.weight).sigmoid()
    torch.testing.assert_close(refs[0], first.expand(2, -1, -1))
    for layer in (1, 2):
        previous = out["aux_outputs"][layer - 1]["pred_boxes"][..., :2]
        torch.testing.assert_close(refs[layer], previous)


def test_box_refinement_needs_the_conditional_decoder():
    with pytest.raises(ValueError, match="conditional_spatial_query"):
        dt.build_model("detr-tiny", reference_points=True, box_refine=True)


def _two_stage_model(**overrides) -> DETR:
    return _conditional_model(encoder_aux_loss=True, two_stage=True, num_queries=6, **overrides)


def _encoder_cells(model: DETR, images) -> dict:
    """The dense encoder head's predictions for ``images``, computed from a hooked memory."""
    seen = {}
    hook = model.transformer.encoder.register_forward_hook(lambda m, i, o: seen.update(memory=o[0]))
    from detr_tutorial.nested import to_nested

    nested = to_nested(images)
    try:
        with torch.no_grad():
            out = model(nested, return_attention=True)
    finally:
        hook.remove()
    b, h, w = nested.mask.shape[0], *out["feature_shape"]
    memory = seen["memory"].transpose(1, 2).reshape(b, -1, h, w)
    with torch.no_grad():
        mask = model.backbone(nested.tensors, nested.mask)[1]  # [B, h, w] padding cells
        return {"out": out, **model._encoder_predictions(memory, mask, nested.mask)}


def test_two_stage_queries_start_from_the_best_encoder_boxes():
    """Two-stage: the references are the boxes of the Q highest-scoring memory cells, and a query
    whose box offsets are zero predicts exactly its reference box."""
    model = _two_stage_model().eval()
    assert model.reference_points is None  # no learned points: the encoder chooses them
    with torch.no_grad():
        for layer in (model.bbox_embed.layers[-1],):
            layer.weight.zero_()
            layer.bias.zero_()
    cells = _encoder_cells(model, torch.randn(2, 3, 128, 128))
    best = cells["pred_logits"].sigmoid().max(-1).values.topk(6, dim=1).indices  # [2, 6]
    expected = torch.gather(cells["pred_boxes"], 1, best[..., None].expand(-1, -1, 4))
    out = cells["out"]
    torch.testing.assert_close(out["reference_points"][0], expected[..., :2])  # where layer 0 looks
    torch.testing.assert_close(out["pred_boxes"], expected.clamp(1e-4, 1 - 1e-4))  # zero offsets: the proposal


def test_two_stage_never_proposes_padding_cells():
    """Padding cells are skipped even when they score highest; the rest go by score."""
    model = _two_stage_model().eval()
    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])  # [1, 10 cells]
    padding = torch.zeros(1, 10, dtype=torch.bool)
    padding[0, :3] = True  # the three best cells are padding
    boxes = torch.linspace(0.05, 0.95, 10)[None, :, None].expand(1, 10, 4)  # cell i's box: all coords = i-th value
    encoder_out = {"pred_logits": torch.stack([scores, scores - 1], dim=-1), "pred_boxes": boxes, "padding": padding}
    chosen = model._proposals(encoder_out)  # [1, 6, 4]
    torch.testing.assert_close(chosen, boxes[:, 3:9])


def test_two_stage_trains_the_encoder_head_only_through_its_dense_loss():
    model = _two_stage_model().train()
    out = model(torch.randn(2, 3, 128, 128))
    out["pred_boxes"].sum().backward()  # a loss on the decoder's boxes alone
    assert model.enc_bbox_embed.layers[-1].weight.grad is None  # proposals are detached
    assert model.bbox_embed.layers[-1].weight.grad is not None
    assert out["enc_outputs"]["pred_boxes"].shape == (2, 16, 4)  # 4x4 cells at stride 32


def test_two_stage_needs_as_many_cells_as_queries():
    model = _two_stage_model().eval()
    with pytest.raises(ValueError, match="only 4"):
        model(torch.randn(1, 3, 64, 64))  # a 2x2 map at stride 32 for 6 queries


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(reference_points=True, conditional_spatial_query=True, two_stage=True), "encoder_aux_loss"),
        (dict(encoder_aux_loss=True, two_stage=True), "conditional_spatial_query"),
        (dict(reference_points=True, conditional_spatial_query=True, encoder_aux_loss=True, two_stage=True,
              query_groups=2), "query_groups"),
    ],
)
def test_two_stage_needs_the_encoder_head_and_the_conditional_decoder(overrides, match):
    with pytest.raises(ValueError, match=match):
        dt.get_config("detr-tiny", **overrides)


def _cell_units_model() -> DETR:
    model = _two_stage_model(encoder_cell_units=True).eval()
    with torch.no_grad():  # zero offsets: every cell predicts a cell-sized box on itself
        model.enc_bbox_embed.layers[-1].weight.zero_()
        model.enc_bbox_embed.layers[-1].bias.zero_()
    return model


def test_cell_units_make_a_zero_offset_a_cell_sized_box_at_the_cells_exact_centre():
    """With ``encoder_cell_units`` the dense head states sizes relative to its cell: at zero
    offsets each cell's box is one cell (stride 32 px) wide and high, centred on the cell, in
    each image's own normalized coordinates, also for a 96x80 image padded into a 128x128
    batch (3 x 2.5 cells of image: the last row of cells is half image, half padding)."""
    model = _cell_units_model()
    cells = _encoder_cells(model, [torch.randn(3, 128, 128), torch.randn(3, 80, 96)])
    boxes = cells["pred_boxes"].reshape(2, 4, 4, 4)  # [B, rows, cols, (cx, cy, w, h)]
    for i, (height, width) in enumerate([(128, 128), (80, 96)]):
        rows, cols = min(4, -(-height // 32)), min(4, -(-width // 32))
        centre_x = ((torch.arange(cols) + 0.5) * 32 / width).clamp(1e-4, 1 - 1e-4)  # 1.0 is on the edge
        centre_y = ((torch.arange(rows) + 0.5) * 32 / height).clamp(1e-4, 1 - 1e-4)
        torch.testing.assert_close(boxes[i, 0, :cols, 0], centre_x)
        torch.testing.assert_close(boxes[i, :rows, 0, 1], centre_y)
        torch.testing.assert_close(boxes[i, :rows, :cols, 2], torch.full((rows, cols), 32 / width))
        torch.testing.assert_close(boxes[i, :rows, :cols, 3], torch.full((rows, cols), 32 / height))


def test_without_cell_units_sizes_are_fractions_of_the_image():
    """The default head (kept for the checkpoints trained with it): a zero offset is half the image."""
    model = _two_stage_model().eval()
    with torch.no_grad():
        model.enc_bbox_embed.layers[-1].weight.zero_()
        model.enc_bbox_embed.layers[-1].bias.zero_()
    cells = _encoder_cells(model, torch.randn(1, 3, 128, 128))
    torch.testing.assert_close(cells["pred_boxes"][..., 2:], torch.full((1, 16, 2), 0.5))


def test_cell_units_need_the_encoder_head():
    with pytest.raises(ValueError, match="encoder_aux_loss"):
        dt.get_config("detr-tiny", encoder_cell_units=True)


@pytest.mark.parametrize(
    "backbone, stride, channels",
    [("smallcnn", 16, 128), ("smallcnn", 8, 64), ("resnet18", 32, 256), ("resnet18", 16, 128)],
)
def test_fine_features_are_the_previous_stage_at_twice_the_resolution(backbone, stride, channels):
    trunk = build_backbone(backbone, norm="bn", stride=stride, fine_features=True)
    mask = torch.zeros(2, 128, 128, dtype=torch.bool)
    mask[1, 64:] = True  # the second image is 64 rows high
    features, coarse_mask, fine, fine_mask = trunk(torch.randn(2, 3, 128, 128), mask)
    h = 128 // stride
    assert features.shape[-2:] == (h, h) and fine.shape == (2, channels, 2 * h, 2 * h)
    assert trunk.fine_channels == channels
    assert fine_mask[1, h:].all() and not fine_mask[1, :h].any()  # padding shrinks with the map


def test_decoder_attention_is_shared_between_the_memory_and_the_fine_map():
    model = _conditional_model(backbone="smallcnn", backbone_norm="bn", backbone_stride=16, fine_features=True).eval()
    with torch.no_grad():
        out = model([torch.randn(3, 128, 128), torch.randn(3, 96, 128)], return_attention=True)
        fast = model([torch.randn(3, 128, 128)])
    assert out["feature_shape"] == (8, 8) and out["fine_shape"] == (16, 16)
    assert out["dec_attn"].shape[-1] == 64 and out["dec_attn_fine"].shape[-1] == 256
    total = out["dec_attn"].sum(-1) + out["dec_attn_fine"].sum(-1)  # [L, B, heads, Q]
    torch.testing.assert_close(total, torch.ones_like(total))
    assert out["dec_attn_fine"][:, 1, ..., 12 * 16 :].abs().max() == 0  # the padded rows of image 2
    assert fast["pred_boxes"].shape == (1, 20, 4)


def test_fine_features_need_a_backbone_that_returns_them():
    backbone = build_backbone("resnet18", stride=32)
    with pytest.raises(ValueError, match="fine_features=True"):
        DETR(backbone, PositionEmbeddingSine(64), Transformer(d_model=128), num_classes=3, num_queries=5, fine_features=True)
    with pytest.raises(ValueError, match="dilation"):
        dt.get_config("detr-r50", fine_features=True, dilation=True)


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


def test_cell_geometry_counts_a_cell_as_the_images_when_its_centre_is_on_a_valid_pixel():
    from detr_tutorial.models.detr import cell_geometry

    image_mask = torch.ones(2, 144, 144, dtype=torch.bool)
    image_mask[0, :129, :120] = False  # 129 x 120 px: rows 0..7 have centres < 129, cols 0..6 < 120
    image_mask[1, :7, :7] = False  # smaller than half a cell: it keeps its one cell
    mask, extent = cell_geometry(image_mask, (9, 9), stride=16)
    assert (~mask[0]).sum(0).max().item() == 8 and (~mask[0]).sum(1).max().item() == 7
    assert (~mask[1]).sum().item() == 1
    torch.testing.assert_close(extent, torch.tensor([[129 / 16, 120 / 16], [7 / 16, 7 / 16]]))
    # the official nearest-neighbour mask would have kept the 9th row (a one-pixel sliver)
    from detr_tutorial.models.backbone import mask_to_feature_size

    assert (~mask_to_feature_size(image_mask, (9, 9))[0]).sum(0).max().item() == 9


@pytest.mark.parametrize("dec_layers", [1, 2])
def test_every_parameter_of_the_default_recipe_model_gets_a_gradient(dec_layers):
    """DDP stops on parameters the loss does not use ("parameters that were not used in producing
    loss"); a one-layer conditional decoder used to carry an unused ``query_scale``."""
    from detr_tutorial.criterion import build_criterion
    from detr_tutorial.recipes import get_recipe

    overrides = dict(get_recipe("shapes-cpu").model_overrides)
    overrides.update(hidden_dim=32, nheads=2, enc_layers=1, dec_layers=dec_layers, dim_feedforward=64, num_queries=5)
    cfg = dt.get_config("detr-tiny", **overrides, num_classes=3, class_names=["a", "b", "c"])
    torch.manual_seed(0)
    model, criterion = dt.build_model(cfg), build_criterion(cfg)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])
    targets = [{"labels": torch.tensor([0, 1]), "boxes": boxes} for _ in range(2)]
    criterion.total(criterion(model(torch.randn(2, 3, 64, 64)), targets)).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
