"""The moving average of the weights (``ModelEMA``, the recipes' ``ema_decay``): its arithmetic,
and a training run that evaluates, ships and resumes it."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detr_tutorial import checkpoint as ckpt_io
from detr_tutorial.data import build_dataset
from detr_tutorial.ema import ModelEMA
from detr_tutorial.recipes import get_recipe
from detr_tutorial.train import train
from detr_tutorial.trainer import Trainer
from training_helpers import TinyBoxes, tiny_recipe

QUIET = dict(device="cpu", final_eval=False, progress=False)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _perturb(net: nn.Module, step: int) -> None:
    """What an optimizer step and a training forward do: new weights, new batch statistics."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * (step + 1))
    net.train()(torch.randn(8, 3))


def test_the_average_follows_the_official_ramped_formula_from_a_copy_at_the_first_update():
    net, decay, warmup = _net(), 0.9, 3
    ema = ModelEMA(net, decay, warmup)
    expected = None
    for step in range(5):
        _perturb(net, step)
        ema.update(net)
        weight = net[0].weight.detach().clone()
        if expected is None:
            expected = weight  # the first update copies the model
        else:
            d = decay * (1 - math.exp(-(step + 1) / warmup))  # d_t of update t = step + 1
            expected = d * expected + (1 - d) * weight
        torch.testing.assert_close(ema.module[0].weight, expected)
    assert ema.updates == 5
    assert ema.decay_at(3) == pytest.approx(0.9 * (1 - math.exp(-1)))
    assert ModelEMA(net, 0.9, 0).decay_at(1) == 0.9  # no ramp


def test_batchnorm_statistics_are_averaged_and_the_batch_count_is_the_models():
    net = _net()
    ema = ModelEMA(net, 0.5)
    _perturb(net, 0)
    ema.update(net)
    first_mean = net[1].running_mean.clone()
    _perturb(net, 1)
    ema.update(net)
    torch.testing.assert_close(ema.module[1].running_mean, 0.5 * first_mean + 0.5 * net[1].running_mean)
    assert int(ema.module[1].num_batches_tracked) == int(net[1].num_batches_tracked) == 2


def test_the_average_is_a_frozen_copy_in_eval_mode_that_training_does_not_touch():
    net = _net()
    ema = ModelEMA(net, 0.99)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in net.parameters())
    before = ema.module[0].weight.clone()
    _perturb(net, 0)  # no update: the average keeps its values
    torch.testing.assert_close(ema.module[0].weight, before)


