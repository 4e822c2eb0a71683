"""The conditional family: Conditional DETR's decoder, the dense encoder head, two-stage queries.

Each step of ``ConditionalDETR.forward`` (encode -> dense head -> proposals -> decode -> heads) is
checked against an independent expectation: zeroed offsets give the reference itself, the spatial
channels alone look at the reference point, padding is never proposed.
"""
import pytest
import torch

import detr_tutorial as dt
from detr_tutorial.families.conditional import ConditionalDETR, DenseHeadCriterion, cell_geometry
from detr_tutorial.models import PositionEmbeddingSine
from detr_tutorial.models.position_encoding import sine_embed_points
from detr_tutorial.nested import to_nested


def _conditional_model(**overrides) -> ConditionalDETR:
    torch.manual_seed(0)
    return dt.build_model("detr-tiny", num_classes=3, dropout=0.0, family="conditional", **overrides)


def _two_stage_model(**overrides) -> ConditionalDETR:
    return _conditional_model(encoder_aux_loss=True, two_stage=True, num_queries=6, **overrides)


def _dense(model: ConditionalDETR, images) -> dict:
    """The dense head's predictions for ``images``, computed step by step beside a full forward."""
    nested = to_nested(images)
    with torch.no_grad():
        out = model(nested, return_attention=True)
        features, mask, pos = model.embed(nested)
        src = model.input_proj(features)
        if model.position_at_input:
            src = src + pos
        memory = model.transformer.encode(src, mask, pos)[0]
        return {"out": out, **model.dense_predictions(memory, mask, nested.mask)}


def test_the_family_field_builds_the_family_model_and_its_loss():
    model = _conditional_model(encoder_aux_loss=True)
    assert type(model) is ConditionalDETR and model.config.family == "conditional"
    assert isinstance(dt.build_criterion(model.config), DenseHeadCriterion)
    assert type(dt.build_model("detr-tiny", num_classes=3)) is dt.DETR


def test_position_at_input_changes_only_what_the_encoder_reads():
    plain = _conditional_model().eval()
    at_input = _conditional_model(position_at_input=True).eval()
    at_input.load_state_dict(plain.state_dict())  # same parameters: the option adds none
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = plain(images)["pred_boxes"], at_input(images)["pred_boxes"]
        at_input.position_at_input = False
        torch.testing.assert_close(at_input(images)["pred_boxes"], a)
    assert not torch.allclose(a, b)


def test_reference_points_are_where_each_query_predicts_its_box_centre():
    """With a zero box offset the predicted centre is the query's reference point."""
    model = _conditional_model(num_queries=6).eval()
    last = model.bbox_embed.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        boxes = model(torch.randn(2, 3, 64, 64))["pred_boxes"]  # [2, 6, 4]
        refs = model.reference_points(model.query_embed.weight).sigmoid()  # [6, 2]
    torch.testing.assert_close(boxes[..., :2], refs.expand(2, -1, -1))
    torch.testing.assert_close(boxes[..., 2:], torch.full((2, 6, 2), 0.5))


def test_point_code_equals_the_feature_maps_position_code_at_each_cell():
    h, w = 4, 6
    pos = PositionEmbeddingSine(32, normalize=True)(torch.zeros(1, h, w, dtype=torch.bool))[0]  # [64, h, w]
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    points = torch.stack([(cols + 1) / w, (rows + 1) / h], dim=-1).float()  # (x, y) as the sine code counts them
    torch.testing.assert_close(sine_embed_points(points, 64).permute(2, 0, 1), pos)


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


def test_two_stage_queries_start_from_the_best_encoder_boxes():
    """Two-stage: the references are the boxes of the Q highest-scoring memory cells, and a query
    whose box offsets are zero predicts exactly its reference box."""
    model = _two_stage_model().eval()
    assert model.reference_points is None  # no learned points: the encoder chooses them
    with torch.no_grad():
        model.bbox_embed.layers[-1].weight.zero_()
        model.bbox_embed.layers[-1].bias.zero_()
    cells = _dense(model, torch.randn(2, 3, 128, 128))
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
    dense = {"pred_logits": torch.stack([scores, scores - 1], dim=-1), "pred_boxes": boxes, "padding": padding}
    torch.testing.assert_close(model.proposals(dense), boxes[:, 3:9])


def test_two_stage_trains_the_encoder_head_only_through_its_dense_loss():
    model = _two_stage_model().train()
    out = model(torch.randn(2, 3, 128, 128))
    out["pred_boxes"].sum().backward()  # a loss on the decoder's boxes alone
    assert model.enc_bbox_embed.layers[-1].weight.grad is None  # proposals are detached
    assert model.bbox_embed.layers[-1].weight.grad is not None
    assert out["enc_outputs"]["pred_boxes"].shape == (2, 16, 4)  # 4x4 cells at stride 32


