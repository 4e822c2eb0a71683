"""Data-parallel training on the CPU (gloo) computes what one process computes on the same batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import json
import textwrap

import torch
from torch import nn

from training_helpers import TINY_MODEL, TinyBoxes, default_recipe_model, deformable_model

HELPER = Path(__file__).with_name("training_helpers.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(args: list[str]) -> None:
    proc = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _initial_params(model: dict = TINY_MODEL) -> dict[str, torch.Tensor]:
    """The parameters train() starts from (it seeds with the recipe's seed, 7, then builds)."""
    from detr_tutorial.config import get_config
    from detr_tutorial.families import build_model
    from detr_tutorial.train import seed_everything

    seed_everything(7)
    names = list(TinyBoxes.class_names)
    return build_model(get_config("detr-tiny", **model, num_classes=3, class_names=names)).state_dict()


def _losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _run([sys.executable, str(HELPER), str(single), "--steps", "3", "--batch-size", "4"])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          str(HELPER), str(ddp), "--steps", "3", "--batch-size", "2"])
    a = torch.load(single / "params.pt", weights_only=True)
    b = torch.load(ddp / "params.pt", weights_only=True)
    assert a["steps"] == b["steps"] == 3
    init = _initial_params()
    moved = max((a["model"][k].float() - init[k].float()).abs().max().item() for k in init)
    diff = max((a["model"][k].float() - b["model"][k].float()).abs().max().item() for k in init)
    # training moved the weights by ~lr per step; the two runs agree to float rounding
    # (the all-reduce sums gradients in another order than one big batch does)
    assert moved > 1e-4
    assert diff < 1e-6, f"DDP and single-process parameters differ by {diff}"


