"""Checkpoints: safe to load, atomic to write, exact to resume, explicit about class heads."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from detr_tutorial import checkpoint as ckpt_io
from detr_tutorial.config import get_config
from detr_tutorial.families import build_model
from detr_tutorial.train import train
from training_helpers import TINY_MODEL, TinyBoxes, tiny_recipe, tiny_rtdetr

HELPER = Path(__file__).with_name("training_helpers.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two-step training run of the tiny model on three classes."""
    out = tmp_path_factory.mktemp("run")
    return train(tiny_recipe(max_steps=2), out, device="cpu", datasets=(TinyBoxes(8), None),
                 final_eval=False, progress=False)


def _tiny_model(num_classes: int):
    return build_model(get_config("detr-tiny", **TINY_MODEL, num_classes=num_classes))


def test_training_checkpoint_loads_with_weights_only(trained):
    state = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)
    assert state["format"] == ckpt_io.FORMAT
    assert state["step"] == 2
    assert state["class_names"] == ["a", "b", "c"]
    assert state["label_map"] == {0: 1, 1: 2, 2: 3}
    for key in ("model", "optimizer", "scheduler", "rng", "config", "recipe"):
        assert key in state
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}


def test_final_model_rebuilds_from_its_stored_config(trained):
    model = ckpt_io.model_from_checkpoint(trained.final_model)
    state = torch.load(trained.final_model, weights_only=True)
    assert model.num_classes == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["model"][k])


def test_other_class_count_is_refused_with_how_to_replace_the_head(trained):
    model = _tiny_model(num_classes=5)
    with pytest.raises(ckpt_io.ClassHeadMismatchError) as err:
        ckpt_io.load_model_weights(model, ckpt_io.load_checkpoint(trained.final_model))
    message = str(err.value)
    assert "3 classes" in message and "5" in message
    assert "model.reset_class_head(5)" in message and "--reset-class-head" in message


def test_reset_class_head_loads_everything_but_the_head(trained):
    model = _tiny_model(num_classes=5)
    fresh_head = model.class_embed.weight.detach().clone()
    ckpt_io.load_model_weights(model, ckpt_io.load_checkpoint(trained.final_model), reset_class_head=True)
    saved = torch.load(trained.final_model, weights_only=True)["model"]
    assert torch.equal(model.input_proj.weight, saved["input_proj.weight"])
    assert torch.equal(model.class_embed.weight, fresh_head)
    assert model.class_embed.out_features == 6


def test_an_rtdetr_checkpoint_of_other_classes_is_refused_then_loads_without_its_class_heads():
    """RT-DETR's class-dependent parts are its score heads (encoder and every decoder layer) and
    the denoising label embedding; everything else transfers, as in DETR."""
    three = tiny_rtdetr(seed=3, num_classes=3)
    ckpt = {"model": three.state_dict(), "config": three.config.to_dict()}
    five = tiny_rtdetr(seed=5, num_classes=5)  # other initial weights than the checkpoint's
    with pytest.raises(ckpt_io.ClassHeadMismatchError, match=r"trained for 3 classes but the model has 5"):
        ckpt_io.load_model_weights(five, ckpt)
    fresh = {k: v.clone() for k, v in five.state_dict().items()}
    ckpt_io.load_model_weights(five, ckpt, reset_class_head=True)
    kept = [k for k, v in five.state_dict().items() if torch.equal(v, fresh[k]) and not torch.equal(v, ckpt["model"][k])
            if v.shape == ckpt["model"][k].shape]
    assert kept == []  # every weight that fits came from the checkpoint
    assert [h.out_features for h in five.class_heads()] == [5, 5]
    assert torch.equal(five.decoder.enc_score_head.weight, fresh["decoder.enc_score_head.weight"])
    assert torch.equal(five.decoder.denoising_class_embed.weight, fresh["decoder.denoising_class_embed.weight"])


def test_unreadable_and_missing_checkpoints_raise_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ckpt_io.CheckpointError, match="cannot read checkpoint") as err:
        ckpt_io.load_checkpoint(garbage)
    assert "\n" not in str(err.value)
    with pytest.raises(ckpt_io.CheckpointError, match="not found"):
        ckpt_io.load_checkpoint(tmp_path / "missing.pth")