def test_the_dense_head_runs_at_inference_only_for_two_stage():
    images = torch.randn(1, 3, 128, 128)
    for two_stage in (False, True):
        model = _conditional_model(encoder_aux_loss=True, two_stage=two_stage, num_queries=6)
        assert "enc_outputs" in model.train()(images)
        assert "enc_outputs" not in model.eval()(images)


def test_two_stage_needs_as_many_cells_as_queries():
    model = _two_stage_model().eval()
    with pytest.raises(ValueError, match="only 4"):
        model(torch.randn(1, 3, 64, 64))  # a 2x2 map at stride 32 for 6 queries


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(family="conditional", two_stage=True), "set encoder_aux_loss=True"),
        (dict(family="conditional", encoder_cell_units=True), "set encoder_aux_loss=True"),
        (dict(family="conditional", pre_norm=True), "post-norm only"),
        (dict(encoder_aux_loss=True, two_stage=True), "belongs to family 'conditional'"),
        (dict(box_refine=True), "option box_refine=True belongs to family 'conditional'"),
        (dict(position_at_input=True), "belongs to family 'conditional'"),
    ],
)
def test_each_option_is_checked_once_with_its_family(overrides, match):
    with pytest.raises(ValueError, match=match):
        dt.get_config("detr-tiny", **overrides)


def _cell_units_model() -> ConditionalDETR:
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
    cells = _dense(model, [torch.randn(3, 128, 128), torch.randn(3, 80, 96)])
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
    cells = _dense(model, torch.randn(1, 3, 128, 128))
    torch.testing.assert_close(cells["pred_boxes"][..., 2:], torch.full((1, 16, 2), 0.5))


def test_cell_geometry_counts_a_cell_as_the_images_when_its_centre_is_on_a_valid_pixel():
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


def test_the_conditional_transformer_refuses_a_one_call_forward():
    model = _conditional_model()
    with pytest.raises(TypeError, match="reference"):
        model.transformer(torch.randn(1, 128, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool),
                          model.query_embed.weight, torch.randn(1, 128, 2, 2))


@pytest.mark.parametrize("dec_layers", [1, 2])
def test_every_parameter_of_the_default_recipe_model_gets_a_gradient(dec_layers):
    """DDP stops on parameters the loss does not use ("parameters that were not used in producing
    loss"); a one-layer conditional decoder used to carry an unused ``query_scale``."""
    from detr_tutorial.recipes import get_recipe

    overrides = dict(get_recipe("shapes-cpu").model_overrides)
    overrides.update(hidden_dim=32, nheads=2, enc_layers=1, dec_layers=dec_layers, dim_feedforward=64, num_queries=5)
    cfg = dt.get_config("detr-tiny", **overrides, num_classes=3, class_names=["a", "b", "c"])
    torch.manual_seed(0)
    model, criterion = dt.build_model(cfg), dt.build_criterion(cfg)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])
    targets = [{"labels": torch.tensor([0, 1]), "boxes": boxes} for _ in range(2)]
    criterion.total(criterion(model(torch.randn(2, 3, 64, 64)), targets)).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


WEIGHTS = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}


def _encoder_outputs(h: int = 4, w: int = 4, num_classes: int = 3) -> dict:
    """A 4x4 grid of cells over one unpadded image, every cell predicting nothing and a dummy box."""
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    centres = torch.stack([xs.flatten() / w, ys.flatten() / h], dim=-1)[None]  # [1, 16, 2]
    return {
        "pred_logits": torch.full((1, h * w, num_classes), -5.0),
        "pred_boxes": torch.cat([centres, torch.full((1, h * w, 2), 0.1)], dim=-1),
        "centres": centres,
        "cell_size": torch.tensor([[1 / w, 1 / h]]),
        "padding": torch.zeros(1, h * w, dtype=torch.bool),
    }


