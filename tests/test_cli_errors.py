"""Bad input on the command line: one ``error: ...`` line and exit status 2, never a traceback.

Each test feeds one bad value or one failing environment (disk full, read-only folder) to
``cli.main`` in this process; ``test_cli.py`` holds the end-to-end runs.
"""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from detr_tutorial import checkpoint as ckpt_io
from detr_tutorial.cli import _one_line
from detr_tutorial.config import get_config
from detr_tutorial.data import ShapesConfig, ShapesDataset
from detr_tutorial.families import build_model
from reference_data import reference_path
from test_cli import TINY_SHAPES, assert_one_line_error, run  # noqa: F401  (run is a fixture)
from training_helpers import TINY_MODEL

SHAPES = ["circle", "rectangle", "triangle"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model for the shapes classes, saved as the package saves models."""
    torch.manual_seed(0)
    cfg = get_config("detr-tiny", **TINY_MODEL, num_classes=3, class_names=SHAPES)
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    ckpt_io.save_checkpoint({"format": ckpt_io.FORMAT, "model": build_model(cfg).state_dict(),
                             "config": cfg.to_dict(), "class_names": SHAPES}, path)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    ShapesDataset("val", transforms=None, num_images=1).load(0)[0].save(path)
    return path


def _train(run, tmp_path, *extra: str):
    return run("train", "--max-steps", "1", "--output-dir", str(tmp_path / "run"), "--no-progress", *TINY_SHAPES, *extra)


# ---------------------------------------------------------------------------- option values
def test_output_dir_that_is_a_file_is_one_line(run, tmp_path):
    (tmp_path / "taken").write_text("x")
    proc = run("train", "--output-dir", str(tmp_path / "taken"), "--max-steps", "1")
    assert_one_line_error(proc, "--output-dir", "is a file")


@pytest.mark.parametrize("setting, fragment", [("batch_size=abc", "batch_size expects an int"),
                                               ("lr=fast", "lr expects a finite number"),
                                               ("lr=NaN", "lr expects a finite number")])
def test_recipe_value_of_the_wrong_type_is_one_line(run, tmp_path, setting, fragment):
    assert_one_line_error(_train(run, tmp_path, "--set", setting), fragment, "got")


@pytest.mark.parametrize("setting, fragment", [("model.hidden_dim=abc", "hidden_dim"), ("model.nheads=0", "nheads")])
def test_bad_model_field_is_one_line(run, tmp_path, setting, fragment):
    assert_one_line_error(_train(run, tmp_path, "--set", setting), fragment)


def test_unknown_device_is_one_line(run, tmp_path):
    assert_one_line_error(_train(run, tmp_path, "--device", "foo"), "--device 'foo'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_one_line(run, tmp_path, checkpoint, image):
    assert_one_line_error(_train(run, tmp_path, "--device", "cuda"), "CUDA is not available")
    proc = run("predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path), "--device", "cuda")
    assert_one_line_error(proc, "CUDA is not available")


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_non_positive_max_steps_is_refused(run, tmp_path, steps):
    assert_one_line_error(_train(run, tmp_path, "--max-steps", steps), "--max-steps must be a positive integer")
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


@pytest.mark.parametrize("threshold", ["nan", "5", "-0.1"])
def test_threshold_outside_zero_one_is_refused(run, tmp_path, checkpoint, image, threshold):
    proc = run("predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "p"),
               "--threshold", threshold)
    assert_one_line_error(proc, "--threshold must be a score in [0, 1]")


# ------------------------------------------------------------------------------- outputs
def test_images_with_one_name_in_two_folders_get_distinct_predictions(run, tmp_path, checkpoint, image):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "img.png").write_bytes(image.read_bytes())
    proc = run("predict", "--checkpoint", str(checkpoint), str(tmp_path / "a" / "img.png"),
               str(tmp_path / "b" / "img.png"), "--out", str(tmp_path / "p"), "--threshold", "0")
    assert proc.returncode == 0, proc.stderr
    records = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert [Path(r["drawn"]).name for r in records] == ["img_1_pred.png", "img_2_pred.png"]
    assert all(Path(r["drawn"]).is_file() for r in records)


def test_disk_full_during_a_checkpoint_write_is_one_line(run, tmp_path, monkeypatch):
    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    proc = run("convert", "--official", str(reference_path("official_detr.pth")), "--out", str(tmp_path / "x.pth"),
               "--set", "nheads=4")
    assert_one_line_error(proc, "cannot write checkpoint", "x.pth", "No space left on device")
    assert list(tmp_path.iterdir()) == []


def _read_only(monkeypatch, folder: Path) -> None:
    """Make writes into ``folder`` fail as on a read-only file system (root ignores chmod)."""
    import builtins
    import tempfile

    real_open, real_mkstemp = builtins.open, tempfile.mkstemp

    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and Path(str(file)).resolve().is_relative_to(folder.resolve()):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            refuse(dir)
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(tempfile, "mkstemp", guarded_mkstemp)


def test_read_only_output_folder_of_train_is_one_line(run, tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    _read_only(monkeypatch, tmp_path / "run")
    assert_one_line_error(_train(run, tmp_path), "Read-only file system", "run")


def test_read_only_json_of_eval_is_one_line(run, tmp_path, monkeypatch, checkpoint):
    _read_only(monkeypatch, tmp_path)
    proc = run("eval", "--checkpoint", str(checkpoint), "--dataset", "shapes", "--set", "num_images=2",
               "--json", str(tmp_path / "m.json"), "--no-progress")
    assert_one_line_error(proc, "Read-only file system", "m.json")


def test_read_only_out_of_predict_is_one_line(run, tmp_path, monkeypatch, checkpoint, image):
    (tmp_path / "p").mkdir()
    _read_only(monkeypatch, tmp_path / "p")
    proc = run("predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "p"))
    assert_one_line_error(proc, "Read-only file system", "scene_pred.png")


# -------------------------------------------------------------------- errors from elsewhere
class _BrokenSample(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i):
        raise ValueError("cannot read image broken.png: truncated file")


def test_a_worker_exception_is_reported_by_its_own_message():
    with pytest.raises(ValueError) as err:
        next(iter(DataLoader(_BrokenSample(), num_workers=1)))
    assert "Traceback" in str(err.value)  # how torch hands it over: the worker's traceback as message
    assert _one_line(err.value) == "cannot read image broken.png: truncated file"


def test_a_corrupt_image_in_a_data_set_read_by_workers_is_one_line(run, tmp_path, checkpoint):
    folder = tmp_path / "data"
    ShapesDataset("val", config=ShapesConfig(val_size=2)).export(folder)
    victim = sorted((folder / "val").iterdir())[0]
    victim.write_bytes(b"not a png")
    proc = run("eval", "--checkpoint", str(checkpoint), "--dataset", "folder", "--data-dir", str(folder),
               "--num-workers", "1", "--no-progress")
    assert_one_line_error(proc, victim.name)


def test_ctrl_c_during_training_exits_130_naming_the_saved_checkpoint(run, tmp_path, monkeypatch):
    from detr_tutorial import train as train_module

    def interrupted(*args, **kwargs):
        raise train_module.TrainingInterrupted(3, tmp_path / "run" / "checkpoint.pth")

    monkeypatch.setattr(train_module, "train", interrupted)
    proc = _train(run, tmp_path)
    assert proc.returncode == 130
    assert "step 3" in proc.stderr and "checkpoint.pth" in proc.stderr and "--resume" in proc.stderr


def test_divergence_is_one_line_naming_the_step_and_learning_rate(run, tmp_path):
    proc = run("train", "--max-steps", "3", "--output-dir", str(tmp_path / "run"), "--no-progress", *TINY_SHAPES,
               "--set", "lr=1e6", "--set", "lr_backbone=1e6", "--set", "clip_max_norm=0")
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "at step 2" in errors[0] and ", lr " in errors[0], proc.stderr[-2000:]  # (warm-up)
    assert "pred_logits contains NaN" not in proc.stderr


def test_ctrl_c_in_a_terminal_saves_a_resumable_checkpoint_and_exits_130(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_cli import ENV, REPO_ROOT

    out = tmp_path / "run"
    # the whole process group gets the signal, as from a terminal: data loader workers included
    proc = subprocess.Popen(
        [sys.executable, "-m", "detr_tutorial", "train", "--max-steps", "1000", "--output-dir", str(out),
         "--no-progress", *TINY_SHAPES, "--set", "log_every=1", "--set", "num_workers=1"],
        env=ENV, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while '"kind": "train"' not in ((out / "log.jsonl").read_text() if (out / "log.jsonl").exists() else ""):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "training never logged a step"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    step = ckpt_io.load_checkpoint(out / "checkpoint.pth")["step"]
    assert 1 <= step < 1000 and f"checkpoint of step {step} saved" in err
