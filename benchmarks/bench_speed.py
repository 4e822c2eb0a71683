"""Training-step and inference throughput, and peak memory, at fixed configurations.

    python benchmarks/bench_speed.py                 # all configurations, 2 threads
    python benchmarks/bench_speed.py --only comparison --steps 10

Configurations (128x128 shapes images from the training split, augmentation off):

* ``comparison``: the configuration fixed for comparison with the official implementation —
  ResNet-18 trunk (random init, frozen BatchNorm), hidden 128, 8 heads, 2+2 layers, FFN 512,
  20 queries, batch 16 (``detr-tiny``). The official code measured 0.67 s per training step
  (median; 23.7 img/s), 63-93 img/s inference; the ratios below are ours / theirs.
* ``shapes-cpu``: the model of the CPU recipe (trainable BN, stride 16, focal loss), batch 32.
* ``detr-r50``: the paper's model (random init), batch 2.

A training step is forward + Hungarian matching + loss + backward + clipping + AdamW. Each
configuration runs in its own process so that its peak memory (max RSS on the CPU, max allocated
on CUDA) is its own; ``rss before`` is the process after building the model and the batch.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import command_line, git_commit, machine_info, markdown_table, update_section  # noqa: E402

OFFICIAL_TRAIN_STEP_S = 0.67
OFFICIAL_TRAIN_IMG_S = 23.7
OFFICIAL_INFER_IMG_S = (63.0, 93.0)

CONFIGS = {
    "comparison": dict(preset="detr-tiny", batch=16, overrides=dict(pretrained_backbone=False)),
    "shapes-cpu": dict(preset=None, batch=32, overrides={}),
    "detr-r50": dict(preset="detr-r50", batch=2, overrides=dict(pretrained_backbone=False)),
}


def _measure(name: str, steps: int, threads: int, device: str) -> dict:
    """Run in a child process: time ``steps`` training steps and inference batches."""
    import resource

    import torch

    from detr_tutorial.config import get_config
    from detr_tutorial.criterion import build_criterion
    from detr_tutorial.data import build_dataset, collate_fn
    from detr_tutorial.models import PostProcess, build_model
    from detr_tutorial.recipes import get_recipe
    from detr_tutorial.train import build_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = CONFIGS[name]
    if spec["preset"] is None:
        r = get_recipe("shapes-cpu")
        cfg = get_config(r.model, **r.model_overrides, num_classes=3)
    else:
        cfg = get_config(spec["preset"], **spec["overrides"], num_classes=3)
    dev = torch.device(device)
    model = build_model(cfg).to(dev)
    criterion = build_criterion(cfg).to(dev)
    opt = build_optimizer(model, 1e-4, 1e-5, 1e-4)
    data = build_dataset("shapes", "val", transforms="default", num_images=spec["batch"])
    samples, targets = collate_fn([data[i] for i in range(spec["batch"])])
    samples = samples.to(dev)
    targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def train_step() -> None:
        out = model(samples)
        loss = criterion.total(criterion(out, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()

    model.train()
    times = []
    for i in range(steps + 2):  # two warm-up steps
        sync()
        t = time.perf_counter()
        train_step()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t)
    post = PostProcess()
    sizes = torch.stack([t["orig_size"] for t in targets])
    model.eval()
    infer = []
    with torch.no_grad():
        for i in range(steps + 1):
            sync()
            t = time.perf_counter()
            post(model(samples), sizes)
            sync()
            if i >= 1:
                infer.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    batch = spec["batch"]
    step_s = statistics.median(times)
    infer_s = statistics.median(infer)
    return {
        "config": name, "batch": batch, "params": sum(p.numel() for p in model.parameters()),
        "train_step_s": step_s, "train_img_s": batch / step_s, "infer_img_s": batch / infer_s,
        "peak_mb": peak, "rss_before_mb": rss_before, "device": device,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(CONFIGS), action="append")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                   help="OMP_WAIT_POLICY of the measuring processes (default PASSIVE, as `train` uses)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    if a.child:
        print("RESULT " + json.dumps(_measure(a.child, a.steps, a.threads, a.device)))
        return
    machine = machine_info()
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if a.wait_policy != "default":
        env["OMP_WAIT_POLICY"] = a.wait_policy
    rows, results = [], []
    for name in a.only or list(CONFIGS):
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(a.steps),
                               "--threads", str(a.threads), "--device", a.device],
                              capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(line[0][len("RESULT "):])
        results.append(r)
        ratio_train = ratio_infer = ""
        if name == "comparison":
            ratio_train = f"{OFFICIAL_TRAIN_STEP_S / r['train_step_s']:.2f}x"
            ratio_infer = f"{r['infer_img_s'] / OFFICIAL_INFER_IMG_S[1]:.2f}x-{r['infer_img_s'] / OFFICIAL_INFER_IMG_S[0]:.2f}x"
        rows.append([name, r["batch"], f"{r['params']:,}", round(r["train_step_s"], 3), round(r["train_img_s"], 1),
                     ratio_train, round(r["infer_img_s"], 1), ratio_infer, round(r["peak_mb"]), round(r["rss_before_mb"])])
    header = ["config", "batch", "params", "train step s (median)", "train img/s", "speed-up vs official",
              "inference img/s", "vs official 63-93 img/s", "peak MB", "rss before MB"]
    table = markdown_table(header, rows)
    print(table)
    print(machine)
    if a.no_write:
        return
    body = "\n".join([
        "### Throughput and memory",
        "",
        f"`{command_line()}` (commit {git_commit()}), {a.steps} timed steps after 2 warm-up steps, "
        f"{a.threads} threads, OMP_WAIT_POLICY {a.wait_policy}, device {a.device}, 128x128 shapes images.",
        "",
        table,
        "",
        f"Official implementation at the comparison configuration, same kind of machine: {OFFICIAL_TRAIN_STEP_S} s "
        f"per training step ({OFFICIAL_TRAIN_IMG_S} img/s), inference {OFFICIAL_INFER_IMG_S[0]:.0f}-"
        f"{OFFICIAL_INFER_IMG_S[1]:.0f} img/s. Ratios above 1 mean faster than the official code. Peak MB is the "
        "process's max RSS (CPU) and includes the ~libraries; compare with rss before.",
        "",
        f"Machine: {machine}.",
    ])
    update_section("speed", body)


if __name__ == "__main__":
    main()