def _single_and_ddp(tmp_path: Path, model: str) -> tuple[list[float], list[float], dict, dict]:
    """3 steps on 1 process x 4 images and on 2 gloo processes x 2: losses and final weights."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _run([sys.executable, str(HELPER), str(single), "--steps", "3", "--batch-size", "4", "--model", model])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          str(HELPER), str(ddp), "--steps", "3", "--batch-size", "2", "--model", model])
    losses_single, losses_ddp = _losses(single), _losses(ddp)
    assert len(losses_single) == len(losses_ddp) == 3
    for a_loss, b_loss in zip(losses_single, losses_ddp):
        assert abs(a_loss - b_loss) <= 1e-5 * abs(a_loss), (losses_single, losses_ddp)
    a = torch.load(single / "params.pt", weights_only=True)["model"]
    b = torch.load(ddp / "params.pt", weights_only=True)["model"]
    return losses_single, losses_ddp, a, b


def _largest_change(a: dict, b: dict, keys: list[str]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in keys)


def test_default_recipe_under_two_gloo_processes_matches_one_process(tmp_path):
    """The default recipe's trunk trains its BatchNorm: each process must normalize with the
    statistics of the whole global batch (synchronized BatchNorm), or two processes x 2 images
    train another model than one process x 4 (without it: step-1 loss 25.126 against 25.112,
    running statistics apart by 0.06, weights by 4e-4 after 3 steps)."""
    _, _, a, b = _single_and_ddp(tmp_path, "default")
    init = _initial_params(default_recipe_model())
    floats = [k for k in init if init[k].is_floating_point()]
    stats = [k for k in floats if "running_" in k]
    assert stats, "the default recipe's model has no BatchNorm: this test checks nothing"
    params = [k for k in floats if k not in stats]
    moved, diff = _largest_change(a, init, params), _largest_change(a, b, params)
    stats_diff = _largest_change(a, b, stats)
    assert stats_diff < 1e-4, f"BatchNorm running statistics differ by {stats_diff}"
    # Adam's first steps divide each gradient by its own size, so float rounding in gradients near
    # zero moves a weight by a visible fraction of lr (measured: 1.5e-5 with lr 1e-4, 4e-4 unsynchronized)
    assert diff < 0.1 * moved, f"DDP and single-process parameters differ by {diff} (moved {moved})"


def test_deformable_detr_under_two_gloo_processes_matches_one_process(tmp_path):
    """The Deformable DETR family (multi-scale deformable attention, two-stage proposals, box
    refinement, its own loss) trains the same model on 2 processes x 2 images as on 1 x 4."""
    _, _, a, b = _single_and_ddp(tmp_path, "deformable")
    init = _initial_params(deformable_model())
    assert any("sampling_offsets" in k for k in init), "not a deformable model: this test checks nothing"
    floats = [k for k in init if init[k].is_floating_point()]
    moved, diff = _largest_change(a, init, floats), _largest_change(a, b, floats)
    # measured: weights moved by 2.1e-4 in 3 steps, the two runs 8e-7 apart (float rounding)
    assert moved > 1e-4
    assert diff < 0.01 * moved, f"DDP and single-process parameters differ by {diff} (moved {moved})"


def test_batchnorm_is_converted_to_synchronized_batchnorm_keeping_its_parameters():
    from torchvision.ops.misc import FrozenBatchNorm2d

    from detr_tutorial.distributed import AllReduceBatchNorm, convert_sync_batchnorm

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(FrozenBatchNorm2d(4)))
    weight, stats = model[1].weight, model[1].running_mean
    keys = list(model.state_dict())
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert converted is model
    assert isinstance(model[1], AllReduceBatchNorm) and isinstance(model[2][0], FrozenBatchNorm2d)
    assert model[1].weight is weight and model[1].running_mean is stats  # an optimizer built before keeps working
    assert list(model.state_dict()) == keys  # checkpoints load into a plain BatchNorm model


def test_synchronized_batchnorm_without_a_process_group_is_batchnorm():
    from detr_tutorial.distributed import convert_sync_batchnorm

    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3)
    synced = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), torch.device("cpu"))
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    torch.testing.assert_close(synced(x), plain(x), rtol=0, atol=0)
    torch.testing.assert_close(synced[0].running_var, plain.running_var, rtol=0, atol=0)


SYNC_BN_WORKER = textwrap.dedent("""
    import sys
    import torch
    import torch.distributed as dist
    from detr_tutorial.distributed import AllReduceBatchNorm

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 5, 5, dtype=torch.float64) * 3 + 1)[2 * rank: 2 * rank + 2].requires_grad_()
    coef = torch.randn(4, 3, 5, 5, dtype=torch.float64)[2 * rank: 2 * rank + 2]
    bn = AllReduceBatchNorm(3).double()
    out = bn(x)
    (out * coef).sum().backward()
    for p in bn.parameters():  # what DDP does with parameter gradients (it then divides by 2)
        dist.all_reduce(p.grad)
    torch.save({"out": out.detach(), "x_grad": x.grad, "w_grad": bn.weight.grad, "b_grad": bn.bias.grad,
                "mean": bn.running_mean, "var": bn.running_var}, f"{sys.argv[1]}/rank{rank}.pt")
    dist.destroy_process_group()
""")


def test_synchronized_batchnorm_on_two_gloo_processes_is_batchnorm_of_the_whole_batch(tmp_path):
    """Forward, backward (input and parameter gradients) and running statistics of two halves
    equal one BatchNorm on the whole batch, in float64 to 1e-12."""
    worker = tmp_path / "worker.py"
    worker.write_text(SYNC_BN_WORKER)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          str(worker), str(tmp_path)])
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 5, 5, dtype=torch.float64) * 3 + 1).requires_grad_()
    coef = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    bn = nn.BatchNorm2d(3).double()
    out = bn(x)
    (out * coef).sum().backward()
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    close = dict(rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([p["out"] for p in parts]), out.detach(), **close)
    torch.testing.assert_close(torch.cat([p["x_grad"] for p in parts]), x.grad, **close)
    for p in parts:
        torch.testing.assert_close(p["w_grad"], bn.weight.grad, **close)
        torch.testing.assert_close(p["b_grad"], bn.bias.grad, **close)
        torch.testing.assert_close(p["mean"], bn.running_mean, **close)
        torch.testing.assert_close(p["var"], bn.running_var, **close)