def test_the_state_round_trips_and_a_wrong_state_is_refused():
    net = _net()
    ema = ModelEMA(net, 0.9, 2)
    for step in range(3):
        _perturb(net, step)
        ema.update(net)
    other = ModelEMA(_net(), 0.9, 2)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 3
    for a, b in zip(other.module.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not an EMA state: it lacks updates"):
        other.load_state_dict({"module": ema.module.state_dict()})


@pytest.mark.parametrize("decay, warmup, message", [
    (1.0, 0, "ema_decay must be a number in \\[0, 1\\)"),
    (-0.1, 0, "ema_decay must be a number in \\[0, 1\\)"),
    (True, 0, "ema_decay must be a number"),
    (0.9, -1, "ema_warmup_steps must be an int >= 0"),
    (0.9, 2.5, "ema_warmup_steps must be an int >= 0"),
])
def test_bad_settings_are_refused_by_the_recipe_and_the_class(decay, warmup, message):
    with pytest.raises(ValueError, match=message):
        get_recipe("shapes-cpu", ema_decay=decay, ema_warmup_steps=warmup)
    with pytest.raises(ValueError, match=message):
        ModelEMA(_net(), decay, warmup)


def test_a_decay_of_zero_means_no_average_in_a_recipe_and_is_refused_by_the_class(tmp_path):
    trainer = Trainer(tiny_recipe(), tmp_path, datasets=(TinyBoxes(8), None), **QUIET)
    trainer.setup()
    assert trainer.ema is None and trainer.eval_model is trainer.model
    with pytest.raises(ValueError, match="needs decay > 0"):
        ModelEMA(_net(), 0.0)


def _ema_recipe(**overrides):
    return tiny_recipe(ema_decay=0.5, ema_warmup_steps=1, **overrides)


def test_a_run_with_an_ema_evaluates_and_ships_the_average_and_checkpoints_both(tmp_path):
    val = build_dataset("shapes", "val", num_images=2)
    trainer = Trainer(_ema_recipe(max_steps=3), tmp_path, datasets=(TinyBoxes(8), val), device="cpu",
                      progress=False)
    result = trainer.run()
    assert trainer.ema is not None and trainer.ema.updates == 3 and trainer.eval_model is trainer.ema.module
    averaged, raw = trainer.ema.module.state_dict(), trainer.model.state_dict()
    final = ckpt_io.load_checkpoint(result.final_model)
    assert final["weights"] == "ema"
    assert all(torch.equal(final["model"][k], averaged[k]) for k in averaged)
    assert not all(torch.equal(averaged[k], raw[k]) for k in raw)  # the average lags the model
    state = ckpt_io.load_checkpoint(result.checkpoint)
    assert all(torch.equal(state["model"][k], raw[k]) for k in raw)  # the raw weights, to resume
    assert state["ema"]["updates"] == 3
    assert all(torch.equal(state["ema"]["module"][k], averaged[k]) for k in averaged)
    # the checkpoint's inference weights, its export and a model rebuilt from it are the average
    assert ckpt_io.checkpoint_weights(state) is state["ema"]["module"]
    assert ckpt_io.checkpoint_weights(state, use_ema=False) is state["model"]
    exported = ckpt_io.load_checkpoint(ckpt_io.export_model(result.checkpoint, tmp_path / "small.pth"))
    assert exported["weights"] == "ema"
    name = next(k for k, v in averaged.items() if v.is_floating_point())
    assert torch.equal(exported["model"][name], averaged[name].half())
    rebuilt = ckpt_io.model_from_checkpoint(result.checkpoint)
    assert torch.equal(rebuilt.state_dict()[name], averaged[name])
    # the final evaluation scored the average
    from detr_tutorial import engine
    from detr_tutorial.train import make_eval_loader

    again = engine.evaluate(trainer.ema.module, trainer.postprocess, make_eval_loader(val, 2), val, "cpu")
    assert again["AP"] == pytest.approx(result.metrics["AP"])


def test_resuming_a_run_with_an_ema_ends_with_the_average_of_an_uninterrupted_run(tmp_path):
    import shutil

    def keep_step_2(info):  # the periodic checkpoint of step 2, before step 4's overwrites it
        if info.step == 2:
            shutil.copy(tmp_path / "straight" / "checkpoint.pth", tmp_path / "step2.pth")

    straight = Trainer(_ema_recipe(max_steps=4, checkpoint_every=2), tmp_path / "straight",
                       datasets=(TinyBoxes(8), None), on_step_end=keep_step_2, **QUIET)
    straight.run()
    resumed = Trainer(_ema_recipe(max_steps=4, checkpoint_every=2), tmp_path / "b", datasets=(TinyBoxes(8), None),
                      resume=tmp_path / "step2.pth", **QUIET)
    resumed.run()
    assert resumed.ema.updates == straight.ema.updates == 4
    for name, value in straight.ema.module.state_dict().items():
        assert torch.equal(resumed.ema.module.state_dict()[name], value), name


def test_resuming_a_checkpoint_without_an_average_starts_it_from_the_checkpoints_weights(tmp_path, caplog):
    first = train(tiny_recipe(max_steps=2), tmp_path / "a", datasets=(TinyBoxes(8), None), **QUIET)
    resumed = Trainer(_ema_recipe(max_steps=3), tmp_path / "b", datasets=(TinyBoxes(8), None),
                      resume=first.checkpoint, **QUIET)
    with caplog.at_level("WARNING"):
        resumed.setup()
    assert "holds no weight average: the EMA starts from its weights at step 2" in caplog.text
    saved = ckpt_io.load_checkpoint(first.checkpoint)["model"]
    for name, value in resumed.ema.module.state_dict().items():
        assert torch.equal(value, saved[name]), name
