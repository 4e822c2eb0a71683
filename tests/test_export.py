"""Export for deployment: ONNX (checked with onnxruntime), torch.export and TorchScript.

Every exported graph is compared with the eager model in eval mode at two image sizes (and two
batch sizes) that differ from the size it was traced at: one file must serve every size. The
paper's DETR and RT-DETR (the shipped model's family: another output convention, images padded
to multiples of 32 inside the model) are both covered.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import detr_tutorial as dt
from detr_tutorial.checkpoint import SHIPPED_MODEL, load_checkpoint
from detr_tutorial.config import DETRConfig
from detr_tutorial.export import export_program, scripting_blockers
from detr_tutorial.models import Backbone, PositionEmbeddingLearned, PositionEmbeddingSine
from training_helpers import deformable_model, tiny_rtdetr

onnx = pytest.importorskip("onnx")  # requirements.txt installs it; the skip only helps partial set-ups
ort = pytest.importorskip("onnxruntime")

TOLERANCE = 1e-4
SIZES = [(1, 96, 128), (2, 128, 160)]  # (batch, height, width): neither is the traced example's size
# RT-DETR pads to multiples of 32 inside the model and rescales its boxes: a side of 100 or 150 takes that path
RTDETR_SIZES = [(1, 96, 128), (3, 100, 150)]


def tiny_detr(**overrides) -> dt.DETR:
    """The paper's architecture (ResNet trunk, sine positions, post-norm), shrunk to test sizes."""
    torch.manual_seed(0)
    cfg = dict(num_classes=3, hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64,
               num_queries=5, dropout=0.0)
    return dt.build_model("detr-tiny", **{**cfg, **overrides}).eval()


def images(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height * width))


@torch.no_grad()
def eager(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x)
    return out["pred_logits"], out["pred_boxes"]


def max_differences(session, model: torch.nn.Module, sizes=SIZES) -> list[float]:
    """Largest |onnxruntime - PyTorch| over logits and boxes, per size in ``sizes``."""
    diffs = []
    for b, h, w in sizes:
        x = images(b, h, w)
        logits, boxes = session.run(["pred_logits", "pred_boxes"], {"images": x.numpy()})
        ref_logits, ref_boxes = eager(model, x)
        assert logits.shape == tuple(ref_logits.shape) and boxes.shape == tuple(ref_boxes.shape)
        diffs.append(max(np.abs(logits - ref_logits.numpy()).max(), np.abs(boxes - ref_boxes.numpy()).max()))
    return diffs


@pytest.fixture(scope="module")
def vanilla() -> dt.DETR:
    return tiny_detr()


@pytest.fixture(scope="module")
def vanilla_program(vanilla) -> torch.export.ExportedProgram:
    """One trace, written below as ONNX and as a ``.pt2`` file (tracing is most of an export's time)."""
    return export_program(vanilla)


@pytest.fixture(scope="module")
def vanilla_onnx(vanilla_program, tmp_path_factory) -> Path:
    return dt.export_onnx(vanilla_program, tmp_path_factory.mktemp("onnx") / "detr.onnx")


# --------------------------------------------------------------------------------------- ONNX
def test_onnx_of_the_paper_model_matches_pytorch_at_two_image_sizes(vanilla, vanilla_onnx):
    session = ort.InferenceSession(str(vanilla_onnx), providers=["CPUExecutionProvider"])
    assert max(max_differences(session, vanilla)) <= TOLERANCE


def test_onnx_file_has_opset_18_one_image_input_and_dynamic_batch_height_width(vanilla_onnx):
    proto = onnx.load(str(vanilla_onnx))
    onnx.checker.check_model(proto)
    assert {op.domain: op.version for op in proto.opset_import}[""] >= 17
    (inp,) = proto.graph.input
    assert inp.name == "images"
    dims = inp.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1] == 3
    assert [dims[i].dim_param for i in (0, 2, 3)] == ["batch", "height", "width"]  # named, not fixed numbers
    assert [o.name for o in proto.graph.output] == ["pred_logits", "pred_boxes"]
    assert [o.type.tensor_type.shape.dim[0].dim_param for o in proto.graph.output] == ["batch", "batch"]


