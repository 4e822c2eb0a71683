"""Specification of detr_tutorial.viz: drawing helpers, static figures and the three explorers.

The explorers are driven from Python the way a reader drives them in a notebook (setting a
control's ``.value``); each test checks that the drawn data is what the paper's definitions say
it should be, computed here independently from the model's raw outputs.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

import detr_tutorial as dt  # noqa: E402
from detr_tutorial import viz  # noqa: E402

pytest.importorskip("ipywidgets")

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
HEIGHT, WIDTH = 96, 128  # a ResNet with stride 32 gives a 3 x 4 feature map: 32 x 32 px cells
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return dt.build_model("detr-tiny", num_classes=3, pretrained_backbone=False, num_queries=6)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(3, HEIGHT, WIDTH, generator=generator)


@pytest.fixture(scope="module")
def reference(model, image) -> dict:
    """The model's raw outputs for the image, computed here without the viz package."""
    model.eval()
    with torch.no_grad():
        return model(((image - MEAN) / STD)[None], return_attention=True)


# -- drawing helpers ----------------------------------------------------------------------------
def test_denormalize_inverts_the_imagenet_normalization():
    pixels = torch.rand(3, 5, 7)
    assert torch.allclose(viz.denormalize((pixels - MEAN) / STD), pixels, atol=1e-6)


def test_to_display_image_gives_the_same_pixels_for_pil_and_tensor():
    array = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    from_pil = viz.to_display_image(Image.fromarray(array))
    from_tensor = viz.to_display_image(torch.from_numpy(array).permute(2, 0, 1).float() / 255)
    assert from_pil.shape == (4, 6, 3)
    np.testing.assert_allclose(from_pil, array / 255.0, atol=1e-6)
    np.testing.assert_allclose(from_tensor, array / 255.0, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (8, 8, 3), (4, 8, 8), (8, 8)])
def test_an_image_of_the_wrong_shape_raises_value_error(shape):
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        viz.to_display_image(torch.rand(*shape))


def test_an_already_normalized_image_is_rejected_with_a_hint():
    with pytest.raises(ValueError, match="denormalize"):
        viz.to_display_image((torch.rand(3, 8, 8) - MEAN) / STD - 1)


