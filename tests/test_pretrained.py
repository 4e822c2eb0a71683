"""Official DETR checkpoints: renaming only, same outputs as the official model, clear errors."""
import json

import pytest
import torch

import detr_tutorial as dt
from detr_tutorial.pretrained import convert_official_state_dict, infer_official_preset
from reference_data import REFERENCE_MODEL, load_io, load_json, load_official_state_dict, reference_path


def _reference_model() -> dt.DETR:
    model = dt.build_model("detr-tiny", **REFERENCE_MODEL)
    dt.load_official_state_dict(model, load_official_state_dict())
    return model.eval()


def test_converted_model_gives_the_official_outputs():
    io = load_io()
    with torch.no_grad():
        out = _reference_model()(io["images"])
    official = io["outputs"]
    torch.testing.assert_close(out["pred_logits"], official["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pred_boxes"], official["pred_boxes"], atol=1e-5, rtol=1e-5)
    assert len(out["aux_outputs"]) == len(official["aux_outputs"]) == 1
    for ours, theirs in zip(out["aux_outputs"], official["aux_outputs"]):
        torch.testing.assert_close(ours["pred_logits"], theirs["pred_logits"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours["pred_boxes"], theirs["pred_boxes"], atol=1e-5, rtol=1e-5)


def test_postprocess_gives_the_official_detections():
    io, ref = load_io(), load_json()
    dets = dt.PostProcess()(io["outputs"], torch.tensor(ref["postprocess_orig_sizes"]))
    for ours, theirs in zip(dets, ref["postprocess"]):
        torch.testing.assert_close(ours["scores"], torch.tensor(theirs["scores"]), atol=1e-5, rtol=0)
        assert ours["labels"].tolist() == theirs["labels"]
        torch.testing.assert_close(ours["boxes"], torch.tensor(theirs["boxes"]), atol=1e-3, rtol=1e-6)


def test_conversion_only_renames():
    official = load_official_state_dict()["model"]
    converted = convert_official_state_dict(official)
    assert len(converted) == len(official)
    assert sorted(v.data_ptr() for v in converted.values()) == sorted(v.data_ptr() for v in official.values())
    assert "backbone.body.conv1.weight" in converted
    assert "transformer.decoder.layers.0.cross_attn.in_proj_weight" in converted


@pytest.mark.parametrize("key, preset", [("resnet50", "detr-r50"), ("resnet101", "detr-r101"), ("resnet50-dc5", "detr-r50-dc5")])
def test_every_key_of_the_released_checkpoints_maps_onto_our_presets(key, preset):
    spec = json.loads(reference_path("official_r50_keys.json").read_text())[key]
    official = {k: torch.zeros(shape) for k, shape in spec["state_dict"].items()}
    converted = convert_official_state_dict(official)
    own = dt.build_model(preset, num_classes=91, pretrained_backbone=False).state_dict()
    assert set(converted) == set(own)
    assert all(tuple(converted[k].shape) == tuple(own[k].shape) for k in own)


def test_unknown_keys_are_listed_not_dropped():
    state = dict(load_official_state_dict()["model"])
    state["mask_head.lay1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="mask_head.lay1.weight"):
        convert_official_state_dict(state)


def test_loading_into_the_wrong_preset_names_the_preset_that_fits():
    spec = json.loads(reference_path("official_r50_keys.json").read_text())["resnet101"]
    official = {k: torch.zeros(shape) for k, shape in spec["state_dict"].items()}
    model = dt.build_model("detr-r50", num_classes=91, pretrained_backbone=False)
    with pytest.raises(ValueError, match="detr-r101"):
        dt.load_official_state_dict(model, official)


def test_loading_a_small_checkpoint_into_r50_describes_its_architecture():
    model = dt.build_model("detr-tiny", num_classes=5, pretrained_backbone=False)
    with pytest.raises(ValueError, match="hidden_dim=64"):
        dt.load_official_state_dict(model, load_official_state_dict())


def test_class_count_mismatch_suggests_reset_class_head():
    model = dt.build_model("detr-tiny", **{**REFERENCE_MODEL, "num_classes": 7})
    with pytest.raises(ValueError, match="reset_class_head"):
        dt.load_official_state_dict(model, load_official_state_dict())


def test_infer_official_preset_reads_the_architecture():
    info = infer_official_preset(load_official_state_dict())
    assert info["backbone"] == "resnet18" and info["num_classes"] == 5 and info["num_queries"] == 10
    assert (info["enc_layers"], info["dec_layers"], info["hidden_dim"]) == (2, 2, 64)


def test_from_official_reads_a_local_file_and_names_coco_classes(tmp_path, monkeypatch):
    spec = json.loads(reference_path("official_r50_keys.json").read_text())["resnet50"]
    torch.manual_seed(0)
    path = tmp_path / "detr-r50.pth"
    torch.save({"model": {k: torch.randn(shape) * 0.01 for k, shape in spec["state_dict"].items()}}, path)

    def no_download(*args, **kwargs):
        raise AssertionError("must not download when a local checkpoint is given")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model = dt.from_official("detr-r50", checkpoint=path)
    assert not model.training and model.config.class_names[1] == "person" and len(model.config.class_names) == 91


def test_from_official_downloads_through_torch_hub(monkeypatch):
    calls = []
    spec = json.loads(reference_path("official_r50_keys.json").read_text())["resnet50"]

    def fake_download(url, map_location=None, progress=True, check_hash=False):
        calls.append((url, check_hash))
        return {"model": {k: torch.zeros(shape) for k, shape in spec["state_dict"].items()}}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    dt.from_official("detr-r50")
    assert calls == [(dt.pretrained.OFFICIAL_URLS["detr-r50"], True)]


def test_from_official_reports_a_missing_file():
    with pytest.raises(FileNotFoundError, match="not found"):
        dt.from_official("detr-r50", checkpoint="/nonexistent/detr.pth")