def test_a_failed_write_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    ckpt_io.save_checkpoint({"model": {"w": torch.ones(3)}, "step": 1}, path)

    def crash(src, dst):  # the process dies between writing the temporary file and renaming it
        raise KeyboardInterrupt("killed during the checkpoint write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt_io.save_checkpoint({"model": {"w": torch.zeros(3)}, "step": 2}, path)
    monkeypatch.undo()
    state = ckpt_io.load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temporary file left


def test_rng_state_round_trips():
    state = ckpt_io.capture_rng_state()
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    ckpt_io.restore_rng_state(state)
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def _run(out: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, str(HELPER), str(out), "--steps", "6", "--checkpoint-every", "2", "--dropout", "0.1", *extra]
    return subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]


def test_sigkill_then_resume_ends_with_the_parameters_of_an_uninterrupted_run(tmp_path):
    # dropout is on and the data are augmented: an exact match needs every RNG state restored
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = _run(whole)
    victim = _run(killed, "--hang-at", "5")  # hangs after step 5; the last checkpoint is step 4
    try:
        deadline = time.time() + 240
        while not (killed / "hanging").exists():
            assert victim.poll() is None, victim.communicate()[1][-3000:]
            assert time.time() < deadline, "the training subprocess never reached step 5"
            time.sleep(0.2)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert not (killed / "params.pt").exists()
    assert ckpt_io.load_checkpoint(killed / "checkpoint.pth")["step"] == 4
    _finish(reference)
    _finish(_run(killed, "--resume", str(killed / "checkpoint.pth")))

    a = torch.load(whole / "params.pt", weights_only=True)
    b = torch.load(killed / "params.pt", weights_only=True)
    assert a["steps"] == b["steps"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    starts = [r for r in _log_records(killed) if r["kind"] == "start"]
    assert [r["step"] for r in starts] == [0, 4]  # the resumed run started from the checkpoint


def _log_records(run: Path) -> list[dict]:
    from detr_tutorial.runlog import read_log

    return read_log(run / "log.jsonl")


def test_exported_half_precision_model_is_smaller_and_rebuilds(trained, tmp_path):
    small = ckpt_io.export_model(trained.final_model, tmp_path / "small.pth", half=True)
    assert small.stat().st_size < 0.6 * trained.final_model.stat().st_size
    state = torch.load(small, weights_only=True)
    assert "optimizer" not in state and state["class_names"] == ["a", "b", "c"]
    model = ckpt_io.model_from_checkpoint(small)
    full = torch.load(trained.final_model, weights_only=True)["model"]
    for k, v in model.state_dict().items():
        assert v.dtype == full[k].dtype
        torch.testing.assert_close(v, full[k], atol=1e-2, rtol=1e-3)  # float16 rounding


# ------------------------------------------------------------------ failures and resumes
def test_disk_full_during_a_write_raises_a_checkpoint_error_and_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "checkpoint.pth"
    ckpt_io.save_checkpoint({"model": {"w": torch.ones(3)}, "step": 1}, path)

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ckpt_io.CheckpointError, match="No space left on device") as err:
        ckpt_io.save_checkpoint({"model": {"w": torch.zeros(3)}, "step": 2}, path)
    monkeypatch.undo()
    assert "checkpoint.pth" in str(err.value)
    assert ckpt_io.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_a_checkpoint_folder_under_a_file_raises_a_checkpoint_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ckpt_io.CheckpointError, match="cannot write checkpoint"):
        ckpt_io.save_checkpoint({"model": {}}, tmp_path / "file" / "checkpoint.pth")


def test_empty_official_checkpoint_file_is_a_checkpoint_error_not_eof(tmp_path):
    from detr_tutorial.pretrained import from_official

    empty = tmp_path / "detr.pth"
    empty.write_bytes(b"")
    with pytest.raises(ckpt_io.CheckpointError, match="cannot read official checkpoint"):
        from_official("detr-r50", checkpoint=str(empty))


def test_unreadable_backbone_weights_file_is_a_checkpoint_error(tmp_path):
    from detr_tutorial.models.backbone import Backbone

    bad = tmp_path / "resnet18.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(ckpt_io.CheckpointError, match="cannot read backbone weights file"):
        Backbone("resnet18", weights=str(bad))