def test_attention_to_image_resizes_bilinearly_with_cell_centres_on_pixel_centres():
    # 2x2 -> 4x4, align_corners=False: source coordinate (dst + 0.5) / 2 - 0.5, clamped, so the
    # interpolation weights along each axis are 0, 0.25, 0.75, 1 (worked out by hand).
    heat = viz.attention_to_image(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), (4, 4))
    weights = np.array([0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(heat, 2 * weights[:, None] + weights[None, :], atol=1e-6)


def test_draw_boxes_draws_one_rectangle_and_caption_per_box():
    ax = Figure().add_subplot()
    boxes = torch.tensor([[1.0, 2.0, 5.0, 6.0], [0.0, 0.0, 3.0, 3.0]])
    viz.draw_boxes(ax, torch.rand(3, 8, 8), boxes, labels=[1, 0], scores=[0.9, 0.25],
                   class_names=["cat", "dog"])
    assert len(ax.patches) == 2
    assert (ax.patches[0].get_x(), ax.patches[0].get_y()) == (1.0, 2.0)
    assert (ax.patches[0].get_width(), ax.patches[0].get_height()) == (4.0, 4.0)
    assert [t.get_text() for t in ax.texts] == ["dog: 0.90", "cat: 0.25"]


def test_overlay_attention_stretches_the_map_over_the_whole_image():
    ax = Figure().add_subplot()
    artist = viz.overlay_attention(ax, torch.rand(3, 10, 20), torch.rand(2, 4))
    assert artist.get_array().shape == (10, 20)
    assert artist.get_extent() == [-0.5, 19.5, 9.5, -0.5]


def test_decoder_attention_grid_has_a_map_and_a_box_per_detection():
    detections = {"boxes": torch.tensor([[0.0, 0, 4, 4], [2, 2, 8, 8], [1, 1, 3, 3]]),
                  "scores": [0.9, 0.8, 0.7], "labels": [0, 1, 2]}
    fig = viz.plot_decoder_attention_grid(torch.rand(3, 8, 8), detections, torch.rand(3, 2, 2))
    assert isinstance(fig, Figure) and len(fig.axes) == 6


# -- encoder explorer ---------------------------------------------------------------------------
def test_encoder_row_map_is_the_points_row_of_the_attention_and_sums_to_one(model, image, reference):
    explorer = viz.EncoderAttentionExplorer(model, image)
    assert tuple(reference["feature_shape"]) == (3, 4)
    explorer.x_slider.value, explorer.y_slider.value = 70, 40  # cell (40 // 32, 70 // 32) = (1, 2)
    explorer.layer_dropdown.value = 0
    explorer.head_dropdown.value = 1
    expected = reference["enc_attn"][0, 0, 1, 1 * 4 + 2].reshape(3, 4).numpy()
    np.testing.assert_allclose(explorer.current_map, expected, atol=1e-6)
    assert explorer.current_map.sum() == pytest.approx(1.0, abs=1e-5)
    assert explorer.current_cell == (1, 2)


def test_encoder_column_map_is_the_points_column_of_the_attention(model, image, reference):
    explorer = viz.EncoderAttentionExplorer(model, image)
    explorer.x_slider.value, explorer.y_slider.value = 5, 90  # cell (2, 0) = position 8
    explorer.direction_buttons.value = "column"
    last = reference["enc_attn"].shape[0] - 1
    expected = reference["enc_attn"][last, 0].mean(0)[:, 8].reshape(3, 4).numpy()
    np.testing.assert_allclose(explorer.current_map, expected, atol=1e-6)


def test_encoder_explorer_offers_every_layer_and_every_head_plus_mean(model, image, reference):
    explorer = viz.EncoderAttentionExplorer(model, image)
    layers, _, heads = reference["enc_attn"].shape[:3]
    assert [value for _, value in explorer.layer_dropdown.options] == list(range(layers))
    assert [value for _, value in explorer.head_dropdown.options] == ["mean"] + list(range(heads))


def test_a_point_outside_the_image_gives_a_status_message_and_keeps_the_map(model, image):
    explorer = viz.EncoderAttentionExplorer(model, image)
    before = explorer.current_map.copy()
    explorer.set_point(WIDTH + 10, 5)
    assert "outside the image" in explorer.status
    assert "outside the image" in explorer.status_widget.value
    np.testing.assert_array_equal(explorer.current_map, before)


def test_a_click_on_the_drawn_image_moves_the_point_there(model, image):
    explorer = viz.EncoderAttentionExplorer(model, image)
    ax = explorer.figure.axes[0]
    px, py = ax.transData.transform((20, 70))  # display pixels, y measured from the bottom
    explorer.handle_click({"dataX": px, "dataY": explorer.figure.bbox.height - py})
    assert explorer.current_point == (20, 70)
    assert explorer.current_cell == (2, 0)


def test_clicks_are_wired_to_the_image_when_ipyevents_is_installed(model, image):
    pytest.importorskip("ipyevents")
    explorer = viz.EncoderAttentionExplorer(model, image, clicks=True)
    assert explorer._events.source is explorer.image_widget
    assert "click the picture" in explorer.status


def test_clicks_without_ipyevents_raise_an_import_error_saying_what_to_install(model, image,
                                                                               monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ipyevents", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install ipyevents"):
        viz.EncoderAttentionExplorer(model, image, clicks=True)


def test_without_ipyevents_the_explorer_falls_back_to_sliders_by_default(model, image,
                                                                         monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ipyevents", None)
    explorer = viz.EncoderAttentionExplorer(model, image)
    assert explorer._events is None
    assert "pip install ipyevents" in explorer.status


def test_clicks_false_attaches_no_event_listener(model, image):
    assert viz.EncoderAttentionExplorer(model, image, clicks=False)._events is None


def test_a_click_beside_the_pictures_gives_a_status_message(model, image):
    explorer = viz.EncoderAttentionExplorer(model, image)
    explorer.handle_click({"dataX": 0.0, "dataY": 0.0})
    assert "click on" in explorer.status


def test_explorers_show_their_figure_as_png_bytes(model, image):
    explorer = viz.EncoderAttentionExplorer(model, image)
    assert bytes(explorer.image_widget.value).startswith(PNG_MAGIC)


def test_explorer_runs_the_model_once_and_restores_its_mode(model, image):
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    model.train()
    try:
        explorer = viz.EncoderAttentionExplorer(model, image)
        explorer.x_slider.value = 3
        explorer.head_dropdown.value = 0
        explorer.layer_dropdown.value = 0
    finally:
        handle.remove()
    assert len(calls) == 1
    assert model.training
    model.eval()


def test_an_image_of_the_wrong_shape_fails_construction_with_value_error(model):
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        viz.EncoderAttentionExplorer(model, torch.rand(1, 3, HEIGHT, WIDTH))


def test_try_explorer_shows_the_message_of_a_wrong_image_in_a_widget(model):
    import ipywidgets

    shown = viz.try_explorer(viz.DecoderAttentionExplorer, model, torch.rand(HEIGHT, WIDTH))
    assert isinstance(shown, ipywidgets.HTML)
    assert "[3, H, W]" in shown.value


def test_setting_an_image_of_the_wrong_shape_later_gives_a_status_message(model, image):
    explorer = viz.EncoderAttentionExplorer(model, image)
    explorer.set_image(torch.rand(HEIGHT, WIDTH, 3, 2))
    assert "cannot use this image" in explorer.status


def test_encoder_attention_figure_has_two_axes(model, image):
    fig = viz.encoder_attention_figure(model, image, point=(10, 10), layer=0, head=0,
                                       direction="column")
    assert isinstance(fig, Figure) and len(fig.axes) == 2


# -- decoder explorer ---------------------------------------------------------------------------
def test_decoder_offers_the_detections_above_threshold_best_first(model, image, reference):
    scores = reference["pred_logits"][0].softmax(-1)[:, :-1].max(-1).values
    expected = [int(q) for q in torch.argsort(scores, descending=True) if scores[q] > 0.0]
    explorer = viz.DecoderAttentionExplorer(model, image, threshold=0.0)
    assert explorer.detections == expected


def test_decoder_map_is_the_cross_attention_of_the_chosen_detections_query(model, image, reference):
    explorer = viz.DecoderAttentionExplorer(model, image, threshold=0.0)
    query = explorer.detections[2]
    explorer.detection_dropdown.value = query
    explorer.layer_dropdown.value = 0
    explorer.head_dropdown.value = 3
    assert explorer.current_query == query
    expected = reference["dec_attn"][0, 0, 3, query].reshape(3, 4).numpy()
    np.testing.assert_allclose(explorer.current_map, expected, atol=1e-6)


def test_decoder_mean_of_heads_averages_the_heads(model, image, reference):
    explorer = viz.DecoderAttentionExplorer(model, image, threshold=0.0)
    query = explorer.current_query
    expected = reference["dec_attn"][-1, 0, :, query].mean(0).reshape(3, 4).numpy()
    np.testing.assert_allclose(explorer.current_map, expected, atol=1e-6)


def test_no_detection_above_the_threshold_gives_a_status_message(model, image):
    explorer = viz.DecoderAttentionExplorer(model, image, threshold=0.0)
    explorer.threshold_slider.value = 1.0
    assert explorer.detections == []
    assert explorer.current_query is None
    assert "no detection scores above" in explorer.status


def test_decoder_attention_figure_has_two_axes_and_the_grid_two_per_detection(model, image):
    assert len(viz.decoder_attention_figure(model, image, threshold=0.0).axes) == 2
    inference = viz.run_attention(model, image)
    grid = viz.decoder_attention_grid(inference, threshold=0.0, max_columns=3)
    assert len(grid.axes) == 6


# -- RT-DETR: AIFI on a coarse grid, deformable cross-attention -------------------------------
RT_HEIGHT, RT_WIDTH = 64, 96  # strides 8 and 16: a 8 x 12 finest level, AIFI on 4 x 6


@pytest.fixture(scope="module")
def rtdetr() -> torch.nn.Module:
    """A tiny random RT-DETR (2 levels, 4 heads, 4 points, 2 decoder layers, 6 queries)."""
    torch.manual_seed(0)
    return dt.build_model("rtdetr-r18", num_classes=3, backbone="smallcnn", backbone_norm="bn",
                          backbone_stride=16, pretrained_backbone=False, hidden_dim=32, enc_nheads=4,
                          enc_dim_feedforward=64, dec_nheads=4, dec_dim_feedforward=64, dec_layers=2,
                          num_queries=6, num_denoising=4, eval_spatial_size=None, expansion=0.5,
                          freeze_stem=None).eval()


@pytest.fixture(scope="module")
def rt_image() -> torch.Tensor:
    return torch.rand(3, RT_HEIGHT, RT_WIDTH, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def rt_reference(rtdetr, rt_image) -> dict:
    with torch.no_grad():
        return rtdetr(((rt_image - MEAN) / STD)[None], return_attention=True)


@pytest.fixture(scope="module")
def rt_inference(rtdetr, rt_image) -> viz.AttentionInference:
    return viz.run_attention(rtdetr, rt_image)


def test_a_dense_model_has_one_grid_for_encoder_and_decoder_and_no_sampling_points(model, image):
    inference = viz.run_attention(model, image)
    assert inference.encoder_shape == inference.decoder_shape == inference.feature_shape == (3, 4)
    assert not inference.deformable and inference.dec_sampling_locations is None


def test_rtdetr_inference_has_the_coarse_aifi_grid_and_the_finest_level_for_the_decoder(rt_inference):
    assert rt_inference.deformable
    assert rt_inference.encoder_shape == (4, 6) and rt_inference.decoder_shape == (8, 12)
    assert rt_inference.enc_attn.shape == (1, 4, 24, 24)  # [AIFI layers, heads, hw, hw]
    assert rt_inference.dec_attn.shape == (2, 4, 6, 96)  # [L_dec, heads, Q, h'w']
    assert rt_inference.dec_sampling_locations.shape == (2, 4, 6, 2, 4, 2)  # [L_dec, M, Q, L, P, 2]
    assert rt_inference.spatial_shapes == [(8, 12), (4, 6)]


def test_rtdetr_detections_are_one_per_query_its_best_pair_of_the_top_k(rtdetr, rt_image, rt_inference):
    """RT-DETR's post-processing keeps the top-k (query, class) pairs; the figures index
    detections by query, so each query keeps the pair of it that ranks first."""
    pairs = dt.predict(rtdetr, rt_image, threshold=0.0)[0]
    assert len(rt_inference.scores) == rt_inference.num_queries == 6
    for q in range(6):
        first = int(torch.nonzero(pairs["query"] == q)[0])
        assert rt_inference.scores[q] == pytest.approx(float(pairs["scores"][first]), abs=1e-6)
        assert int(rt_inference.labels[q]) == int(pairs["labels"][first])
        torch.testing.assert_close(rt_inference.boxes[q], pairs["boxes"][first], atol=1e-4, rtol=0)


def test_rtdetr_encoder_map_is_the_points_row_of_aifis_attention(rtdetr, rt_image, rt_reference):
    explorer = viz.EncoderAttentionExplorer(rtdetr, rt_image)
    explorer.x_slider.value, explorer.y_slider.value = 40, 50  # AIFI cell (50 // 16, 40 // 16) = (3, 2)
    explorer.head_dropdown.value = 2
    assert explorer.current_cell == (3, 2)
    expected = rt_reference["enc_attn"][0, 0, 2, 3 * 6 + 2].reshape(4, 6).numpy()
    np.testing.assert_allclose(explorer.current_map, expected, atol=1e-6)
    assert explorer.current_map.sum() == pytest.approx(1.0, abs=1e-5)


def test_rtdetr_decoder_map_is_the_splat_of_the_querys_sampling_points(rtdetr, rt_image, rt_reference):
    """The explorer's map of a detection is its query's points splatted onto the 8 x 12 grid,
    computed here by hand: each weight goes to the four surrounding cell centres, bilinearly."""
    explorer = viz.DecoderAttentionExplorer(rtdetr, rt_image, threshold=0.0)
    query = explorer.detections[1]
    explorer.detection_dropdown.value = query
    explorer.layer_dropdown.value = 0
    explorer.head_dropdown.value = 1
    loc = rt_reference["dec_sampling_locations"][0, 0, query, 1].reshape(-1, 2)  # [L * P, 2]
    weights = rt_reference["dec_attention_weights"][0, 0, query, 1].reshape(-1)
    expected = np.zeros((8, 12))
    for (x, y), wt in zip(loc.tolist(), weights.tolist()):
        px, py = x * 12 - 0.5, y * 8 - 0.5
        x0, y0 = int(np.floor(px)), int(np.floor(py))
        for cx, cy in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
            if 0 <= cx < 12 and 0 <= cy < 8:
                expected[cy, cx] += wt * (1 - abs(px - cx)) * (1 - abs(py - cy))
    np.testing.assert_allclose(explorer.current_map, expected, atol=1e-6)


def test_sampling_points_of_one_head_are_its_locations_in_pixels_with_weights_summing_to_one(
        rt_inference, rt_reference):
    points = viz.decoder_sampling_points(rt_inference, query=3, layer=-1, head=2)
    loc = rt_reference["dec_sampling_locations"][-1, 0, 3, 2].reshape(-1, 2)
    np.testing.assert_allclose(points["xy"], (loc * torch.tensor([RT_WIDTH, RT_HEIGHT])).numpy(), atol=1e-4)
    assert points["weight"].sum() == pytest.approx(1.0, abs=1e-5)
    assert points["level"].tolist() == [0] * 4 + [1] * 4 and set(points["head"].tolist()) == {2}


def test_sampling_points_of_the_mean_are_every_heads_with_weights_divided_by_the_heads(rt_inference):
    points = viz.decoder_sampling_points(rt_inference, query=0, head="mean")
    assert len(points["weight"]) == 4 * 2 * 4  # heads x levels x points
    assert points["weight"].sum() == pytest.approx(1.0, abs=1e-5)


def test_decoder_sampling_figure_has_one_panel_per_detection(rt_inference):
    fig = viz.decoder_sampling_figure(rt_inference, threshold=0.0, max_columns=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert len(fig.axes[0].collections) == 2  # one scatter per level


def test_a_dense_model_has_no_sampling_points_to_draw(model, image):
    inference = viz.run_attention(model, image)
    with pytest.raises(ValueError, match="attends densely"):
        viz.decoder_sampling_figure(inference, threshold=0.0)


# -- matching explorer --------------------------------------------------------------------------
def _disagreeing_outputs() -> tuple:
    """Two queries, two objects: by class q0 belongs to gt0, by box q0 belongs to gt1."""
    logits = torch.tensor([[[4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0]]])  # q0 says 0, q1 says 1
    boxes = torch.tensor([[[0.75, 0.5, 0.2, 0.2], [0.25, 0.5, 0.2, 0.2]]])  # q0 on gt1's box
    targets = [{"labels": torch.tensor([0, 1]),
                "boxes": torch.tensor([[0.25, 0.5, 0.2, 0.2], [0.75, 0.5, 0.2, 0.2]])}]
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


def _random_outputs(num_queries: int = 5, num_targets: int = 3) -> tuple:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(1, num_queries, 4, generator=generator)
    centres = torch.rand(1, num_queries, 2, generator=generator) * 0.5 + 0.25
    sizes = torch.rand(1, num_queries, 2, generator=generator) * 0.3 + 0.1
    tgt = torch.cat([torch.rand(num_targets, 2, generator=generator) * 0.5 + 0.25,
                     torch.rand(num_targets, 2, generator=generator) * 0.3 + 0.1], dim=1)
    targets = [{"labels": torch.arange(num_targets) % 3, "boxes": tgt}]
    return {"pred_logits": logits, "pred_boxes": torch.cat([centres, sizes], -1)}, targets


def _independent_terms(outputs: dict, target: dict) -> dict:
    """The matcher's unweighted terms from their definitions (torchvision for the GIoU)."""
    prob = outputs["pred_logits"][0].softmax(-1)
    xyxy = torchvision.ops.box_convert
    giou = torchvision.ops.generalized_box_iou(xyxy(outputs["pred_boxes"][0], "cxcywh", "xyxy"),
                                               xyxy(target["boxes"], "cxcywh", "xyxy"))
    l1 = (outputs["pred_boxes"][0][:, None, :] - target["boxes"][None, :, :]).abs().sum(-1)
    return {"class": -prob[:, target["labels"]].numpy(), "bbox": l1.numpy(), "giou": -giou.numpy()}


def test_cost_matrix_is_the_weighted_sum_of_the_three_terms():
    outputs, targets = _random_outputs()
    explorer = viz.MatchingExplorer(outputs, targets, cost_class=1, cost_bbox=5, cost_giou=2)
    terms = _independent_terms(outputs, targets[0])
    expected = 1 * terms["class"] + 5 * terms["bbox"] + 2 * terms["giou"]
    assert explorer.current_matrix.shape == (5, 3)
    np.testing.assert_allclose(explorer.current_matrix, expected, atol=1e-5)


def test_a_zero_weight_removes_its_term_from_the_matrix():
    outputs, targets = _random_outputs()
    explorer = viz.MatchingExplorer(outputs, targets, cost_class=1, cost_bbox=5, cost_giou=2)
    explorer.bbox_slider.value = 0.0
    terms = _independent_terms(outputs, targets[0])
    np.testing.assert_allclose(explorer.current_matrix, 1 * terms["class"] + 2 * terms["giou"],
                               atol=1e-5)


def test_the_assignment_is_the_hungarian_solution_of_the_shown_matrix():
    outputs, targets = _random_outputs(num_queries=6, num_targets=4)
    explorer = viz.MatchingExplorer(outputs, targets)
    explorer.giou_slider.value = 7.5
    rows, cols = linear_sum_assignment(explorer.current_matrix)
    np.testing.assert_array_equal(explorer.current_assignment[0], rows)
    np.testing.assert_array_equal(explorer.current_assignment[1], cols)


def test_weights_decide_between_the_class_and_the_box_evidence():
    outputs, targets = _disagreeing_outputs()
    explorer = viz.MatchingExplorer(outputs, targets, cost_class=1, cost_bbox=0, cost_giou=0)
    assert explorer.current_assignment[1].tolist() == [0, 1]  # q0 -> gt0 by class
    explorer.class_slider.value, explorer.bbox_slider.value = 0.0, 5.0
    assert explorer.current_assignment[1].tolist() == [1, 0]  # q0 -> gt1 by box


def test_loss_terms_are_those_of_set_criterion_with_the_same_matcher_weights():
    outputs, targets = _random_outputs()
    explorer = viz.MatchingExplorer(outputs, targets, cost_class=2, cost_bbox=1, cost_giou=0.5)
    matcher = dt.HungarianMatcher(cost_class=2, cost_bbox=1, cost_giou=0.5)
    criterion = dt.SetCriterion(3, matcher, {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2},
                                eos_coef=0.1)
    expected = criterion(outputs, targets)
    for key in ("loss_ce", "loss_bbox", "loss_giou"):
        assert explorer.current_losses[key] == pytest.approx(float(expected[key]), rel=1e-5)
    assert explorer.current_losses["total"] == pytest.approx(float(criterion.total(expected)),
                                                             rel=1e-5)


def test_all_weights_zero_gives_a_status_message_not_an_exception():
    outputs, targets = _random_outputs()
    explorer = viz.MatchingExplorer(outputs, targets)
    for slider in (explorer.class_slider, explorer.bbox_slider, explorer.giou_slider):
        slider.value = 0.0
    assert "all cost weights are 0" in explorer.status


def test_an_image_without_objects_matches_nothing_and_says_so():
    outputs, _ = _random_outputs()
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    explorer = viz.MatchingExplorer(outputs, targets)
    assert explorer.current_matrix.shape == (5, 0)
    assert explorer.current_assignment[0].size == 0
    assert "matched none" in explorer.status


def test_the_image_dropdown_picks_an_image_of_the_batch():
    first, first_targets = _random_outputs()
    second, second_targets = _disagreeing_outputs()
    # pad the second image's two queries to five so both images share one batch
    batch = {key: torch.cat([first[key], torch.cat([second[key], first[key][:, 2:]], 1)])
             for key in ("pred_logits", "pred_boxes")}
    explorer = viz.MatchingExplorer(batch, first_targets + second_targets)
    assert explorer.current_matrix.shape == (5, 3)
    explorer.image_dropdown.value = 1
    assert explorer.current_matrix.shape == (5, 2)


def test_matching_figure_has_three_axes_with_or_without_an_image():
    outputs, targets = _random_outputs()
    assert len(viz.matching_figure(outputs, targets).axes) == 3
    assert len(viz.matching_figure(outputs, targets, image=torch.rand(3, 20, 30)).axes) == 3


def test_importing_viz_works_without_ipywidgets():
    import subprocess
    import sys

    # a None entry in sys.modules makes "import ipywidgets" fail, as if it were not installed
    code = "import sys; sys.modules['ipywidgets'] = None; import detr_tutorial.viz"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_building_an_explorer_without_ipywidgets_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    outputs, targets = _random_outputs()
    with pytest.raises(ImportError, match="pip install ipywidgets"):
        viz.MatchingExplorer(outputs, targets)