@pytest.mark.slow  # ~20 s: a second ONNX translation
def test_export_command_writes_the_shipped_model_as_onnx_that_matches_pytorch(tmp_path, run):
    out = tmp_path / "shapes.onnx"
    result = run("export", "--checkpoint", str(SHIPPED_MODEL), "--format", "onnx", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["shapes.onnx"]  # no temporary file left behind
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert max(max_differences(session, dt.load_shipped_model())) <= TOLERANCE


def test_onnx_opset_below_17_is_refused(vanilla, tmp_path):
    with pytest.raises(ValueError, match="opset"):
        dt.export_onnx(vanilla, tmp_path / "old.onnx", opset=12)


# ------------------------------------------------------------------------------- torch.export
def test_torch_export_file_reloads_and_matches_pytorch_at_two_image_sizes(vanilla, vanilla_program, tmp_path):
    path = dt.export_torch(vanilla_program, tmp_path / "detr.pt2")
    loaded = torch.export.load(str(path)).module()
    for b, h, w in SIZES:
        x = images(b, h, w)
        for got, ref in zip(loaded(x), eager(vanilla, x)):
            assert got.shape == ref.shape
            assert (got - ref).abs().max() <= TOLERANCE


def test_export_of_a_model_in_training_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="eval"):
        dt.export_onnx(tiny_detr().train(), tmp_path / "x.onnx")


def test_a_model_that_fixes_a_size_while_tracing_is_refused_at_export_time(vanilla, monkeypatch):
    """``int(shape)`` in model code freezes the graph to the example's size: say so when exporting."""
    real_forward = PositionEmbeddingSine.forward

    def frozen(self, mask, *rest):
        h, w = int(mask.shape[1]), int(mask.shape[2])  # the feature map's size, as Python ints
        return real_forward(self, mask.reshape(-1, h, w), *rest)

    monkeypatch.setattr(PositionEmbeddingSine, "forward", frozen)
    with pytest.raises(ValueError, match="only accepts the example's size"):
        export_program(vanilla)


def test_a_model_that_reads_tensor_values_while_tracing_is_refused_in_one_line(vanilla, monkeypatch):
    """``if mask.any()`` asks for a value the tracer does not have: say where, in one line."""
    real_forward = PositionEmbeddingSine.forward

    def reading(self, mask, *rest):
        if bool(mask.any()):  # a value, not a size
            mask = mask.clone()
        return real_forward(self, mask, *rest)

    monkeypatch.setattr(PositionEmbeddingSine, "forward", reading)
    where = r"test_export\.py:\d+ in reading"  # the line of the model's code that asked
    with pytest.raises(ValueError, match=rf"DETR cannot be exported: its code reads a tensor's values .*{where}") as e:
        export_program(vanilla)
    assert len(str(e.value).splitlines()) == 1


# ------------------------------------------------------------------------------------ RT-DETR
@pytest.fixture(scope="module")
def rtdetr() -> torch.nn.Module:
    return tiny_rtdetr()


@pytest.fixture(scope="module")
def rtdetr_program(rtdetr) -> torch.export.ExportedProgram:
    return export_program(rtdetr)


def test_an_rtdetr_graph_returns_num_classes_logits_without_a_no_object_column(rtdetr, rtdetr_program):
    """RT-DETR scores each class with a sigmoid: ``[B, Q, C]``, unlike DETR's ``[B, Q, C + 1]``."""
    logits, boxes = rtdetr_program.module()(images(*RTDETR_SIZES[1]))
    assert tuple(logits.shape) == (3, rtdetr.num_queries, rtdetr.num_classes)
    assert tuple(boxes.shape) == (3, rtdetr.num_queries, 4)


