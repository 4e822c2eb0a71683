"""The deformable family equals the official Deformable DETR (fundamentalvision/Deformable-DETR).

The reference (``../shared/reference/deformable``, its README says how it was made) holds three
official models (plain, box refinement, two-stage) with a ResNet-18 trunk, their outputs and
intermediates on two padded images, the official matcher's indices, loss terms and detections.
Each model is built here from the same configuration, loaded with ``dt.load_official_state_dict``
and must give the same tensors: the max abs difference is at most 1e-5 of the reference tensor's
scale, ``max(1, max |value|)`` (float rounding only; other CPUs add long sums in other orders).
"""
import json
from functools import lru_cache

import pytest
import torch

import detr_tutorial as dt
from detr_tutorial.families.deformable import DeformableDETR, DeformableSinePosition
from detr_tutorial.families.deformable_loss import DeformableCriterion, DeformablePostProcess
from reference_data import reference_path

VARIANTS = {"plain": {}, "box_refine": {"with_box_refine": True}, "two_stage": {"with_box_refine": True, "two_stage": True}}
PRESETS = {"plain": "deformable-detr", "box_refine": "deformable-detr-refine", "two_stage": "deformable-detr-two-stage"}
#: README part C: the official build of every variant
REFERENCE_MODEL = dict(
    num_classes=5, backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2, dim_feedforward=128,
    num_queries=20, num_feature_levels=4, enc_n_points=4, dec_n_points=4, dropout=0.1, pretrained_backbone=False,
)
TOL = 1e-5


def _path(name: str):
    return reference_path(f"deformable/{name}")


@lru_cache(maxsize=None)
def _io() -> dict:
    return torch.load(_path("deformable_detr_io.pt"), weights_only=True)


@lru_cache(maxsize=None)
def _json() -> dict:
    return json.loads(_path("reference.json").read_text())


@lru_cache(maxsize=None)
def _checkpoints() -> dict:
    return torch.load(_path("deformable_detr_models.pth"), weights_only=True)


def _model(variant: str) -> DeformableDETR:
    model = dt.build_model("deformable-detr", **REFERENCE_MODEL, **VARIANTS[variant])
    dt.load_official_state_dict(model, _checkpoints()[variant])
    return model.eval()


@lru_cache(maxsize=None)
def _run(variant: str) -> tuple:
    with torch.no_grad():
        return _model(variant).forward_with_intermediates(list(_io()["images"]))


def _max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def _scaled(ours, theirs) -> float:
    """Max abs difference in units of the reference's scale, ``max(1, max |theirs|)``.

    float32 rounding grows with the size of the values (a 4608-term convolution sum added in
    another order on another CPU's vector unit differs by a few 1e-6 of its magnitude), so the
    bound is relative to the tensor's largest value; a wrong formula differs by far more.
    """
    return _max_diff(ours, theirs) / max(1.0, theirs.float().abs().max().item() if theirs.numel() else 1.0)


def _where(variant: str) -> str:
    """The first intermediate that differs (for the failure message): where the models part."""
    _, ours = _run(variant)
    ref = _io()[variant]["intermediates"]
    names = [("srcs", "srcs"), ("memory", "memory"), ("tgt", "decoder_tgt"), ("query_pos", "decoder_query_pos"),
             ("init_reference", "init_reference"), ("hs", "hs"), ("inter_references", "inter_references")]
    for mine, theirs in names:
        key = theirs if theirs in ref else "decoder_reference_points" if theirs == "init_reference" else None
        if key is None:
            continue
        a, b = ours[mine], ref[key]
        diff = max(_scaled(x, y) for x, y in zip(a, b)) if isinstance(a, list) else _scaled(a, b)
        if diff > TOL:
            return f"first difference at {mine}: {diff:.3g}"
    return "all intermediates equal"


# -- the model ------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_official_checkpoint_loads_strictly_with_the_official_parameter_count(variant):
    model = _model(variant)
    sd = _checkpoints()[variant]["model"]
    assert len(model.state_dict()) == len(sd)
    assert sum(p.numel() for p in model.parameters()) == {"plain": 11715851, "box_refine": 11724756,
                                                         "two_stage": 11752027}[variant]


