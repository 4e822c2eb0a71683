"""Training-step and inference throughput, peak memory, and speed side by side with the official code.

    python benchmarks/bench_speed.py                                    # our configurations, 2 threads
    python benchmarks/bench_speed.py --official /path/to/detr --steps 10   # + side by side with it
    python benchmarks/bench_speed.py --only official --official /path/to/detr

``--official DIR`` is a checkout of https://github.com/facebookresearch/detr, fetched by you outside
this project (it is never vendored here). Its top-level packages ``models`` and ``util`` are imported
from ``DIR`` inside a child process only; it needs scipy.

**Side by side** (``official``, only with ``--official``): the official model and ours at the
comparison configuration — ResNet-18 trunk (random init, frozen BatchNorm), hidden 128, 8 heads,
2+2 layers, FFN 512, 20 queries, 3 classes, batch 16 of 128x128 shapes images from the training
split (augmentation off) — in **one process**, with **the same weights** (the official model's
state dict loaded into ours with ``load_official_state_dict``), **the same trainable parameters**
(the official code always freezes ``conv1`` and ``layer1``; ours with ``freeze_stem=True``; the
counts are asserted equal), the same batch, the same matcher costs and loss weights, and the steps
**interleaved**: one official step, then one step of each of our variants, with the order rotated
every round, so that load from other jobs hits all of them alike. Before timing, the script checks
that both models give the same outputs and losses in eval mode. Variants:

* ``ours float32``: our model as the official code runs, float32, contiguous (NCHW) tensors;
* ``ours fast path``: what ``train(amp="auto", channels_last=True)`` does — bfloat16 autocast where
  the device computes it natively (:func:`detr_tutorial.train.resolve_amp`), channels-last layout;
* ``ours float32, whole trunk trainable``: our default for a randomly initialized trunk, which also
  trains ``conv1`` and ``layer1`` (157k more parameters than the official model): the cost of that
  choice, not a like-for-like comparison;
* with ``--breakdown`` also bf16 autocast alone and channels-last alone, to see which half of the
  fast path helps or hurts on a given machine.

A training step is the body of each code base's training loop without its logging: forward,
matching, loss, backward, gradient clipping at 0.1, AdamW (lr 1e-4, trunk 1e-5, weight decay 1e-4).
Inference is eval mode without gradients, forward + ``PostProcess``. Ratios are
``official time / our time`` of the medians (above 1: ours is faster); the "middle half" columns
are the 25-75 % range of the per-round ratios. Targets (issue 12, reported, never asserted):
float32 >= 1.0x, fast path >= 1.6x per training step and >= 2.5x in inference.

**Our configurations**, each in its own process so that its peak memory (max RSS on the CPU, max
allocated on CUDA) is its own (``rss before`` is the process after building the model and batch):

* ``comparison``: the comparison configuration above with our defaults (whole trunk trainable);
* ``shapes-cpu``: the model of the CPU recipe (trainable BN, stride 16, focal loss), batch 32;
* ``detr-r50``: the paper's model (random init), batch 2.

These run in float32 (no autocast, NCHW); their timings are absolute numbers on this machine,
with no comparison.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _official import LoadLog, child_env, import_official, print_result, quartiles, run_child  # noqa: E402
from _results import command_line, git_commit, machine_info, markdown_table, update_section  # noqa: E402

CONFIGS = {
    "comparison": dict(preset="detr-tiny", batch=16, overrides=dict(pretrained_backbone=False)),
    "shapes-cpu": dict(preset=None, batch=32, overrides={}),
    "detr-r50": dict(preset="detr-r50", batch=2, overrides=dict(pretrained_backbone=False)),
}
SIDE_BY_SIDE = "official"
WARMUP = 2  # untimed steps (rounds, side by side) before the timed ones
MAX_NORM = 0.1
LR, LR_BACKBONE, WEIGHT_DECAY = 1e-4, 1e-5, 1e-4


def _shapes_batch(batch: int, device):
    """``batch`` images of the shapes training split at their native 128 px, no augmentation."""
    from detr_tutorial.data import build_dataset, collate_fn
    from detr_tutorial.data.transforms import make_transforms

    data = build_dataset("shapes", "train", transforms=make_transforms("val", dataset="shapes"), num_images=batch)
    samples, targets = collate_fn([data[i] for i in range(batch)])
    samples = samples.to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    return samples, targets


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _measure(name: str, steps: int, threads: int, device: str) -> dict:
    """Run in a child process: time ``steps`` training steps and inference batches of our model."""
    import resource

    import torch

    from detr_tutorial.config import get_config
    from detr_tutorial.criterion import build_criterion
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
    opt = build_optimizer(model, LR, LR_BACKBONE, WEIGHT_DECAY)
    samples, targets = _shapes_batch(spec["batch"], dev)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def train_step() -> None:
        out = model(samples)
        loss = criterion.total(criterion(out, targets))
        float(loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        opt.step()

    model.train()
    times = []
    for i in range(steps + WARMUP):
        _sync(dev)
        t = time.perf_counter()
        train_step()
        _sync(dev)
        if i >= WARMUP:
            times.append(time.perf_counter() - t)
    post = PostProcess()
    sizes = torch.stack([t["orig_size"] for t in targets])
    model.eval()
    infer = []
    with torch.no_grad():
        for i in range(steps + 1):
            _sync(dev)
            t = time.perf_counter()
            post(model(samples), sizes)
            _sync(dev)
            if i >= 1:
                infer.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    batch = spec["batch"]
    step_s = statistics.median(times)
    infer_s = statistics.median(infer)
    return {
        "config": name, "batch": batch, "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_step_s": step_s, "train_img_s": batch / step_s, "infer_img_s": batch / infer_s,
        "peak_mb": peak, "rss_before_mb": rss_before, "device": device,
    }


# --------------------------------------------------------------------------- the official code
def _official_args(cfg, device: str) -> argparse.Namespace:
    """The official ``main.py`` options for our config (the names are the same on purpose)."""
    return argparse.Namespace(
        backbone=cfg.backbone, lr_backbone=LR_BACKBONE, masks=False, dilation=cfg.dilation,
        position_embedding=cfg.position_embedding, hidden_dim=cfg.hidden_dim, dropout=cfg.dropout,
        nheads=cfg.nheads, dim_feedforward=cfg.dim_feedforward, enc_layers=cfg.enc_layers,
        dec_layers=cfg.dec_layers, pre_norm=cfg.pre_norm, num_queries=cfg.num_queries, aux_loss=cfg.aux_loss,
        set_cost_class=cfg.set_cost_class, set_cost_bbox=cfg.set_cost_bbox, set_cost_giou=cfg.set_cost_giou,
        bbox_loss_coef=cfg.bbox_loss_coef, giou_loss_coef=cfg.giou_loss_coef, eos_coef=cfg.eos_coef,
        device=device, lr=LR, weight_decay=WEIGHT_DECAY, frozen_weights=None,
    )


def _build_official(mods, cfg, device: str):
    """The official model, criterion and post-processor, wired as its ``models/detr.py: build``.

    ``build(args)`` hard-codes 91 (COCO) or 20 classes; we need ``cfg.num_classes`` (3) for the
    same class head as ours, so this repeats its few lines with that number. Its trunk would
    download ImageNet weights (``pretrained=is_main_process()``): that name is pointed to
    ``False`` in the official backbone module, for a random init as in our comparison.
    """
    import torch

    args = _official_args(cfg, device)
    mods["models.backbone"].is_main_process = lambda: False
    backbone = mods["models.backbone"].build_backbone(args)
    transformer = mods["models.transformer"].build_transformer(args)
    detr_mod = mods["models.detr"]
    model = detr_mod.DETR(backbone, transformer, num_classes=cfg.num_classes, num_queries=args.num_queries,
                          aux_loss=args.aux_loss)
    matcher = mods["models.matcher"].build_matcher(args)
    weight_dict = {"loss_ce": 1, "loss_bbox": args.bbox_loss_coef, "loss_giou": args.giou_loss_coef}
    if args.aux_loss:
        weight_dict.update({f"{k}_{i}": v for i in range(args.dec_layers - 1) for k, v in list(weight_dict.items())})
    criterion = detr_mod.SetCriterion(cfg.num_classes, matcher=matcher, weight_dict=weight_dict,
                                      eos_coef=args.eos_coef, losses=["labels", "boxes", "cardinality"])
    # the official main.py's optimizer: two groups, trunk at lr_backbone, frozen parameters left out
    param_dicts = [
        {"params": [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]},
        {"params": [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad],
         "lr": args.lr_backbone},
    ]
    opt = torch.optim.AdamW(param_dicts, lr=args.lr, weight_decay=args.weight_decay)
    return model.to(device), criterion.to(device), detr_mod.PostProcess(), opt


def _side_by_side(official_dir: str, steps: int, threads: int, device: str, breakdown: bool = False) -> dict:
    """Run in a child process: the official model and our variants, same weights, interleaved."""
    import torch

    from detr_tutorial import load_official_state_dict
    from detr_tutorial.config import get_config
    from detr_tutorial.criterion import build_criterion
    from detr_tutorial.engine import outputs_to_float
    from detr_tutorial.models import PostProcess, build_model
    from detr_tutorial.nested import NestedTensor
    from detr_tutorial.train import build_optimizer, resolve_amp

    mods = import_official(official_dir)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    spec = CONFIGS["comparison"]
    cfg = get_config(spec["preset"], **spec["overrides"], num_classes=3)
    batch = spec["batch"]
    off_model, off_crit, off_post, off_opt = _build_official(mods, cfg, device)
    official_sd = {k: v.detach().clone() for k, v in off_model.state_dict().items()}
    amp = resolve_amp("auto", dev)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if amp == "fp16":
        raise SystemExit("amp=auto resolved to fp16, which needs a GradScaler; this benchmark times bf16 or float32 only")

    def ours(freeze_stem, channels_last):
        model = build_model(cfg.replace(freeze_stem=freeze_stem))
        load_official_state_dict(model, {"model": official_sd})
        model = model.to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model, build_criterion(cfg).to(dev), build_optimizer(model, LR, LR_BACKBONE, WEIGHT_DECAY)

    def count(model, trainable=False):
        return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)

    samples, targets = _shapes_batch(batch, dev)
    off_samples = mods["util.misc"].NestedTensor(samples.tensors, samples.mask)
    cl_samples = NestedTensor(samples.tensors.contiguous(memory_format=torch.channels_last), samples.mask)
    sizes = torch.stack([t["orig_size"] for t in targets])
    fast_name = ("bf16 autocast" if amp == "bf16" else "float32 (amp=auto: no native bf16)") + " + channels-last"
    variants = {
        "official (float32)": dict(kind="official", model=off_model, crit=off_crit, opt=off_opt, samples=off_samples),
    }
    ours_variants = [
        ("ours float32", True, False, None),
        (f"ours fast path ({fast_name})", True, True, amp_dtype),
    ]
    if breakdown and amp_dtype is not None:  # which half of the fast path does what
        ours_variants += [("ours bf16 autocast only (NCHW)", True, False, amp_dtype),
                          ("ours channels-last only (float32)", True, True, None)]
    ours_variants.append(("ours float32, whole trunk trainable", False, False, None))  # last: not like for like
    for label, freeze, cl, dtype in ours_variants:
        m, c, o = ours(freeze, cl)
        variants[label] = dict(kind="ours", model=m, crit=c, opt=o, samples=cl_samples if cl else samples,
                               amp_dtype=dtype, same_trainable=freeze)
    # -- equal parameters, equal computation -------------------------------------------------
    off_total, off_train = count(off_model), count(off_model, trainable=True)
    for label, v in variants.items():
        v["params"], v["trainable"] = count(v["model"]), count(v["model"], trainable=True)
        if v["params"] != off_total:
            raise SystemExit(f"{label}: {v['params']:,} parameters, the official model {off_total:,}")
        if v.get("same_trainable", True) and v["trainable"] != off_train:
            raise SystemExit(f"{label}: {v['trainable']:,} trainable parameters, the official model {off_train:,}")
    ref = variants["ours float32"]
    for module in (off_model, ref["model"], off_crit, ref["crit"]):
        module.eval()
    with torch.no_grad():
        out_off = off_model(off_samples)
        out_ours = ref["model"](samples)
        diff = max((out_off[k] - out_ours[k]).abs().max().item() for k in ("pred_logits", "pred_boxes"))
        l_off = off_crit(out_off, targets)
        loss_off = sum(l_off[k] * off_crit.weight_dict[k] for k in l_off if k in off_crit.weight_dict).item()
        loss_ours = ref["crit"].total(ref["crit"](out_ours, targets)).item()
    if diff > 1e-4 or abs(loss_off - loss_ours) > 1e-4 * max(1.0, abs(loss_off)):
        raise SystemExit(f"the two models differ before timing: outputs by {diff:.3g}, losses {loss_off:.6g} vs {loss_ours:.6g}")

    # -- one step of each -------------------------------------------------------------------
    def train_step(v) -> None:
        model, crit, opt = v["model"], v["crit"], v["opt"]
        if v["kind"] == "official":  # official engine.py: train_one_epoch, without its logging
            outputs = model(v["samples"])
            loss_dict = crit(outputs, targets)
            losses = sum(loss_dict[k] * crit.weight_dict[k] for k in loss_dict if k in crit.weight_dict)
            losses.item()
            opt.zero_grad()
            losses.backward()
        else:  # detr_tutorial.engine.train_one_epoch, without its logging
            with torch.autocast(dev.type, dtype=v["amp_dtype"], enabled=v["amp_dtype"] is not None):
                outputs = model(v["samples"])
            total = crit.total(crit(outputs_to_float(outputs), targets))
            float(total)
            opt.zero_grad(set_to_none=True)
            total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        opt.step()

    def infer_step(v) -> None:
        with torch.no_grad():
            if v["kind"] == "official":
                off_post(v["model"](v["samples"]), sizes)
            else:
                with torch.autocast(dev.type, dtype=v["amp_dtype"], enabled=v["amp_dtype"] is not None):
                    outputs = v["model"](v["samples"])
                PostProcess()(outputs_to_float(outputs), sizes)

    def interleaved(fn, mode: str) -> dict[str, list[float]]:
        labels = list(variants)
        times: dict[str, list[float]] = {k: [] for k in labels}
        for v in variants.values():
            v["model"].train(mode == "train")
            v["crit"].train(mode == "train")
        for r in range(steps + WARMUP):
            order = labels[r % len(labels):] + labels[:r % len(labels)]  # rotate who goes first
            for label in order:
                _sync(dev)
                t = time.perf_counter()
                fn(variants[label])
                _sync(dev)
                if r >= WARMUP:
                    times[label].append(time.perf_counter() - t)
        return times

    train_times = interleaved(train_step, "train")
    infer_times = interleaved(infer_step, "eval")
    rows = []
    for label, v in variants.items():
        rows.append({
            "variant": label, "params": v["params"], "trainable": v["trainable"],
            "train_s": train_times[label], "infer_s": infer_times[label],
        })
    return {"batch": batch, "amp": amp, "max_output_diff": diff, "loss_official": loss_off, "loss_ours": loss_ours,
            "official_trainable": off_train, "rows": rows, "device": device}


def _side_by_side_table(res: dict) -> str:
    rows = res["rows"]
    off = rows[0]
    off_train, off_infer = statistics.median(off["train_s"]), statistics.median(off["infer_s"])
    out = []
    for r in rows:
        train, infer = statistics.median(r["train_s"]), statistics.median(r["infer_s"])
        cells = [r["variant"], f"{r['trainable']:,}", f"{train:.3f}", f"{res['batch'] / train:.1f}",
                 f"{infer:.3f}", f"{res['batch'] / infer:.1f}"]
        if r is off:
            cells += ["1 (reference)", "", "1 (reference)", ""]
        else:
            pt = [a / b for a, b in zip(off["train_s"], r["train_s"])]
            pi = [a / b for a, b in zip(off["infer_s"], r["infer_s"])]
            (t1, t3), (i1, i3) = quartiles(pt), quartiles(pi)
            cells += [f"**{off_train / train:.2f}x**", f"{t1:.2f}-{t3:.2f}x",
                      f"**{off_infer / infer:.2f}x**", f"{i1:.2f}-{i3:.2f}x"]
        out.append(cells)
    header = ["variant", "trainable params", "train step s (median)", "train img/s", "inference s (median)",
              "inference img/s", "train: official / ours", "middle half", "inference: official / ours", "middle half"]
    return markdown_table(header, out)


def _bf16_flags() -> str:
    """The CPU's bfloat16-related instruction sets, as /proc/cpuinfo lists them."""
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("flags")), [])
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    found = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16") if f in flags]
    return ", ".join(found) or "none"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=[*CONFIGS, SIDE_BY_SIDE], action="append",
                   help=f"run only these (repeatable); {SIDE_BY_SIDE!r} is the side-by-side run and needs --official")
    p.add_argument("--official", metavar="DIR", help="a facebookresearch/detr checkout to run beside ours")
    p.add_argument("--steps", type=int, default=10, help="timed steps (rounds, side by side) after 2 warm-up ones")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                   help="OMP_WAIT_POLICY of the measuring processes (default PASSIVE, as `train` uses)")
    p.add_argument("--breakdown", action="store_true",
                   help="side by side: also time bf16 autocast alone and channels-last alone")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    if a.steps < 1:
        p.error("--steps must be >= 1")
    if a.child == SIDE_BY_SIDE:
        print_result(_side_by_side(a.official, a.steps, a.threads, a.device, a.breakdown))
        return
    if a.child:
        print_result(_measure(a.child, a.steps, a.threads, a.device))
        return
    todo = a.only or [*CONFIGS, *([SIDE_BY_SIDE] if a.official else [])]
    if SIDE_BY_SIDE in todo and not a.official:
        p.error(f"--only {SIDE_BY_SIDE} needs --official DIR (a facebookresearch/detr checkout)")
    env = child_env(a.wait_policy)
    common = ["--steps", str(a.steps), "--threads", str(a.threads), "--device", a.device,
              *(["--breakdown"] if a.breakdown else [])]
    conditions = f"{a.threads} threads, OMP_WAIT_POLICY {a.wait_policy}, device {a.device}"
    sections = []
    if SIDE_BY_SIDE in todo:
        load = LoadLog()
        res = run_child(__file__, ["--child", SIDE_BY_SIDE, "--official", a.official, *common], env, load)
        if res is not None:
            table = _side_by_side_table(res)
            print(table)
            body = "\n".join([
                "### Side by side with the official implementation",
                "",
                f"`{command_line()}` (commit {git_commit()}): the official facebookresearch/detr code and ours in one "
                f"process at the comparison configuration (ResNet-18 trunk from random init, frozen BatchNorm, "
                f"hidden 128, 8 heads, 2+2 layers, FFN 512, 20 queries, 3 classes; batch {res['batch']} of 128x128 "
                f"shapes training images, no augmentation), the same weights (the official model's, loaded into "
                f"ours), the same batch and loss; {a.steps} timed rounds, each one step of every variant in rotating "
                f"order, after {WARMUP} warm-up rounds; {conditions}. Before timing, both models in eval mode gave "
                f"outputs within {res['max_output_diff']:.1g} and the same loss ({res['loss_official']:.5f} vs "
                f"{res['loss_ours']:.5f}). Every row but \"whole trunk trainable\" trains the same "
                f"{res['official_trainable']:,} parameters (stem frozen, as the official code always does).",
                "",
                table,
                "",
                "Ratios are official time / our time (medians; above 1: ours is faster); \"middle half\" is the "
                "25-75 % range of the per-round ratios. Targets (issue 12; reported, not asserted): float32 >= 1.0x, "
                "fast path >= 1.6x per training step and >= 2.5x in inference. The last row trains the whole "
                "trunk (our default for a random-init trunk): a different amount of work, shown for its cost. "
                f"amp=auto resolved to `{res['amp']}` here; the CPU's bfloat16-related flags: {_bf16_flags()}.",
                "",
                f"Machine: {machine_info()}; {load.describe(a.threads)} (the interleaving spreads such load over "
                "all variants alike).",
            ])
            sections.append(("speed-vs-official", body))
    rows = []
    configs = [c for c in todo if c in CONFIGS]
    load = LoadLog()
    for name in configs:
        r = run_child(__file__, ["--child", name, *common], env, load)
        if r is None:
            continue
        rows.append([name, r["batch"], f"{r['params']:,}", f"{r['trainable']:,}", round(r["train_step_s"], 3),
                     round(r["train_img_s"], 1), round(r["infer_img_s"], 1), round(r["peak_mb"]),
                     round(r["rss_before_mb"])])
    if rows:
        header = ["config", "batch", "params", "trainable", "train step s (median)", "train img/s",
                  "inference img/s", "peak MB", "rss before MB"]
        table = markdown_table(header, rows)
        print(table)
        body = "\n".join([
            "### Throughput and memory",
            "",
            f"`{command_line()}` (commit {git_commit()}), {a.steps} timed steps after {WARMUP} warm-up steps, "
            f"{conditions}, float32, "
            "128x128 shapes training images (no augmentation), each configuration in its own process.",
            "",
            table,
            "",
            "Absolute numbers on this machine; for a comparison with the official implementation see the "
            "side-by-side table (`--official DIR`). Peak MB is the process's max RSS (CPU) and includes the "
            "libraries; compare with rss before.",
            "",
            f"Machine: {machine_info()}; {load.describe(a.threads)}.",
        ])
        sections.insert(0, ("speed", body))
    if a.no_write:
        return
    for name, body in sections:
        update_section(name, body, after="speed" if name == "speed-vs-official" else None)


if __name__ == "__main__":
    main()