def test_export_refuses_a_bare_state_dict_it_cannot_describe(tmp_path):
    bare = tmp_path / "bare.pth"
    torch.save(_tiny_model(3).state_dict(), bare)
    with pytest.raises(ckpt_io.CheckpointError, match="no model config"):
        ckpt_io.export_model(bare, tmp_path / "small.pth")
    assert not (tmp_path / "small.pth").exists()


def test_resume_with_another_batch_size_is_refused(trained, tmp_path):
    with pytest.raises(ValueError, match="batch_size=2, this run has batch_size=4"):
        train(tiny_recipe(max_steps=3, batch_size=4), tmp_path, device="cpu", datasets=(TinyBoxes(8), None),
              resume=trained.checkpoint, final_eval=False, progress=False)


def test_resume_with_a_budget_below_the_checkpoint_step_is_refused(trained, tmp_path):
    with pytest.raises(ValueError, match="at step 2, past this run's budget of 1 steps"):
        train(tiny_recipe(), tmp_path, device="cpu", max_steps=1, datasets=(TinyBoxes(8), None),
              resume=trained.checkpoint, final_eval=False, progress=False)


def test_resume_with_a_longer_budget_warns_and_lays_the_schedule_over_it(trained, tmp_path, caplog):
    import shutil

    shutil.copy(trained.checkpoint, tmp_path / "checkpoint.pth")
    recipe = tiny_recipe(lr_drop_fraction=0.5, lr_drop_factor=0.1)  # the run planned 2 steps: drop at 1
    with caplog.at_level("WARNING"):
        train(recipe, tmp_path, device="cpu", max_steps=8, datasets=(TinyBoxes(8), None),
              resume=tmp_path / "checkpoint.pth", final_eval=False, progress=False)
    assert "planned for 2 steps with a budget of 8" in caplog.text
    lrs = {r["step"]: r["lr"] for r in _log_records(tmp_path) if r["kind"] == "train"}
    assert lrs[3] == pytest.approx(1e-4) and lrs[5] == pytest.approx(1e-5)  # new drop at step 4


def test_resume_removes_temporary_files_of_interrupted_writes_and_trims_replayed_log_steps(trained, tmp_path):
    import shutil

    shutil.copy(trained.checkpoint, tmp_path / "checkpoint.pth")
    shutil.copy(trained.log, tmp_path / "log.jsonl")
    stale = tmp_path / ".checkpoint.pth.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    with open(tmp_path / "log.jsonl", "a", encoding="utf-8") as f:  # a killed run got to step 3
        f.write('{"kind": "train", "step": 3, "loss": 9.0}\n{"kind": "train", "st')
    train(tiny_recipe(), tmp_path, device="cpu", max_steps=3, datasets=(TinyBoxes(8), None),
          resume=tmp_path / "checkpoint.pth", final_eval=False, progress=False)
    assert not stale.exists()
    steps = [r["step"] for r in _log_records(tmp_path) if r["kind"] == "train"]
    assert steps == [1, 2, 3]
    assert [r["loss"] for r in _log_records(tmp_path) if r["kind"] == "train" and r["step"] == 3] != [9.0]


@pytest.fixture
def python_sigint_handler():
    """Python's own Ctrl-C handler, whatever the test runner inherited (a job started in the
    background by a non-interactive shell starts with SIGINT ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_saves_a_checkpoint_that_resumes_to_the_uninterrupted_parameters(tmp_path, python_sigint_handler):
    from detr_tutorial.train import TrainingInterrupted

    whole = train(tiny_recipe(max_steps=3), tmp_path / "whole", device="cpu", datasets=(TinyBoxes(8), None),
                  final_eval=False, progress=False)

    def press_ctrl_c(info):
        if info.step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as err:
        train(tiny_recipe(max_steps=3), tmp_path / "cut", device="cpu", datasets=(TinyBoxes(8), None),
              final_eval=False, progress=False, on_step_end=press_ctrl_c)
    assert err.value.step == 1 and ckpt_io.load_checkpoint(err.value.checkpoint)["step"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
    resumed = train(tiny_recipe(max_steps=3), tmp_path / "cut", device="cpu", datasets=(TinyBoxes(8), None),
                    resume=err.value.checkpoint, final_eval=False, progress=False)
    a = torch.load(whole.final_model, weights_only=True)["model"]
    b = torch.load(resumed.final_model, weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
