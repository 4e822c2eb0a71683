"""The Trainer: ``train()`` is ``Trainer(...).run()``, and each part of a run does one thing."""
from __future__ import annotations

import time

import pytest
import torch

from detr_tutorial import checkpoint as ckpt_io
from detr_tutorial.data import build_dataset
from detr_tutorial.runlog import read_log
from detr_tutorial.train import train
from detr_tutorial.trainer import Trainer
from training_helpers import TinyBoxes, tiny_recipe

QUIET = dict(device="cpu", final_eval=False, progress=False)


def _train_records(folder) -> list[dict]:
    return [r for r in read_log(folder / "log.jsonl") if r["kind"] == "train"]


def test_train_is_a_trainer_run_with_the_same_losses(tmp_path):
    by_function = train(tiny_recipe(max_steps=3), tmp_path / "f", datasets=(TinyBoxes(8), None), **QUIET)
    by_trainer = Trainer(tiny_recipe(max_steps=3), tmp_path / "t", datasets=(TinyBoxes(8), None), **QUIET).run()
    assert by_function.steps == by_trainer.steps == 3
    losses = [[r["loss"] for r in _train_records(result.output_dir)] for result in (by_function, by_trainer)]
    assert len(losses[0]) == 3 and losses[0] == losses[1]  # bitwise: same seed, same order of random draws


def test_setup_builds_the_parts_without_training_or_writing_a_checkpoint(tmp_path):
    trainer = Trainer(tiny_recipe(max_steps=5), tmp_path, datasets=(TinyBoxes(8), None), **QUIET)
    trainer.setup()
    assert trainer.step == 0 and trainer.total_steps == 5
    assert trainer.steps_per_epoch == 4  # 8 images, batches of 2
    assert trainer.model.num_classes == 3  # sized to the training set's class names
    assert trainer.train_model is trainer.model  # one process, not compiled: no wrapper
    assert {g["name"] for g in trainer.optimizer.param_groups} == {"transformer", "backbone"}
    assert not (tmp_path / "checkpoint.pth").exists()


def test_bad_arguments_are_refused_before_anything_is_built(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="max_steps must be a positive int"):
        Trainer(tiny_recipe(), tmp_path / "run", max_steps=0)
    with pytest.raises(ValueError, match="is a file, expected a folder"):
        Trainer(tiny_recipe(), tmp_path / "a_file")
    with pytest.raises(ValueError, match="amp must be one of"):
        Trainer(tiny_recipe(), tmp_path / "run", amp="fp8")
    assert not (tmp_path / "run").exists()


def test_the_training_time_counts_the_steps_and_not_the_callbacks(tmp_path):
    seconds = []

    def slow_callback(info):
        seconds.append(info.seconds)
        time.sleep(0.5)  # as a long evaluation or checkpoint would

    result = train(tiny_recipe(max_steps=3), tmp_path, datasets=(TinyBoxes(8), None), on_step_end=slow_callback,
                   **QUIET)
    assert result.minutes * 60 == pytest.approx(sum(seconds))  # the steps' own wall times
    end = next(r for r in read_log(tmp_path / "log.jsonl") if r["kind"] == "end")
    assert (end["wall_minutes"] - end["train_minutes"]) * 60 >= 3 * 0.5  # the sleeps count in wall time only


def test_a_train_record_holds_the_means_of_the_steps_since_the_last_one(tmp_path):
    losses = {}
    train(tiny_recipe(max_steps=3, log_every=2), tmp_path, datasets=(TinyBoxes(8), None),
          on_step_end=lambda info: losses.setdefault(info.step, info.loss), **QUIET)
    records = _train_records(tmp_path)
    assert [r["step"] for r in records] == [2, 3]  # every second step, and the last one
    assert records[0]["loss"] == pytest.approx((losses[1] + losses[2]) / 2)
    assert records[1]["loss"] == pytest.approx(losses[3])


def test_periodic_checkpoints_and_evaluations_skip_the_last_step_which_the_end_covers(tmp_path):
    saved_step = {}  # step -> the step of the checkpoint on disk when the callback ran

    def read_checkpoint(info):  # the periodic checkpoint is written before the callback
        path = tmp_path / "checkpoint.pth"
        saved_step[info.step] = ckpt_io.load_checkpoint(path)["step"] if path.exists() else None

    val = build_dataset("shapes", "val", num_images=2)
    recipe = tiny_recipe(max_steps=3, checkpoint_every=2, eval_every=1, eval_max_images=2)
    train(recipe, tmp_path, datasets=(TinyBoxes(8), val), on_step_end=read_checkpoint,
          device="cpu", final_eval=False, progress=False)
    assert saved_step == {1: None, 2: 2, 3: 2}  # every second step, but not the last
    assert [r["step"] for r in read_log(tmp_path / "log.jsonl") if r["kind"] == "eval"] == [1, 2]
    assert ckpt_io.load_checkpoint(tmp_path / "checkpoint.pth")["step"] == 3


def test_resume_restores_the_step_and_the_optimizer_state_of_the_checkpoint(tmp_path):
    first = train(tiny_recipe(max_steps=2), tmp_path / "a", datasets=(TinyBoxes(8), None), **QUIET)
    trainer = Trainer(tiny_recipe(max_steps=4), tmp_path / "b", datasets=(TinyBoxes(8), None),
                      resume=first.checkpoint, **QUIET)
    trainer.setup()
    assert trainer.step == 2 and trainer.scheduler.last_epoch == 2
    saved = ckpt_io.load_checkpoint(first.checkpoint)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, saved["model"][name]), name


def test_dt_train_stays_callable_after_the_train_module_is_imported():
    """Python binds ``detr_tutorial.train`` to the submodule once it is imported (the CLI and the
    trainer import it); ``dt.train(...)`` must still train."""
    import importlib

    import detr_tutorial as dt

    importlib.import_module("detr_tutorial.train")
    for _ in range(2):  # the second access used to return the bare module
        with pytest.raises(ValueError, match="max_steps must be a positive int"):
            dt.train("shapes-cpu", max_steps=0)  # train()'s own check: the call reached the function