def test_levels_masks_positions_and_valid_ratios_equal_the_official():
    model = _model("plain")
    shared = _io()["shared"]
    with torch.no_grad():
        srcs, masks, pos = model.multi_scale(dt.nested.to_nested(list(_io()["images"])))
    assert [tuple(s.shape[-2:]) for s in srcs] == [tuple(s) for s in shared["spatial_shapes"].tolist()]
    for ours, theirs in zip(masks, shared["masks"]):
        assert torch.equal(ours, theirs)
    assert max(_scaled(a, b) for a, b in zip(pos, shared["pos"])) <= TOL
    assert _max_diff(_run("plain")[1]["valid_ratios"], shared["valid_ratios"]) == 0


def test_deformable_sine_codes_each_cell_at_its_centre():
    """Deformable DETR's normalization: ``(cumsum - 0.5) / last * 2 pi``; one valid cell of two
    rows is coded at pi (its centre), where DETR's sine would code it at 2 pi."""
    mask = torch.tensor([[[False], [True]]])  # [1, 2, 1]: one valid row, one padding row
    pos = DeformableSinePosition(2, normalize=True)(mask)  # [1, 4, 2, 1]: y sin, y cos, x sin, x cos
    y = torch.tensor(0.5 / (1 + 1e-6) * 2 * torch.pi)
    assert torch.allclose(pos[0, 0, 0, 0], y.sin(), atol=1e-6) and torch.allclose(pos[0, 1, 0, 0], y.cos(), atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_equal_the_official_model(variant):
    out, _ = _run(variant)
    ref = _io()[variant]["outputs"]
    where = _where(variant)
    for key in ("pred_logits", "pred_boxes"):
        assert _scaled(out[key], ref[key]) <= TOL, (key, where)
    assert len(out["aux_outputs"]) == len(ref["aux_outputs"]) == 1
    for ours, theirs in zip(out["aux_outputs"], ref["aux_outputs"]):
        for key in ("pred_logits", "pred_boxes"):
            assert _scaled(ours[key], theirs[key]) <= TOL, (f"aux {key}", where)
    assert ("enc_outputs" in out) == (variant == "two_stage") == ("enc_outputs" in ref)
    if variant == "two_stage":
        for key in ("pred_logits", "pred_boxes"):
            assert _scaled(out["enc_outputs"][key], ref["enc_outputs"][key]) <= TOL, (f"enc {key}", where)


@pytest.mark.parametrize("variant", VARIANTS)
def test_intermediates_equal_the_official_model(variant):
    _, ours = _run(variant)
    ref = _io()[variant]["intermediates"]
    assert max(_scaled(a, b) for a, b in zip(ours["srcs"], ref["srcs"])) <= TOL
    pairs = {"memory": "memory", "tgt": "decoder_tgt", "query_pos": "decoder_query_pos", "hs": "hs",
             "inter_references": "inter_references"}
    for mine, theirs in pairs.items():
        assert _scaled(ours[mine], ref[theirs]) <= TOL, mine
    reference = ref.get("init_reference", ref.get("decoder_reference_points"))
    assert _scaled(ours["init_reference"], reference) <= TOL


# -- matching, loss, post-processing ----------------------------------------------------------------
def _outputs(variant: str) -> dict:
    return _io()[variant]["outputs"]


def _criterion() -> DeformableCriterion:
    cfg = dt.get_config("deformable-detr", **REFERENCE_MODEL)
    criterion = dt.build_criterion(cfg)
    assert isinstance(criterion, DeformableCriterion)
    assert criterion.weight_dict == _json()["weight_dict"]
    return criterion


def _binary(targets):
    return [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("suffix", ["", "_with_empty"])
def test_matcher_costs_and_indices_equal_the_official(variant, suffix):
    matcher = _criterion().matcher
    targets = _io()["targets" if not suffix else "empty_targets"]
    outputs = _outputs(variant)
    calls = {"final": (outputs, targets), "aux_0": (outputs["aux_outputs"][0], targets)}
    if variant == "two_stage":
        calls["enc"] = (outputs["enc_outputs"], _binary(targets))
    costs = _io()[variant]["matcher_costs" + suffix]
    expected = _json()[variant]["indices" + suffix]
    assert set(calls) == set(costs) == set(expected)
    for name, (out, tgt) in calls.items():
        for ours, theirs in zip(matcher.cost_matrices(out, tgt), costs[name]):
            assert ours.shape == theirs.shape and (ours.numel() == 0 or _scaled(ours, theirs) <= TOL), name
        indices = [[i.tolist(), j.tolist()] for i, j in matcher(out, tgt)]
        assert indices == expected[name], name


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("suffix", ["", "_with_empty"])
def test_loss_terms_and_weighted_total_equal_the_official(variant, suffix):
    criterion = _criterion()
    losses = criterion(_outputs(variant), _io()["targets" if not suffix else "empty_targets"])
    expected = _json()[variant]["losses" + suffix]
    assert set(losses) == set(expected)
    for key, value in expected.items():
        assert abs(losses[key].item() - value) <= TOL * max(1.0, abs(value)), key
    total = _json()[variant]["weighted_total" + suffix]
    assert abs(criterion.total(losses).item() - total) <= TOL * max(1.0, abs(total))


@pytest.mark.parametrize("variant", VARIANTS)
def test_postprocess_gives_the_official_top_100_detections(variant):
    post = dt.build_postprocess(dt.get_config("deformable-detr", **REFERENCE_MODEL))
    assert isinstance(post, DeformablePostProcess) and isinstance(post, dt.PostProcess)
    dets = post(_outputs(variant), _io()["orig_sizes"])
    for ours, theirs in zip(dets, _json()[variant]["postprocess"]):
        assert ours["labels"].tolist() == theirs["labels"]
        assert _scaled(ours["scores"], torch.tensor(theirs["scores"])) <= TOL
        assert _max_diff(ours["boxes"], torch.tensor(theirs["boxes"])) <= 1e-3  # pixels: 1e-5 of 640 px


# -- official checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize("ckpt, model_variant", [("box_refine", "plain"), ("two_stage", "box_refine"), ("plain", "two_stage")])
def test_another_variants_checkpoint_is_refused_naming_the_preset_that_fits(ckpt, model_variant):
    model = dt.build_model("deformable-detr", **REFERENCE_MODEL, **VARIANTS[model_variant])
    with pytest.raises(ValueError, match=f"official '{PRESETS[ckpt]}' checkpoint"):
        dt.load_official_state_dict(model, _checkpoints()[ckpt])


def test_a_detr_key_in_a_deformable_checkpoint_is_reported():
    sd = dict(_checkpoints()["plain"]["model"])
    sd["transformer.decoder.norm.weight"] = torch.ones(64)  # DETR's final decoder norm: not in Deformable DETR
    with pytest.raises(ValueError, match="does not fit"):
        dt.load_official_state_dict(dt.build_model("deformable-detr", **REFERENCE_MODEL), sd)


def test_from_official_reads_a_local_deformable_checkpoint(tmp_path, monkeypatch):
    """The COCO model (91 classes, ResNet-50, 300 queries): an official-format checkpoint made here."""
    def no_download(*args, **kwargs):
        raise AssertionError("a local checkpoint must not be downloaded")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model = dt.build_model("deformable-detr-refine", num_classes=91, pretrained_backbone=False)
    sd = {k.replace("backbone.body.", "backbone.0.body."): v for k, v in model.state_dict().items()}
    path = tmp_path / "r50_deformable_detr_plus_iterative_bbox_refinement-checkpoint.pth"
    torch.save({"model": sd, "epoch": 49}, path)
    loaded = dt.from_official("deformable-detr-refine", checkpoint=path)
    assert isinstance(loaded, DeformableDETR) and loaded.with_box_refine and not loaded.training
    assert torch.equal(loaded.class_embed[1].weight, model.class_embed[1].weight)


# -- configuration --------------------------------------------------------------------------------------
def test_presets_hold_the_papers_values():
    cfg = dt.PRESETS["deformable-detr"]
    assert (cfg.family, cfg.backbone, cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers) == (
        "deformable", "resnet50", 256, 8, 6, 6)
    assert (cfg.dim_feedforward, cfg.num_queries, cfg.num_feature_levels, cfg.enc_n_points, cfg.dec_n_points) == (
        1024, 300, 4, 4, 4)
    assert (cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou) == (2, 5, 2)
    assert (cfg.ce_loss_coef, cfg.bbox_loss_coef, cfg.giou_loss_coef, cfg.focal_alpha) == (2, 5, 2, 0.25)
    assert cfg.focal_loss and cfg.dropout == 0.1
    assert dt.PRESETS["deformable-detr-refine"].with_box_refine and not dt.PRESETS["deformable-detr-refine"].two_stage
    assert dt.PRESETS["deformable-detr-two-stage"].with_box_refine and dt.PRESETS["deformable-detr-two-stage"].two_stage


@pytest.mark.parametrize("overrides, match", [
    (dict(with_box_refine=True), "belongs to family 'deformable'"),
    (dict(num_feature_levels=3), "belongs to family 'deformable'"),
    (dict(two_stage=True), "belongs to family 'conditional' and to family 'deformable'"),
])
def test_deformable_options_are_refused_in_the_paper_family(overrides, match):
    with pytest.raises(ValueError, match=match):
        dt.get_config("detr-tiny", **overrides)


def test_two_stage_without_box_refinement_is_refused():
    with pytest.raises(ValueError, match="with_box_refine=True"):
        dt.get_config("deformable-detr", two_stage=True)


# -- it learns -------------------------------------------------------------------------------------------
def test_tiny_deformable_detr_overfits_two_images():
    from training_helpers import overfit_two_images

    torch.manual_seed(0)
    model = dt.build_model(
        "deformable-detr-refine", num_classes=3, backbone="smallcnn", backbone_norm="bn", backbone_stride=16,
        hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=5, dropout=0.0,
        num_feature_levels=3, pretrained_backbone=False,
    )
    first, last = overfit_two_images(model, steps=100, lr=1e-3)
    assert last <= 0.2 * first, f"loss went from {first:.3f} to {last:.3f}"


def test_from_official_downloads_the_deformable_checkpoints_from_the_official_readme(monkeypatch):
    calls = []
    model = dt.build_model("deformable-detr", num_classes=91, pretrained_backbone=False)
    sd = {k.replace("backbone.body.", "backbone.0.body."): v for k, v in model.state_dict().items()}

    def fake_download(url, map_location=None, progress=True, file_name=None, **kwargs):
        calls.append((url, file_name))
        return {"model": sd}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    dt.from_official("deformable-detr")
    assert calls == [(dt.pretrained.OFFICIAL_URLS["deformable-detr"], "deformable-detr-official.pth")]
    assert "1nDWZWHuRwtwGden77NLM9JoWe-YisJnA" in calls[0][0]  # r50_deformable_detr in the official README


def test_predict_ranks_query_class_pairs_and_names_the_query_of_each():
    """``dt.predict`` post-processes with the family's own post-processor: Deformable DETR's top
    (query, class) pairs, each with the query whose box it is."""
    torch.manual_seed(0)
    model = dt.build_model("deformable-detr", backbone="resnet18", pretrained_backbone=False, hidden_dim=64,
                           nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64, num_queries=10,
                           num_classes=3).eval()
    image = torch.rand(3, 96, 128)
    det = dt.predict(model, image, threshold=0.0)[0]
    assert len(det["scores"]) == 30  # min(100, 10 queries x 3 classes)
    assert torch.all(det["scores"][:-1] >= det["scores"][1:])
    from detr_tutorial.image_io import IMAGENET_MEAN, IMAGENET_STD
    from detr_tutorial.box_ops import box_cxcywh_to_xyxy

    normalized = (image - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        out = model([normalized])
    boxes = box_cxcywh_to_xyxy(out["pred_boxes"][0]) * torch.tensor([128, 96, 128, 96])
    torch.testing.assert_close(det["boxes"], boxes[det["query"]])
    scores = out["pred_logits"][0].sigmoid()
    torch.testing.assert_close(det["scores"], scores[det["query"], det["labels"]])
