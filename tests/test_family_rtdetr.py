"""The rtdetr family equals the official RT-DETR (lyuwenyu/RT-DETR, ``rtdetr_pytorch``).

``../shared/reference/rtdetr`` (its README says how it was made) holds an official RT-DETR with a
PResNet-18-vd trunk (hidden 64, 4 heads, FFN 128, 10 queries, 5 classes, 3 decoder layers,
``eval_spatial_size`` (64, 416)), two [0, 1] images, every stage's output, the matcher's cost
matrices and indices, the criterion's terms and the post-processed detections. The model is built
here from the same configuration and loaded with ``dt.load_official_state_dict``; each stage is
fed the *stored* output of the stage before it (so a difference is located where it arises) and
must give the stored tensors to 1e-5 of each tensor's scale, ``max(1, max |value|)`` (float32
rounding only: the largest seen, 1.4e-5 on backbone values up to 17, is a relative 8e-7, the order
in which a 4608-term convolution sum is added, which differs between CPUs).
"""
import json
import math
from functools import lru_cache

import pytest
import torch

import detr_tutorial as dt
from detr_tutorial.families.rtdetr import RTDETR
from detr_tutorial.families.rtdetr_decoder import generate_anchors
from detr_tutorial.families.rtdetr_denoising import (contrastive_denoising_group, denoising_attn_mask,
                                                     dn_matched_indices, inverse_sigmoid)
from detr_tutorial.families.rtdetr_encoder import build_2d_sincos_position_embedding
from detr_tutorial.families.rtdetr_loss import RTDETRCriterion, RTDETRPostProcess
from reference_data import reference_path

#: README "Model": the official build, in this package's option names
REFERENCE_MODEL = dict(
    num_classes=5, backbone="presnet18", pretrained_backbone=False, backbone_norm="bn", freeze_stem=False,
    hidden_dim=64, enc_nheads=4, enc_dim_feedforward=128, enc_layers=1, expansion=0.5, depth_mult=1.0,
    dec_nheads=4, dec_dim_feedforward=128, dec_layers=3, dec_n_points=4, num_queries=10, dropout=0.0,
    num_denoising=100, label_noise_ratio=0.5, box_noise_scale=1.0, eval_spatial_size=(64, 416), eval_idx=-1,
    num_top_queries=30,
)
TOL = 1e-5


def _path(name: str):
    return reference_path(f"rtdetr/{name}")


@lru_cache(maxsize=None)
def _io() -> dict:
    return torch.load(_path("rtdetr_io.pt"), weights_only=True)


@lru_cache(maxsize=None)
def _json() -> dict:
    return json.loads(_path("reference.json").read_text())


@lru_cache(maxsize=None)
def _state() -> dict:
    return torch.load(_path("rtdetr_model.pth"), weights_only=True)


def _model() -> RTDETR:
    model = dt.build_model("rtdetr-r18", **REFERENCE_MODEL)
    dt.load_official_state_dict(model, _state())
    return model.eval()


