"""``python -m detr_tutorial``: train end to end, evaluate, predict, and one-line errors (exit 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detr_tutorial.data import ShapesConfig, ShapesDataset
from reference_data import load_io, reference_path

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
ENV.update({"OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO_ROOT)})
TINY = [
    "--set", "model.hidden_dim=32", "--set", "model.nheads=2", "--set", "model.enc_layers=1",
    "--set", "model.dec_layers=1", "--set", "model.dim_feedforward=64", "--set", "model.num_queries=8",
    "--set", "batch_size=4", "--set", "num_workers=0",
]
TINY_SHAPES = [*TINY, "--set", "data.train_num_images=8", "--set", "data.val_num_images=8"]


def cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detr_tutorial", *args], env=ENV, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


class Result:
    """What a command did: exit status and its output streams (like ``CompletedProcess``)."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(capsys):
    """Run the command line in this process (``cli.main``): same code, no interpreter start-up."""
    from detr_tutorial.cli import main

    def _run(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return _run


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]), proc.stderr
    for fragment in fragments:
        assert fragment in errors[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """``train --max-steps 2`` of the default recipe, shrunk to a tiny model and data set."""
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = cli("train", "--max-steps", "2", "--output-dir", str(out), "--no-progress", *TINY_SHAPES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained shapes-cpu: 2 steps" in proc.stdout
    assert "mAP@[.5:.95] =" in proc.stdout
    return out


def test_train_runs_end_to_end_and_writes_model_checkpoint_log_and_metrics(run_dir):
    for name in ("model_final.pth", "checkpoint.pth", "log.jsonl", "metrics.json"):
        assert (run_dir / name).is_file(), name
    state = torch.load(run_dir / "checkpoint.pth", weights_only=True)
    assert state["step"] == 2 and state["config"]["hidden_dim"] == 32
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert records[0]["kind"] == "start"
    # started without OMP_WAIT_POLICY: train re-executed itself with passive OpenMP waiting
    assert records[0]["omp_wait_policy"] == "PASSIVE"
    assert [r["step"] for r in records if r["kind"] == "train"] == [2]  # the last step is always logged
    assert records[-1]["kind"] == "eval" and "AP" in records[-1]["metrics"]


def test_eval_reproduces_the_training_metrics_and_writes_json(run_dir, tmp_path, run):
    out = tmp_path / "m.json"
    proc = run("eval", "--checkpoint", str(run_dir / "model_final.pth"), "--dataset", "shapes", "--split", "val",
               "--set", "num_images=8", "--json", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "AP50" in proc.stdout
    metrics = json.loads(out.read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(trained["AP"], abs=1e-9)


def test_predict_draws_boxes_and_saves_images(run_dir, tmp_path, run):
    image = tmp_path / "scene.png"
    ShapesDataset("val", transforms=None, num_images=1).load(0)[0].save(image)
    proc = run("predict", "--checkpoint", str(run_dir / "model_final.pth"), str(image),
               "--out", str(tmp_path / "pred"), "--threshold", "0.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import numpy as np
    from PIL import Image

    with Image.open(tmp_path / "pred" / "scene_pred.png") as drawn, Image.open(image) as original:
        assert drawn.size == original.size
        assert not np.array_equal(np.asarray(drawn.convert("RGB")), np.asarray(original.convert("RGB")))
    records = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(records[0]["boxes"]) == 8  # threshold 0 keeps every query


def test_eval_of_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path):
    assert_one_line_error(cli("eval", "--checkpoint", str(tmp_path / "nope.pth")), "not found", "nope.pth")


def test_eval_of_an_unreadable_checkpoint_is_one_line_and_exit_2(tmp_path, run):
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    assert_one_line_error(run("eval", "--checkpoint", str(bad)), "cannot read checkpoint")


def test_missing_data_directory_is_one_line_and_exit_2(tmp_path, run):
    assert_one_line_error(run("train", "--data-dir", str(tmp_path / "no_data")), "not found", "no_data")


def test_wrong_class_count_is_one_line_and_exit_2(run_dir, tmp_path, run):
    folder = tmp_path / "two_classes"
    ShapesDataset("val", config=ShapesConfig(num_classes=2, val_size=4)).export(folder)
    proc = run("eval", "--checkpoint", str(run_dir / "model_final.pth"), "--dataset", "folder",
               "--data-dir", str(folder), "--split", "val")
    assert_one_line_error(proc, "3 classes", "has 2")


def test_fine_tuning_on_other_classes_says_how_to_replace_the_class_head(run_dir, tmp_path, run):
    folder = tmp_path / "two_classes"
    for split in ("train", "val"):
        ShapesDataset(split, config=ShapesConfig(num_classes=2, train_size=8, val_size=4)).export(folder)
    args = ["train", "--data-dir", str(folder), "--init-from", str(run_dir / "model_final.pth"),
            "--max-steps", "1", "--output-dir", str(tmp_path / "ft"), "--no-progress", *TINY]
    assert_one_line_error(run(*args), "--reset-class-head", "reset_class_head(2)")
    proc = run(*args, "--reset-class-head")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(tmp_path / "ft" / "model_final.pth", weights_only=True)["class_names"] == ["circle", "rectangle"]


def test_convert_reads_an_official_checkpoint_and_reproduces_its_outputs(tmp_path, run):
    # the official code's model (ResNet-18, hidden 64, 4 heads) and its outputs on two images
    out = tmp_path / "ours.pth"
    proc = run("convert", "--official", str(reference_path("official_detr.pth")), "--out", str(out), "--set", "nheads=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from detr_tutorial.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(out).eval()
    io = load_io()
    with torch.no_grad():
        got = model(io["images"])
    torch.testing.assert_close(got["pred_logits"], io["outputs"]["pred_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["pred_boxes"], io["outputs"]["pred_boxes"], atol=1e-4, rtol=1e-4)


def test_convert_of_a_checkpoint_that_does_not_fit_the_named_model_is_one_line_and_exit_2(tmp_path, run):
    proc = run("convert", "--official", str(reference_path("official_detr.pth")), "--out", str(tmp_path / "x.pth"),
               "--name", "detr-r50")
    assert_one_line_error(proc, "does not fit")
    assert not (tmp_path / "x.pth").exists()