def test_onnx_of_an_rtdetr_matches_pytorch_at_sizes_that_are_not_multiples_of_32(rtdetr, rtdetr_program, tmp_path):
    path = dt.export_onnx(rtdetr_program, tmp_path / "rtdetr.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert max(max_differences(session, rtdetr, RTDETR_SIZES)) <= TOLERANCE


def test_torch_export_file_of_an_rtdetr_reloads_and_matches_pytorch_at_two_image_sizes(rtdetr, rtdetr_program,
                                                                                       tmp_path):
    loaded = torch.export.load(str(dt.export_torch(rtdetr_program, tmp_path / "rtdetr.pt2"))).module()
    for b, h, w in RTDETR_SIZES:
        x = images(b, h, w)
        for got, ref in zip(loaded(x), eager(rtdetr, x)):
            assert got.shape == ref.shape
            assert (got - ref).abs().max() <= TOLERANCE


# ------------------------------------------------------------------------- Deformable DETR
@pytest.fixture(scope="module")
def deformable() -> torch.nn.Module:
    """A tiny two-stage Deformable DETR with box refinement (three levels, strides 8, 16, 32)."""
    torch.manual_seed(0)
    return dt.build_model(dt.get_config("detr-tiny", num_classes=3, **deformable_model())).eval()


@pytest.fixture(scope="module")
def deformable_program(deformable) -> torch.export.ExportedProgram:
    return export_program(deformable)


def test_a_deformable_detr_exports_with_the_level_sizes_left_dynamic(deformable, deformable_program, tmp_path):
    """Its encoder and proposals take the level sizes from the feature maps' shapes, not from a tensor's
    values, so the graph serves every image size; the reloaded file matches PyTorch."""
    loaded = torch.export.load(str(dt.export_torch(deformable_program, tmp_path / "deformable.pt2"))).module()
    for b, h, w in RTDETR_SIZES:  # 100 x 150 is not a multiple of any level's stride
        x = images(b, h, w)
        for got, ref in zip(loaded(x), eager(deformable, x)):
            assert got.shape == ref.shape
            assert (got - ref).abs().max() <= TOLERANCE


def test_onnx_of_a_deformable_detr_matches_pytorch_at_two_image_sizes(deformable, deformable_program, tmp_path):
    path = dt.export_onnx(deformable_program, tmp_path / "deformable.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert max(max_differences(session, deformable, RTDETR_SIZES)) <= TOLERANCE


def test_an_rtdetr_does_not_script_and_the_error_names_its_family(rtdetr):
    for script in (dt.script_model, torch.jit.script):
        with pytest.raises(ValueError, match=r"the 'rtdetr' family \(RTDETR\).*--format torch-export or onnx"):
            script(rtdetr)


# ------------------------------------------------------------------------------- TorchScript
# As the official repository's test_all.py: the model, its backbone and its position encodings.
def test_position_encodings_script_and_match_eager():
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[1, 3:, 4:] = True
    for encoding in (PositionEmbeddingSine(16), PositionEmbeddingLearned(16)):
        assert torch.equal(torch.jit.script(encoding)(mask), encoding(mask))


def test_resnet_backbone_scripts_and_matches_eager():
    backbone = Backbone("resnet18", norm="frozen_bn").eval()
    x, mask = torch.randn(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool)
    scripted = torch.jit.script(backbone)
    for got, ref in zip(scripted(x, mask), backbone(x, mask)):
        assert torch.equal(got, ref)


def test_the_paper_detr_r50_scripts_and_gives_the_eager_outputs_on_a_padded_batch():
    torch.manual_seed(0)
    model = dt.build_model("detr-r50", num_classes=91, pretrained_backbone=False).eval()
    scripted = torch.jit.script(model)
    batch = dt.nested_tensor_from_tensor_list([torch.rand(3, 64, 64), torch.rand(3, 64, 96)])
    with torch.no_grad():
        ref, got = model(batch), scripted(batch.tensors, batch.mask)
    assert torch.equal(got["pred_logits"], ref["pred_logits"])
    assert torch.equal(got["pred_boxes"], ref["pred_boxes"])


def test_learned_positions_and_pre_norm_script_too():
    model = tiny_detr(position_embedding="learned", pre_norm=True)
    x = images(*SIZES[0])
    got, ref = dt.script_model(model)(x), eager(model, x)
    assert torch.equal(got["pred_logits"], ref[0]) and torch.equal(got["pred_boxes"], ref[1])


def shipped_family() -> str:
    """The shipped model's family, as its checkpoint's config records it (``from_dict`` fills in
    what an older checkpoint leaves out)."""
    return DETRConfig.from_dict(load_checkpoint(SHIPPED_MODEL)["config"]).family


def test_the_shipped_family_does_not_script_and_the_error_names_why():
    model = dt.load_shipped_model()
    family = shipped_family()
    assert f"the {family!r} family ({type(model).__name__})" in scripting_blockers(model)
    with pytest.raises(ValueError, match=f"'{family}' family.*export it with torch.export or ONNX"):
        torch.jit.script(model)


def test_the_paper_family_has_no_scripting_blockers():
    assert scripting_blockers(tiny_detr(aux_loss=True, focal_loss=True)) == []


# ------------------------------------------------------------------------------------- CLI
@pytest.fixture
def run(capsys):
    """The command line in this process (``cli.main``): returns (exit status, stdout, stderr)."""
    from detr_tutorial.cli import main

    class Result:
        pass

    def _run(*args: str) -> Result:
        capsys.readouterr()
        r = Result()
        r.returncode = main(list(args))
        r.stdout, r.stderr = capsys.readouterr()
        return r

    return _run


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def vanilla_checkpoint(vanilla, tmp_path_factory) -> Path:
    from detr_tutorial.checkpoint import FORMAT, save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    return save_checkpoint(
        {"format": FORMAT, "model": vanilla.state_dict(), "config": vanilla.config.to_dict()}, path
    )


def test_export_command_writes_a_torchscript_file_of_the_paper_model(vanilla, vanilla_checkpoint, tmp_path, run):
    out = tmp_path / "detr.torchscript.pt"
    result = run("export", "--checkpoint", str(vanilla_checkpoint), "--format", "torchscript", "--out", str(out))
    assert result.returncode == 0, result.stderr
    loaded = torch.jit.load(str(out))
    x = images(*SIZES[1])
    got, ref = loaded(x), eager(vanilla, x)
    assert torch.equal(got["pred_logits"], ref[0]) and torch.equal(got["pred_boxes"], ref[1])


def test_export_command_says_in_one_line_that_the_shipped_family_does_not_script(tmp_path, run):
    out = tmp_path / "shapes.pt"
    with warnings.catch_warnings(record=True) as caught:  # a warning would print a line before the error
        warnings.simplefilter("always")
        result = run("export", "--checkpoint", str(SHIPPED_MODEL), "--format", "torchscript", "--out", str(out))
    assert_one_line_error(result, "torch.jit.script", f"the {shipped_family()!r} family", "--format torch-export or onnx")
    assert [str(w.message) for w in caught] == []
    assert not out.exists()


def test_export_command_writes_a_float16_inference_checkpoint_that_rebuilds_the_model(tmp_path, run):
    """``--format checkpoint``: how the shipped model is made from a training run's model_final.pth."""
    from detr_tutorial.checkpoint import FORMAT, model_from_checkpoint, save_checkpoint

    model = tiny_rtdetr(class_names=["circle", "rectangle", "triangle"])
    src = save_checkpoint({"format": FORMAT, "config": model.config.to_dict(), "model": model.state_dict(),
                           "class_names": ["circle", "rectangle", "triangle"], "step": 7,
                           "optimizer": {"lots": torch.zeros(1000)}}, tmp_path / "model_final.pth")
    out = tmp_path / "small.pth"
    result = run("export", "--checkpoint", str(src), "--format", "checkpoint", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    stored = torch.load(out, weights_only=True)
    assert "optimizer" not in stored and stored["step"] == 7 and stored["class_names"][0] == "circle"
    assert all(v.dtype == torch.float16 for v in stored["model"].values() if v.is_floating_point())
    rebuilt = model_from_checkpoint(out).eval()
    assert type(rebuilt) is type(model)
    for (name, a), b in zip(model.state_dict().items(), rebuilt.state_dict().values()):
        torch.testing.assert_close(b, a.half().to(a.dtype) if a.is_floating_point() else a, msg=name)


def test_export_command_with_an_unknown_format_is_one_line_and_exit_2(tmp_path, run):
    result = run("export", "--checkpoint", str(SHIPPED_MODEL), "--format", "tflite", "--out", str(tmp_path / "m"))
    assert_one_line_error(result, "tflite", "onnx", "torch-export", "checkpoint")


def test_export_command_with_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path, run):
    result = run("export", "--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "m.onnx"))
    assert_one_line_error(result, "not found", "nope.pth")


def test_export_command_into_a_missing_folder_is_one_line_and_exit_2(tmp_path, run):
    result = run("export", "--checkpoint", str(SHIPPED_MODEL), "--out", str(tmp_path / "no_dir" / "m.onnx"))
    assert_one_line_error(result, "output folder not found", "no_dir")
    assert not (tmp_path / "no_dir").exists()
