"""The model the package ships: it loads, it is small, and it scores the mAP the README states."""
import re
from pathlib import Path

import pytest
import torch

import detr_tutorial as dt
from detr_tutorial.checkpoint import SHIPPED_MODEL
from detr_tutorial.data import build_dataset
from detr_tutorial.train import make_eval_loader

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_metric(name: str) -> float:
    line = re.search(r"^shipped shapes model on the 500 shapes validation images: (.*)$", README.read_text(), re.M)
    assert line, "README.md must state the shipped model's validation mAP"
    if name == "AP":
        match = re.search(r"mAP@\[\.5:\.95\] = ([0-9.]+)", line.group(1))
    else:
        match = re.search(rf"\({name} ([0-9.]+)\)", line.group(1))
    assert match, f"README line has no {name}: {line.group(0)}"
    return float(match.group(1))


def test_shipped_checkpoint_is_small_and_loads_with_weights_only():
    assert SHIPPED_MODEL.stat().st_size <= 10 * 1024 * 1024
    state = torch.load(SHIPPED_MODEL, weights_only=True)
    assert state["class_names"] == ["circle", "rectangle", "triangle"]


@pytest.mark.slow
def test_shipped_model_scores_the_map_written_in_the_readme():
    model = dt.load_shipped_model()
    val = build_dataset("shapes", "val")
    assert len(val) == 500
    postprocess = dt.PostProcess("sigmoid" if model.config.focal_loss else "softmax")
    metrics = dt.evaluate(model, postprocess, make_eval_loader(val, batch_size=50), val, "cpu")
    assert metrics["AP"] == pytest.approx(_readme_metric("AP"), abs=0.02)
    assert metrics["AP50"] == pytest.approx(_readme_metric("AP50"), abs=0.02)