def test_encoder_loss_supervises_the_cells_around_each_object_centre():
    criterion = DenseHeadCriterion(3, dt.HungarianMatcher(2, 5, 2, focal=True), WEIGHTS, focal=True, encoder_radius=0.25)
    enc = _encoder_outputs()
    # a big object centred in cell (row 1, col 1) reaching over cell (1, 2); a small one in cell (3, 3)
    targets = [{"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.45, 0.375, 0.8, 0.5], [0.875, 0.875, 0.1, 0.1]])}]
    enc["pred_boxes"][0, 5] = targets[0]["boxes"][0]  # cell (1, 1) predicts the big object exactly
    enc["pred_boxes"][0, 6] = targets[0]["boxes"][0]  # cell (1, 2) is within 0.25 * 0.8 = 0.2 of its centre in x
    enc["pred_boxes"][0, 15] = targets[0]["boxes"][1]  # the small object: only its own cell
    losses = criterion.loss_encoder(enc, targets)
    assert losses["loss_enc_bbox"].item() == 0 and losses["loss_enc_giou"].item() == pytest.approx(0, abs=1e-6)
    # a positive cell that predicts the wrong box is penalized; a negative one is not
    enc["pred_boxes"][0, 0] = torch.tensor([0.9, 0.9, 0.3, 0.3])  # cell (0, 0): no object near it
    assert criterion.loss_encoder(enc, targets)["loss_enc_bbox"].item() == 0
    enc["pred_boxes"][0, 6] = torch.tensor([0.9, 0.9, 0.3, 0.3])
    assert criterion.loss_encoder(enc, targets)["loss_enc_bbox"].item() > 0


def test_encoder_loss_ignores_padding_cells_and_images_without_objects():
    criterion = DenseHeadCriterion(3, dt.HungarianMatcher(2, 5, 2, focal=True), WEIGHTS, focal=True)
    enc = _encoder_outputs()
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    base = criterion.loss_encoder(enc, empty)["loss_enc_ce"]
    enc["pred_logits"][0, :4] = 8.0  # confident detections in the first row ...
    assert criterion.loss_encoder(enc, empty)["loss_enc_ce"] > base
    enc["padding"][0, :4] = True  # ... that are padding cells do not count
    torch.testing.assert_close(criterion.loss_encoder(enc, empty)["loss_enc_ce"], base * 12 / 16)


def test_encoder_head_trains_only_and_its_terms_are_weighted():
    torch.manual_seed(0)
    model = dt.build_model("detr-tiny", num_classes=3, focal_loss=True, family="conditional", encoder_aux_loss=True,
                           encoder_aux_coef=0.5)
    criterion = dt.build_criterion(model.config)
    assert criterion.weight_for("loss_enc_bbox") == 2.5 and criterion.weight_for("loss_enc_ce") == 0.5
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]])}]
    out = model(torch.randn(1, 3, 64, 64))
    assert out["enc_outputs"]["pred_logits"].shape == (1, 4, 3)  # 2x2 cells at stride 32
    losses = criterion(out, targets)
    assert {"loss_enc_ce", "loss_enc_bbox", "loss_enc_giou"} <= set(losses)
    criterion.total(losses).backward()
    assert model.enc_bbox_embed.layers[0].weight.grad.abs().sum() > 0
    assert "enc_outputs" not in model.eval()(torch.randn(1, 3, 64, 64))


def _flag_era_config(**flags) -> dict:
    """A config dict as checkpoints wrote it before families existed (the shipped model's era)."""
    d = dt.get_config("detr-tiny", num_classes=3).to_dict()
    del d["family"]
    d.update(query_groups=1, fine_features=False, reference_points=False, conditional_spatial_query=False)
    d.update(flags)
    return d


def test_a_flag_era_config_is_translated_to_its_family():
    old = _flag_era_config(reference_points=True, conditional_spatial_query=True, encoder_aux_loss=True,
                           two_stage=True, box_refine=True)
    cfg = dt.DETRConfig.from_dict(old)
    assert cfg.family == "conditional" and cfg.two_stage and cfg.box_refine and cfg.encoder_aux_loss
    assert dt.DETRConfig.from_dict(_flag_era_config()).family == "detr"


def test_a_checkpoint_written_with_the_old_flags_loads_as_the_conditional_family_with_its_weights(tmp_path):
    """The shipped model of 2026-11 was such a file: checkpoints trained before families existed
    keep loading, as the family their flags describe."""
    from detr_tutorial.checkpoint import FORMAT, model_from_checkpoint, save_checkpoint

    old = _flag_era_config(reference_points=True, conditional_spatial_query=True, encoder_aux_loss=True,
                           two_stage=True, box_refine=True, position_at_input=True)
    torch.manual_seed(0)
    written = dt.build_model(dt.DETRConfig.from_dict(dict(old)))
    path = save_checkpoint({"format": FORMAT, "config": old, "model": written.state_dict()}, tmp_path / "old.pth")
    assert "family" not in torch.load(path, weights_only=True)["config"]
    loaded = model_from_checkpoint(path)
    assert type(loaded) is ConditionalDETR
    for (name, a), b in zip(written.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "flags, match",
    [
        (dict(query_groups=2), "query_groups.*cannot be rebuilt"),
        (dict(fine_features=True), "fine_features.*cannot be rebuilt"),
        (dict(reference_points=True), "reference points without the conditional decoder"),
        (dict(encoder_aux_loss=True), "belongs to family 'conditional'"),
    ],
)
def test_a_flag_era_config_that_this_version_cannot_build_is_refused_with_the_reason(flags, match):
    with pytest.raises(ValueError, match=match):
        dt.DETRConfig.from_dict(_flag_era_config(**flags))
