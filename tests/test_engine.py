"""The training loop, its schedule and optimizer, the data order, evaluation and the log plot."""
from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from detr_tutorial.config import get_config
from detr_tutorial.data import build_dataset, collate_fn
from detr_tutorial.engine import NonFiniteLossError, evaluate, train_one_epoch
from detr_tutorial.families import build_criterion, build_model
from detr_tutorial.models import PostProcess
from detr_tutorial.runlog import JsonlLogger, plot_log
from detr_tutorial.sampling import ResumableBatchSampler, SeededSamples
from detr_tutorial.train import LRSchedule, build_optimizer, seed_everything
from training_helpers import TINY_MODEL, TinyBoxes


def _tiny(seed: int = 0):
    seed_everything(seed)
    cfg = get_config("detr-tiny", **TINY_MODEL, num_classes=3)
    return build_model(cfg), build_criterion(cfg)


def _loader(batch_size: int, n: int = 8) -> DataLoader:
    return DataLoader(TinyBoxes(n, augment=False), batch_size=batch_size, shuffle=False, collate_fn=collate_fn)


# ----------------------------------------------------------------------------- the loop
def test_non_finite_loss_stops_training_naming_the_step_and_terms():
    model, criterion = _tiny()
    calls = []

    class PoisonSecondStep(nn.Module):
        weight_dict = criterion.weight_dict

        def forward(self, outputs, targets):
            losses = criterion(outputs, targets)
            calls.append(1)
            if len(calls) == 2:
                losses["loss_giou"] = losses["loss_giou"] * float("nan")
            return losses

        def total(self, losses):
            return criterion.total(losses)

    opt = build_optimizer(model, 1e-4, 1e-5, 1e-4)
    with pytest.raises(NonFiniteLossError) as err:
        train_one_epoch(model, PoisonSecondStep(), _loader(2), opt, "cpu", epoch=0)
    message = str(err.value)
    assert "step 2" in message and "loss_giou=nan" in message and "loss_ce=" in message
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was not applied


def test_divergence_is_reported_by_the_engine_with_step_learning_rate_and_loss_terms():
    # lr 1e6 turns the predictions into NaN after one step, before any loss is NaN: the matcher
    # would refuse them first ("pred_logits contains NaN") without naming the step or the rate
    model, criterion = _tiny()
    opt = build_optimizer(model, 1e6, 1e6, 1e-4)
    with pytest.raises(NonFiniteLossError) as err:
        train_one_epoch(model, criterion, _loader(2, n=16), opt, "cpu", epoch=0, max_norm=0)
    message = str(err.value)
    assert "step 2" in message and "lr 1e+06" in message and "loss_ce=" in message and "pred_logits" in message


def test_accumulating_two_micro_batches_equals_one_batch_of_their_union():
    # TinyBoxes has two boxes per image, so both ways normalize the losses identically
    results = []
    for batch_size, accum in ((4, 1), (2, 2)):
        model, criterion = _tiny()
        opt = build_optimizer(model, 1e-3, 1e-4, 1e-4)
        out = train_one_epoch(model, criterion, _loader(batch_size), opt, "cpu", epoch=0, accum_steps=accum)
        assert out["steps"] == 2
        results.append(model.state_dict())
    diff = max((results[0][k].float() - results[1][k].float()).abs().max().item() for k in results[0])
    # Adam divides by the gradient's running RMS, so a parameter with a near-zero gradient moves by
    # ~lr whatever its sign's rounding: summation-order noise (it depends on the thread count) shows
    # up as differences of ~3e-5 at lr 1e-3. A micro-batch lost or counted twice moves them by ~lr.
    assert diff < 2e-4


def test_step_budget_and_scheduler_are_counted_in_optimizer_steps():
    model, criterion = _tiny()
    opt = build_optimizer(model, 1e-3, 1e-4, 1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LRSchedule("step", total_steps=3, drop_step=2))
    seen = []
    out = train_one_epoch(model, criterion, _loader(2, n=12), opt, "cpu", epoch=0, scheduler=sched,
                          start_step=10, max_steps=13, on_step_end=lambda info: seen.append((info.step, info.lr)))
    assert out["step"] == 13 and out["steps"] == 3
    assert [s for s, _ in seen] == [11, 12, 13]
    assert [lr for _, lr in seen] == pytest.approx([1e-3, 1e-3, 1e-4])


def test_bf16_autocast_on_the_cpu_trains_with_finite_losses():
    model, criterion = _tiny()
    opt = build_optimizer(model, 1e-4, 1e-5, 1e-4)
    out = train_one_epoch(model, criterion, _loader(4), opt, "cpu", epoch=0, amp_dtype=torch.bfloat16, max_steps=1)
    assert out["steps"] == 1 and math.isfinite(out["loss"])


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "none")])
def test_amp_auto_uses_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, native, expected):
    from detr_tutorial import train as train_module

    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: native)
    assert train_module.resolve_amp("auto", torch.device("cpu")) == expected
    assert train_module.resolve_amp("fp16", torch.device("cpu")) == "fp16"  # explicit choices are kept