def _d(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def _scaled(ours, theirs) -> float:
    """Max abs difference in units of the reference's scale, ``max(1, max |theirs|)``.

    float32 rounding grows with the size of the values (a 4608-term convolution sum added in
    another order on another CPU's vector unit differs by a few 1e-6 of its magnitude), so the
    bound is relative to the tensor's largest value; a wrong formula differs by far more.
    """
    return _d(ours, theirs) / max(1.0, theirs.float().abs().max().item() if theirs.numel() else 1.0)


def _inter() -> dict:
    return _io()["intermediates"]


# -- the model, stage by stage ---------------------------------------------------------------------
def test_official_checkpoint_loads_strictly_with_the_official_parameter_count():
    model = _model()
    assert len(model.state_dict()) == len(_state()["model"]) == 533
    assert sum(p.numel() for p in model.parameters()) == 11_755_700
    assert sum(p.numel() for p in model.backbone.parameters()) == 11_199_968


def test_presnet18_vd_gives_the_official_stride_8_16_32_features():
    model = _model()
    with torch.no_grad():
        feats = model.backbone(_io()["images"])
    assert [tuple(f.shape) for f in feats] == [(2, 128, 8, 52), (2, 256, 4, 26), (2, 512, 2, 13)]
    for ours, theirs in zip(feats, _inter()["backbone_features"]):
        assert _scaled(ours, theirs) <= TOL


def test_aifi_position_table_is_the_official_transposed_sincos_table():
    """Row ``k`` codes ``i = k // h``, ``j = k % h`` (README): checked against a hand computation."""
    table = build_2d_sincos_position_embedding(13, 2, 64, 10000)
    assert torch.equal(table, _inter()["aifi_pos_embed"])
    k = 7  # i = 3, j = 1
    w_d = 10000 ** (-torch.arange(16) / 16)
    expected = torch.cat([(3 * w_d).sin(), (3 * w_d).cos(), (1 * w_d).sin(), (1 * w_d).cos()])
    torch.testing.assert_close(table[0, k], expected.float(), rtol=0, atol=1e-6)


def test_aifi_input_and_output_equal_the_official():
    enc = _model().encoder
    with torch.no_grad():
        proj = enc.input_proj[2](_inter()["backbone_features"][2])
        flat = proj.flatten(2).permute(0, 2, 1)  # row-major: token k is y = k // 13, x = k % 13
        out = enc.encoder[0](flat, enc.position_table(2, 2, 13, flat.device))
    assert _scaled(flat, _inter()["aifi_input"]) <= TOL
    assert _scaled(out, _inter()["aifi_output"]) <= TOL


def test_hybrid_encoder_outputs_equal_the_official():
    with torch.no_grad():
        outs = _model().encoder(_inter()["backbone_features"])
    for ours, theirs in zip(outs, _inter()["encoder_outputs"]):
        assert ours.shape == theirs.shape and _scaled(ours, theirs) <= TOL


def test_anchors_are_invalid_exactly_at_the_16_border_cells_of_level_0():
    anchors, valid = generate_anchors([[8, 52], [4, 26], [2, 13]])
    assert anchors.shape == (1, 546, 4) and int((~valid).sum()) == _json()["margins"]["invalid_anchors"] == 16
    cols = torch.nonzero(~valid[0, :416, 0]).flatten() % 52
    assert sorted(set(cols.tolist())) == [0, 51]  # x centre 0.5 / 52 < 0.01 and 51.5 / 52 > 0.99
    assert torch.isinf(anchors[~valid[..., 0]]).all()
    assert torch.allclose(anchors[0, 1], torch.logit(torch.tensor([1.5 / 52, 0.5 / 8, 0.05, 0.05])))


def test_memory_and_iou_aware_query_selection_equal_the_official():
    dec = _model().decoder
    with torch.no_grad():
        memory, shapes, starts = dec.memory(_inter()["encoder_outputs"])
        sel = dec.select_queries(memory, shapes)
    assert shapes == _inter()["spatial_shapes"].tolist() and starts == _inter()["level_start_index"].tolist()
    assert _scaled(memory, _inter()["decoder_memory"]) <= TOL
    assert _scaled(sel["enc_outputs_class"], _inter()["enc_outputs_class"]) <= TOL
    for mine, theirs in (("target", "decoder_target"), ("ref_unact", "init_ref_points_unact"),
                         ("enc_topk_bboxes", "enc_topk_bboxes"), ("enc_topk_logits", "enc_topk_logits")):
        assert _scaled(sel[mine], _inter()[theirs]) <= TOL, mine
    _, valid = generate_anchors(shapes)
    assert not (~valid[0, :, 0])[sel["topk_ind"]].any()  # no invalid anchor is selected


def test_decoder_layers_and_outputs_equal_the_official():
    dec = _model().decoder
    with torch.no_grad():
        out, inter = dec.forward_with_intermediates(_inter()["encoder_outputs"])
    for ours, theirs in zip(inter["decoder_layer_outputs"], _inter()["decoder_layer_outputs"]):
        assert _scaled(ours, theirs) <= TOL
    for key in ("pred_logits", "pred_boxes"):
        assert _scaled(out[key], _io()["outputs"][key]) <= TOL, key


def test_whole_model_on_the_official_images_equals_the_official_outputs():
    with torch.no_grad():
        out = _model()(_io()["images"], pixels=True)
    assert set(out) == {"pred_logits", "pred_boxes"}
    for key in ("pred_logits", "pred_boxes"):
        assert _scaled(out[key], _io()["outputs"][key]) <= TOL, key


def test_normalized_input_is_mapped_back_to_the_official_pixels():
    """The package's convention (ImageNet mean/std) in, the official [0, 1] pixels inside: the same
    outputs up to the round trip's float rounding (x - m) / s * s + m (measured 3.8e-6)."""
    model = _model()
    images = _io()["images"]
    normalized = (images - model.pixel_mean) / model.pixel_std
    with torch.no_grad():
        out = model(normalized)
    for key in ("pred_logits", "pred_boxes"):
        assert _scaled(out[key], _io()["outputs"][key]) <= TOL, key


def test_training_mode_outputs_without_denoising_equal_the_official():
    model = _model().train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    model.decoder.num_denoising = 0
    with torch.no_grad():
        out = model(_io()["images"], pixels=True)
    ref = _io()["train_mode_outputs"]
    for key in ("pred_logits", "pred_boxes"):
        assert _scaled(out[key], ref[key]) <= TOL, key
    assert len(out["aux_outputs"]) == len(ref["aux_outputs"]) == 3
    for i, (ours, theirs) in enumerate(zip(out["aux_outputs"], ref["aux_outputs"])):
        for key in ("pred_logits", "pred_boxes"):
            assert _scaled(ours[key], theirs[key]) <= TOL, (i, key)


# -- matching, loss, post-processing ------------------------------------------------------------------
def _criterion() -> RTDETRCriterion:
    criterion = dt.build_criterion(dt.get_config("rtdetr-r18", **REFERENCE_MODEL))
    assert isinstance(criterion, RTDETRCriterion) and criterion.weight_dict == _json()["weight_dict"]
    assert (criterion.alpha, criterion.gamma) == (0.75, 2.0)
    m = criterion.matcher
    assert (m.cost_class, m.cost_bbox, m.cost_giou, m.focal_alpha, m.focal_gamma) == (2, 5, 2, 0.25, 2.0)
    return criterion


def _outputs(mode: str) -> dict:
    return _io()["outputs" if mode == "eval" else "train_mode_outputs"]


@pytest.mark.parametrize("mode", ["eval", "train_mode"])
@pytest.mark.parametrize("suffix", ["", "_with_empty"])
def test_matcher_costs_and_indices_equal_the_official(mode, suffix):
    matcher = _criterion().matcher
    targets = _io()["targets" if not suffix else "empty_targets"]
    out = _outputs(mode)
    calls = {"final": out, **{f"aux_{i}": a for i, a in enumerate(out.get("aux_outputs", []))}}
    costs = _io()[f"{mode}_matcher_costs{suffix}"]
    expected = _json()[mode]["indices" + suffix]
    assert set(calls) == set(costs) == set(expected)
    for name, o in calls.items():
        for ours, theirs in zip(matcher.cost_matrices(o, targets), costs[name]):
            assert ours.shape == theirs.shape and (ours.numel() == 0 or _scaled(ours, theirs) <= TOL), name
        assert [[i.tolist(), j.tolist()] for i, j in matcher(o, targets)] == expected[name], name


@pytest.mark.parametrize("mode", ["eval", "train_mode"])
@pytest.mark.parametrize("suffix", ["", "_with_empty"])
def test_unweighted_terms_and_weighted_total_equal_the_official(mode, suffix):
    criterion = _criterion()
    losses = criterion(_outputs(mode), _io()["targets" if not suffix else "empty_targets"])
    unweighted = _json()[mode]["losses_unweighted" + suffix]
    weighted = _json()[mode]["losses" + suffix]
    assert set(losses) == set(unweighted) == set(weighted)
    for key, value in unweighted.items():
        assert abs(losses[key].item() - value) <= TOL * max(1.0, abs(value)), key
        assert abs(losses[key].item() * criterion.weight_for(key) - weighted[key]) <= TOL * max(1.0, abs(weighted[key]))
    total = sum(weighted.values())
    assert abs(criterion.total(losses).item() - total) <= TOL * total


def test_postprocess_gives_the_official_top_30_detections():
    post = dt.build_postprocess(dt.get_config("rtdetr-r18", **REFERENCE_MODEL))
    assert isinstance(post, RTDETRPostProcess) and isinstance(post, dt.PostProcess) and post.num_top_queries == 30
    sizes_hw = _io()["orig_target_sizes"].flip(1)  # the official gives (w, h); the package (h, w)
    dets = post(_io()["outputs"], sizes_hw)
    for ours, theirs in zip(dets, _json()["postprocess"]):
        assert ours["labels"].tolist() == theirs["labels"]
        assert _scaled(ours["scores"], torch.tensor(theirs["scores"])) <= TOL
        assert _d(ours["boxes"], torch.tensor(theirs["boxes"])) <= 1e-3  # pixels: 1e-5 of up to 1348 px
        assert ours["query"].shape == (30,)


# -- denoising groups -------------------------------------------------------------------------------
def _dn_targets():
    return [{"labels": torch.tensor([1, 2, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4],
                                                                      [0.5, 0.8, 0.1, 0.1]])},
            {"labels": torch.tensor([4]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]


def test_denoising_groups_have_the_documented_shapes_and_positives():
    torch.manual_seed(0)
    embed = torch.nn.Embedding(6, 8, padding_idx=5)
    cls, box, mask, meta = contrastive_denoising_group(_dn_targets(), 5, 10, embed, num_denoising=12)
    # max_gt = 3 -> 12 // 3 = 4 groups of 2 * 3 queries
    assert meta["dn_num_group"] == 4 and meta["dn_num_split"] == [24, 10]
    assert cls.shape == (2, 24, 8) and box.shape == (2, 24, 4) and mask.shape == (34, 34)
    assert meta["dn_positive_idx"][0].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14, 18, 19, 20]
    assert meta["dn_positive_idx"][1].tolist() == [0, 6, 12, 18]
    assert torch.equal(cls[1, 1], embed.weight[5])  # padding slots carry the padding row
    idx = dn_matched_indices(meta, _dn_targets())
    assert idx[1][1].tolist() == [0, 0, 0, 0] and idx[0][1].tolist() == [0, 1, 2] * 4


def test_denoising_mask_hides_other_groups_and_hides_all_groups_from_the_matching_queries():
    max_gt, groups, queries = 2, 3, 5
    mask = denoising_attn_mask(max_gt, groups, queries)
    n_dn = 2 * max_gt * groups
    for i in range(n_dn + queries):  # brute force against the rule
        for j in range(n_dn + queries):
            if i < n_dn and j < n_dn:
                expected = i // (2 * max_gt) != j // (2 * max_gt)
            else:
                expected = i >= n_dn and j < n_dn
            assert bool(mask[i, j]) == expected, (i, j)


def test_denoising_noise_moves_positives_less_than_half_a_box_and_negatives_further():
    torch.manual_seed(0)
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    _, box, _, meta = contrastive_denoising_group(targets, 3, 4, torch.nn.Embedding(4, 8), num_denoising=200,
                                                  label_noise_ratio=0.0)
    corners = dt.box_ops.box_cxcywh_to_xyxy(box.sigmoid())[0]  # [400, 4]
    shift = (corners - torch.tensor([0.4, 0.4, 0.6, 0.6])).abs() / 0.1  # in half box sizes
    positive = torch.zeros(400, dtype=torch.bool)
    positive[meta["dn_positive_idx"][0]] = True
    assert (shift[positive] < 1 + 1e-4).all()
    # a negative's corners may cross (x1 > x2: the official keeps that, its width then clips to ~0);
    # the others moved each corner by 1 to 2 half sizes
    kept = ~positive & (box.sigmoid()[0, :, 2:] > 0.01).all(-1)
    assert kept.sum() > 50 and ((shift[kept] >= 1 - 1e-4) & (shift[kept] < 2 + 1e-4)).all()
    _, exact, _, _ = contrastive_denoising_group(targets, 3, 4, torch.nn.Embedding(4, 8), num_denoising=2,
                                                 label_noise_ratio=0.0, box_noise_scale=0.0)
    torch.testing.assert_close(exact[0, 0], inverse_sigmoid(targets[0]["boxes"][0]))


def _tiny(**kw) -> RTDETR:
    torch.manual_seed(0)
    args = dict(num_classes=3, backbone="smallcnn", backbone_norm="bn", backbone_stride=16, pretrained_backbone=False,
                hidden_dim=64, enc_nheads=4, enc_dim_feedforward=128, dec_nheads=4, dec_dim_feedforward=128,
                dec_layers=2, num_queries=6, num_denoising=8, eval_spatial_size=None, expansion=0.5, freeze_stem=None)
    return dt.build_model("rtdetr-r18", **{**args, **kw})


def test_training_with_targets_adds_the_denoising_outputs_and_their_loss_terms():
    model = _tiny().train()
    images, targets = torch.rand(2, 3, 64, 64), _dn_targets()[:1] * 2
    out = model(images, targets=targets)
    assert len(out["dn_aux_outputs"]) == 2 and out["dn_aux_outputs"][0]["pred_boxes"].shape == (2, 12, 4)  # 8 // 3 = 2 groups of 2 x 3
    assert out["pred_logits"].shape == (2, 6, 3)
    targets = [dict(t, labels=t["labels"] % 3) for t in targets]
    criterion = dt.build_criterion(model.config)
    losses = criterion(out, targets)
    assert {"loss_vfl_dn_0", "loss_bbox_dn_1", "loss_giou_aux_1"} <= set(losses)  # aux_1: encoder top-k
    criterion.total(losses).backward()
    assert model.decoder.denoising_class_embed.weight.grad is not None


def test_dt_train_trains_rtdetr_with_its_denoising_groups(tmp_path):
    """The training engine hands the targets to a model that asks for them: the logged loss
    terms of a ``dt.train`` run include the denoising ones."""
    from training_helpers import TinyBoxes, tiny_recipe

    overrides = dict(backbone="presnet18", pretrained_backbone=False, hidden_dim=32, enc_nheads=2, dec_nheads=2,
                     enc_dim_feedforward=64, dec_dim_feedforward=64, dec_layers=2, num_queries=6, num_denoising=8,
                     eval_spatial_size=None, expansion=0.5, num_classes=3)
    recipe = tiny_recipe(model="rtdetr-r18", model_overrides=overrides, max_steps=2, batch_size=2)
    dt.train(recipe, tmp_path, device="cpu", datasets=(TinyBoxes(8), None), final_eval=False, progress=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    terms = {k for r in records if r["kind"] == "train" for k in r}
    assert {"loss_vfl_dn_0", "loss_bbox_dn_1", "loss_vfl_aux_0"} <= terms, sorted(terms)


def test_padded_batch_boxes_are_rescaled_to_each_images_own_size():
    model = _tiny().eval()
    small, wide = torch.rand(3, 64, 64), torch.rand(3, 64, 96)
    with torch.no_grad():
        batched = model([small, wide], pixels=True)
        canvas = torch.zeros(1, 3, 64, 96)
        canvas[0, :, :, :64] = small
        alone = model(canvas, pixels=True)
    torch.testing.assert_close(batched["pred_boxes"][0], alone["pred_boxes"][0] * torch.tensor([1.5, 1, 1.5, 1]))
    torch.testing.assert_close(batched["pred_logits"][0], alone["pred_logits"][0])


# -- it learns, it predicts ---------------------------------------------------------------------------
def test_tiny_rtdetr_overfits_two_images():
    from training_helpers import overfit_two_images

    # measured: 18.6 -> 1.02 (AMD EPYC); the path is chaotic (matching flips) and differs between
    # CPUs: at 150 steps one machine was at 1.86, another still at 4.25, so the budget is 300
    first, last = overfit_two_images(_tiny(dropout=0.0), steps=300, lr=1e-3)
    assert last <= 0.2 * first, f"loss went from {first:.3f} to {last:.3f}"


def test_predict_matches_a_direct_forward_on_unnormalized_pixels():
    model = _tiny().eval()
    image = torch.rand(3, 64, 96)
    det = dt.predict(model, image, threshold=0.0)[0]
    assert len(det["scores"]) == 18  # min(300, 6 queries x 3 classes)
    with torch.no_grad():
        out = model(image[None], pixels=True)
    boxes = dt.box_ops.box_cxcywh_to_xyxy(out["pred_boxes"][0]) * torch.tensor([96, 64, 96, 64])
    torch.testing.assert_close(det["boxes"], boxes[det["query"]], atol=1e-4, rtol=0)
    torch.testing.assert_close(det["scores"], out["pred_logits"][0].sigmoid()[det["query"], det["labels"]],
                               atol=1e-5, rtol=0)


# -- return_attention: what the attention figures draw ------------------------------------------------
def _attention_run(image_size=(64, 96)):
    model = _tiny(dropout=0.0).eval()
    images = torch.rand(2, 3, *image_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model, images, model(images), model(images, return_attention=True)


def test_return_attention_leaves_every_output_unchanged():
    _, _, plain, with_attention = _attention_run()
    assert torch.equal(plain["pred_logits"], with_attention["pred_logits"])
    assert torch.equal(plain["pred_boxes"], with_attention["pred_boxes"])


def test_return_attention_gives_aifis_softmax_attention_over_the_coarsest_level():
    """``enc_attn`` is AIFI's ``softmax(q k^T / sqrt(d_head))`` per head, computed here from the
    layer's own projections, over the row-major cells of the stride-16 map (64 x 96 -> 4 x 6)."""
    model, images, _, out = _attention_run()
    assert out["enc_feature_shape"] == (4, 6)
    assert out["enc_attn"].shape == (1, 2, 4, 24, 24)  # [AIFI layers, B, heads, hw, hw]
    torch.testing.assert_close(out["enc_attn"].sum(-1), torch.ones(1, 2, 4, 24))
    enc = model.encoder
    with torch.no_grad():
        canvas = model.pixels(images)[0]  # [0, 1] pixels, no padding at 64 x 96
        feats = [f for f, _ in model.backbone.stages(canvas, torch.zeros(2, 64, 96, dtype=torch.bool))]
        src = enc.input_proj[-1](feats[-1]).flatten(2).transpose(1, 2)  # [B, 24, d]
        qk = src + enc.position_table(len(feats) - 1, 4, 6, src.device)
        attn = enc.encoder[0].layers[0].self_attn
        d = attn.embed_dim
        wq, wk = attn.in_proj_weight[:d], attn.in_proj_weight[d:2 * d]
        bq, bk = attn.in_proj_bias[:d], attn.in_proj_bias[d:2 * d]
        q = (qk @ wq.T + bq).view(2, 24, 4, d // 4).transpose(1, 2)  # [B, heads, 24, d_head]
        k = (qk @ wk.T + bk).view(2, 24, 4, d // 4).transpose(1, 2)
        expected = (q @ k.transpose(-1, -2) / math.sqrt(d // 4)).softmax(-1)
    torch.testing.assert_close(out["enc_attn"][0], expected, atol=1e-6, rtol=0)


def test_without_aifi_layers_the_encoder_attention_is_empty():
    """The paper's ablation without AIFI (``enc_layers=0``): no attention to return, the grid
    still named."""
    model = _tiny(enc_layers=0).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64), return_attention=True)
    assert out["enc_attn"].shape == (0, 1, 0, 16, 16) and out["enc_feature_shape"] == (4, 4)


def test_return_attention_gives_each_decoder_layers_sampling_points_and_weights():
    """Every layer's locations and weights are those its cross-attention computed (captured here
    with a forward hook on ``MSDeformAttn``), and each query's head spreads a weight of 1."""
    model, images, _, _ = _attention_run()
    captured = []
    hooks = [layer.cross_attn.register_forward_hook(lambda _m, _a, _k, result: captured.append(result[1:]),
                                                    with_kwargs=True)
             for layer in model.decoder.decoder.layers]
    try:
        with torch.no_grad():
            out = model(images, return_attention=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert out["spatial_shapes"] == [(8, 12), (4, 6)]
    assert out["dec_sampling_locations"].shape == (2, 2, 6, 4, 2, 4, 2)  # [L_dec, B, Q, M, L, P, 2]
    assert out["dec_attention_weights"].shape == (2, 2, 6, 4, 2, 4)
    for layer, (loc, weights) in enumerate(captured):
        assert torch.equal(out["dec_sampling_locations"][layer], loc)
        assert torch.equal(out["dec_attention_weights"][layer], weights)
    torch.testing.assert_close(out["dec_attention_weights"].sum((-1, -2)), torch.ones(2, 2, 6, 4))


def test_dec_attn_is_the_splat_of_the_sampling_points_on_the_finest_grid():
    from detr_tutorial.models.ms_deform_attn import splat_sampling_points

    _, _, _, out = _attention_run()
    loc, weights = out["dec_sampling_locations"], out["dec_attention_weights"]
    assert out["feature_shape"] == (8, 12) and out["dec_attn"].shape == (2, 2, 4, 6, 96)  # [L, B, M, Q, hw]
    expected = splat_sampling_points(loc.flatten(4, 5), weights.flatten(4, 5), (8, 12)).transpose(2, 3)
    torch.testing.assert_close(out["dec_attn"], expected)
    # the map holds the weight of every point within the square of cell centres, nothing more
    x, y = loc[..., 0], loc[..., 1]
    inside = (x >= 0.5 / 12) & (x <= 1 - 0.5 / 12) & (y >= 0.5 / 8) & (y <= 1 - 0.5 / 8)
    total = out["dec_attn"].sum(-1).transpose(2, 3)  # [L, B, Q, M]
    held = (weights * inside).sum((-1, -2))
    assert torch.all(total >= held - 1e-5) and torch.all(total <= weights.sum((-1, -2)) + 1e-5)


def test_padded_images_get_sampling_locations_relative_to_themselves():
    """A 48 x 64 image is padded to 64 x 64 (RT-DETR needs multiples of 32): its points are
    rescaled to the image as its boxes are, so y grows by 64 / 48."""
    model = _tiny(dropout=0.0).eval()
    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(4))
    canvas = torch.zeros(1, 3, 64, 64)
    canvas[0, :, :48] = image
    with torch.no_grad():
        padded = model([image], pixels=True, return_attention=True)
        alone = model(canvas, pixels=True, return_attention=True)
    expected = alone["dec_sampling_locations"] * torch.tensor([1.0, 64 / 48])
    torch.testing.assert_close(padded["dec_sampling_locations"], expected)


# -- checkpoints and configuration --------------------------------------------------------------------
def test_a_checkpoint_of_another_size_is_refused_naming_its_sizes():
    model = dt.build_model("rtdetr-r18", **{**REFERENCE_MODEL, "num_classes": 7})
    with pytest.raises(ValueError, match="shape mismatch.*num_classes=5, hidden_dim=64, dec_layers=3"):
        dt.load_official_state_dict(model, _state())


def _coco_state(name: str) -> dict:
    model = dt.build_model(name, num_classes=80, pretrained_backbone=False)
    return {"ema": {"module": model.state_dict(), "updates": 1}}, model


def test_from_official_downloads_the_rtdetr_checkpoint_of_the_official_readme(monkeypatch):
    state, model = _coco_state("rtdetr-r18")
    calls = []

    def fake_download(url, map_location=None, progress=True, **kwargs):
        calls.append(url)
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    loaded = dt.from_official("rtdetr-r18")
    assert calls == ["https://github.com/lyuwenyu/storage/releases/download/v0.1/rtdetr_r18vd_dec3_6x_coco_from_paddle.pth"]
    assert isinstance(loaded, RTDETR) and not loaded.training and loaded.config.class_names[0] == "person"
    assert len(loaded.config.class_names) == 80 and loaded.config.class_names[-1] == "toothbrush"
    assert torch.equal(loaded.decoder.dec_score_head[2].weight, model.decoder.dec_score_head[2].weight)


def test_from_official_reads_a_local_rtdetr_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("no download"))
    state, model = _coco_state("rtdetr-r50")
    path = tmp_path / "rtdetr_r50vd_6x_coco_from_paddle.pth"
    torch.save(state, path)
    loaded = dt.from_official("rtdetr-r50", checkpoint=path)
    assert torch.equal(loaded.backbone.conv1.conv1_1.conv.weight, model.backbone.conv1.conv1_1.conv.weight)


def test_presets_hold_the_official_values():
    r18, r50 = dt.PRESETS["rtdetr-r18"], dt.PRESETS["rtdetr-r50"]
    assert (r50.backbone, r50.backbone_norm, r50.freeze_stem, r50.hidden_dim, r50.enc_layers) == (
        "presnet50", "frozen_bn", True, 256, 1)
    assert (r50.enc_nheads, r50.enc_dim_feedforward, r50.expansion, r50.dec_layers, r50.dec_nheads) == (8, 1024, 1.0, 6, 8)
    assert (r50.num_queries, r50.num_denoising, r50.eval_spatial_size, r50.num_top_queries) == (300, 100, (640, 640), 300)
    assert (r50.set_cost_class, r50.set_cost_bbox, r50.set_cost_giou, r50.focal_alpha, r50.vfl_alpha) == (2, 5, 2, 0.25, 0.75)
    assert (r18.backbone, r18.backbone_norm, r18.freeze_stem, r18.expansion, r18.dec_layers) == (
        "presnet18", "bn", False, 0.5, 3)


@pytest.mark.parametrize("overrides, match", [
    (dict(num_denoising=0), "belongs to family 'rtdetr'"),
    (dict(dec_n_points=8), "belongs to family 'deformable' and to family 'rtdetr'"),
    (dict(backbone="presnet50"), "belongs to family 'rtdetr'"),
])
def test_rtdetr_options_are_refused_in_the_paper_family(overrides, match):
    with pytest.raises(ValueError, match=match):
        dt.get_config("detr-tiny", **overrides)


def test_presnet50_has_bottlenecks_and_the_official_channels():
    from detr_tutorial.models.presnet import PResNet

    trunk = PResNet(50)
    assert trunk.stage_channels == [512, 1024, 2048] and trunk.stage_strides == [8, 16, 32]
    assert isinstance(trunk.res_layers[1].blocks[0].short.pool, torch.nn.AvgPool2d)
    feats = trunk.eval()(torch.rand(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(512, 8, 12), (1024, 4, 6), (2048, 2, 3)]


# -- anchors of a fixed size in pixels (anchor_pixels, the shipped model's option) -------------------
@pytest.mark.parametrize("canvas", [96, 128, 176])
def test_pixel_anchors_are_the_same_size_in_pixels_on_every_canvas(canvas):
    """The official anchors are 0.05 * 2^l of the canvas; with anchor_pixels they are
    anchor_pixels * 2^l pixels, whatever the canvas (its side is cells x stride)."""
    shapes = [[canvas // 8, canvas // 8], [canvas // 16, canvas // 16]]
    anchors, valid = generate_anchors(shapes, anchor_pixels=8.0, strides=[8, 16])
    wh = anchors[0, :, 2:].sigmoid() * canvas  # [S, 2] in pixels (every anchor of these shapes is valid)
    assert bool(valid.all())
    first = shapes[0][0] * shapes[0][1]
    torch.testing.assert_close(wh[:first], torch.full_like(wh[:first], 8.0))
    torch.testing.assert_close(wh[first:], torch.full_like(wh[first:], 16.0))
    official, _ = generate_anchors(shapes)
    torch.testing.assert_close(official[0, :first, 2:].sigmoid(), torch.full((first, 2), 0.05))
    torch.testing.assert_close(anchors[..., :2], official[..., :2])  # the centres do not change


def test_pixel_anchors_need_the_strides_and_a_positive_size():
    with pytest.raises(ValueError, match="anchor_pixels needs a stride per level"):
        generate_anchors([[8, 8], [4, 4]], anchor_pixels=8.0)
    for bad in (0, -4.0, float("nan"), "8"):
        with pytest.raises(ValueError, match="anchor_pixels must be None or a finite number of pixels > 0"):
            dt.get_config("rtdetr-r18", anchor_pixels=bad)


def test_a_model_with_pixel_anchors_uses_them_in_its_query_selection():
    from training_helpers import tiny_rtdetr

    model = tiny_rtdetr(anchor_pixels=8.0)
    anchors, _ = model.decoder.anchors_for([[12, 12], [6, 6]], torch.device("cpu"))
    assert anchors[0, 0, 2:].sigmoid().mul(96).tolist() == pytest.approx([8.0, 8.0])


def test_decoder_aux_coef_scales_the_layers_before_the_last_and_nothing_else():
    cfg = dt.get_config("rtdetr-r18", num_classes=3, dec_layers=3, decoder_aux_coef=0.25)
    criterion = dt.build_criterion(cfg)
    base = {"loss_vfl": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    for term, weight in base.items():
        assert criterion.weight_for(term) == weight  # the last layer
        assert criterion.weight_for(f"{term}_dn_2") == weight  # the last layer's denoising queries
        assert criterion.weight_for(f"{term}_aux_2") == weight  # aux_{L-1}: the encoder's top-k
        for i in (0, 1):  # decoder layers 0 and 1, matched and denoising queries
            assert criterion.weight_for(f"{term}_aux_{i}") == 0.25 * weight
            assert criterion.weight_for(f"{term}_dn_{i}") == 0.25 * weight
    official = dt.build_criterion(dt.get_config("rtdetr-r18", num_classes=3, dec_layers=3))
    assert official.weight_dict == base  # the default: the official equal weights
    with pytest.raises(ValueError, match="decoder_aux_coef"):
        dt.get_config("rtdetr-r18", num_classes=3, decoder_aux_coef=-1.0)
