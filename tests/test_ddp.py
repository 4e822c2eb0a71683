"""Data-parallel training on the CPU (gloo) computes what one process computes on the same batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from training_helpers import TINY_MODEL, TinyBoxes

HELPER = Path(__file__).with_name("training_helpers.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(args: list[str]) -> None:
    proc = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _initial_params() -> dict[str, torch.Tensor]:
    """The parameters train() starts from (it seeds with the recipe's seed, 7, then builds)."""
    from detr_tutorial.config import get_config
    from detr_tutorial.models import build_model
    from detr_tutorial.train import seed_everything

    seed_everything(7)
    names = list(TinyBoxes.class_names)
    return build_model(get_config("detr-tiny", **TINY_MODEL, num_classes=3, class_names=names)).state_dict()


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