@pytest.mark.parametrize("vendor, flags, expected", [
    ("GenuineIntel", "avx512f avx512_bf16 amx_bf16 amx_tile", True),  # AMX: fast bf16 convolutions
    ("AuthenticAMD", "avx512f avx512_bf16", True),  # measured 1.7x more shapes-cpu steps
    ("GenuineIntel", "avx512f avx512_bf16 avx512_fp16", False),  # measured 2.4x slower steps
    ("GenuineIntel", "avx2 fma", False),  # emulated bfloat16
])
def test_bf16_counts_as_native_only_on_cpus_where_it_was_measured_faster(monkeypatch, vendor, flags, expected):
    from detr_tutorial import train as train_module

    monkeypatch.setattr(train_module, "_cpu_info", lambda: (vendor, set(flags.split())))
    assert train_module.cpu_has_native_bf16() is expected


def test_recipes_accept_amp_auto_and_refuse_unknown_precisions():
    from detr_tutorial.recipes import get_recipe

    assert get_recipe("shapes-cpu", amp="auto").amp == "auto"
    with pytest.raises(ValueError, match="amp must be"):
        get_recipe("shapes-cpu", amp="bf32")


# ------------------------------------------------------------------ optimizer and schedule
def test_backbone_has_its_own_learning_rate_and_frozen_parameters_are_left_out():
    model, _ = _tiny()
    opt = build_optimizer(model, 1e-4, 1e-5, 1e-4)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"transformer": 1e-4, "backbone": 1e-5}
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_groups == trainable
    backbone_ids = {id(p) for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad}
    assert {id(p) for p in opt.param_groups[1]["params"]} == backbone_ids


def test_warmup_then_step_decay_at_two_thirds():
    s = LRSchedule("step", total_steps=300, warmup_steps=10, drop_step=200, drop_factor=0.1)
    assert [s(0), s(4), s(9)] == pytest.approx([0.1, 0.5, 1.0])
    assert [s(199), s(200), s(299)] == pytest.approx([1.0, 0.1, 0.1])


def test_cosine_decays_from_one_to_the_floor():
    s = LRSchedule("cosine", total_steps=110, warmup_steps=10, min_ratio=0.01)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.01 + 0.99 * 0.5)
    assert s(110) == pytest.approx(0.01)


# ----------------------------------------------------------------------------- data order
def test_ranks_together_see_exactly_the_single_process_batches():
    one = ResumableBatchSampler(20, 4, seed=3)
    ranks = [ResumableBatchSampler(20, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in (one, *ranks):
        s.set_epoch(1)
    for big, (a, b) in zip(one, zip(*ranks)):
        assert big == a + b
    assert len(one) == 5


def test_resuming_mid_epoch_yields_the_remaining_batches():
    s = ResumableBatchSampler(20, 4, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_batch=3)
    assert list(s) == full[3:]
    s.set_epoch(3)
    assert list(s) != full  # a new permutation every epoch


def test_seeded_samples_do_not_depend_on_or_disturb_the_global_generators():
    data = SeededSamples(TinyBoxes(4))
    torch.manual_seed(0), random.seed(0)
    first = data[(1, 99)]
    after = (torch.rand(1), random.random())
    torch.manual_seed(0), random.seed(0)
    torch.rand(5), random.random()  # another global state
    second = data[(1, 99)]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1]["boxes"], second[1]["boxes"])
    torch.manual_seed(0), random.seed(0)
    data[(1, 99)]
    assert (torch.rand(1), random.random()) == after
    assert not torch.equal(data[(1, 5)][0], first[0])  # another seed, another augmentation


# ------------------------------------------------------------------------------ evaluation
class _Oracle(nn.Module):
    """Outputs the ground truth of the batch it is given (looked up in call order)."""

    def __init__(self, targets: list[dict], num_queries: int = 10) -> None:
        super().__init__()
        self.targets, self.q = targets, num_queries
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, samples):
        batch = [self.targets.pop(0) for _ in range(samples.tensors.shape[0])]
        logits = torch.full((len(batch), self.q, 4), -10.0)
        boxes = torch.full((len(batch), self.q, 4), 0.5)
        logits[..., 3] = 10.0  # "no object"
        for i, t in enumerate(batch):
            n = len(t["labels"])
            logits[i, torch.arange(n), t["labels"]] = 10.0
            logits[i, torch.arange(n), 3] = -10.0
            boxes[i, :n] = t["boxes"]
        return {"pred_logits": logits, "pred_boxes": boxes}


def test_evaluate_scores_a_model_that_outputs_the_ground_truth_at_map_one():
    val = build_dataset("shapes", "val", num_images=6)
    targets = [val[i][1] for i in range(len(val))]
    loader = DataLoader(val, batch_size=4, collate_fn=collate_fn)
    metrics = evaluate(_Oracle(targets), PostProcess(), loader, val, "cpu")
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------- log
def test_plot_log_draws_losses_and_map_against_steps(tmp_path):
    log = JsonlLogger(tmp_path / "log.jsonl")
    for step in (1, 2, 3):
        log.log({"kind": "train", "step": step, "loss": 3.0 / step, "loss_ce": 1.0 / step})
    log.log({"kind": "eval", "step": 3, "metrics": {"AP": 0.25, "AP50": 0.5}})
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a torn last line, as a killed run leaves it
    fig = plot_log(tmp_path / "log.jsonl")
    loss_ax, map_ax = fig.axes
    assert {line.get_label() for line in loss_ax.get_lines()} == {"loss", "loss_ce"}
    assert list(loss_ax.get_lines()[0].get_xdata()) == [1, 2, 3]
    ap = [line for line in map_ax.get_lines() if line.get_label() == "AP"][0]
    assert list(ap.get_ydata()) == [0.25]
