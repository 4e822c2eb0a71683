"""Time of the Hungarian matcher and of the whole set loss per batch, beside the official code.

    python benchmarks/bench_matcher_loss.py                                 # ours only
    python benchmarks/bench_matcher_loss.py --official /path/to/detr        # + the official code beside it

``--official DIR`` is a checkout of https://github.com/facebookresearch/detr, fetched by you outside
this project (it is never vendored here). Its ``models.matcher.HungarianMatcher`` and
``models.detr.SetCriterion`` are imported from ``DIR`` inside a child process only (see
``benchmarks/_official.py``, shared with ``bench_speed.py``); it needs scipy.

Inputs: the outputs of a randomly initialized model (train mode, no gradient) on the first 16
images of the shapes validation split (128x128) and their targets. Two calls are timed per
configuration:

* matcher: one ``HungarianMatcher`` call on the last decoder layer's ``pred_logits``/``pred_boxes``;
* matcher + loss: one ``SetCriterion`` forward on all decoder layers (matching every layer; the
  classification, L1, GIoU and cardinality terms; for the recipe also its encoder loss).

Configurations (3 classes, 20 queries, 2 decoder layers with the auxiliary loss):

* ``comparison (softmax CE)``: ``detr-tiny``, DETR's loss. With ``--official``, the official matcher
  and criterion get **the same** output dict and targets, the same costs (``set_cost_*``) and
  weights (``*_loss_coef``, ``eos_coef``), built as the official ``build(args)`` wires them. Before
  timing, the script checks that both give the same indices (last layer and every auxiliary layer,
  image by image) and the same loss terms (every key of the official dict), and stops if not.
* ``focal loss only``: ``detr-tiny`` with ``focal_loss=True`` (focal matching cost and loss of
  Deformable DETR);
* ``shapes-cpu recipe (+ encoder loss)``: the CPU recipe's whole loss (focal, class-driven costs,
  the dense encoder loss). The official DETR has neither focal loss nor an encoder loss, so these
  two rows have no official counterpart and no ratio.

With ``--official`` one more call is timed for the comparison: our matcher with ``check=False`` (no
input validation, as ``SetCriterion`` calls it per layer), because the official matcher validates
nothing; the gap between that row and the matcher row is the price of our input checks. Those checks
(``check_outputs``, ``check_targets``) are also timed alone, as the matcher and as ``SetCriterion``
run them.

All calls are **interleaved**: each round calls every timed function once, the order rotated every
round, so that load from other jobs hits them alike. Ratios are ``official time / our time`` of the
medians (above 1: ours is faster); "middle half" is the 25-75 % range of the per-round ratios.
Target (reported, never asserted): ours at most 0.8x the official time, i.e. a ratio >= 1.25.
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

BATCH = 16
WARMUP = 3  # untimed rounds before the timed ones
# (label, preset or None for the shapes-cpu recipe's model, overrides, has an official counterpart)
SETTINGS = (
    ("comparison (softmax CE)", "detr-tiny", {}, True),
    ("focal loss only", "detr-tiny", dict(focal_loss=True), False),
    ("shapes-cpu recipe (+ encoder loss)", None, {}, False),
)


def _official_pair(mods, cfg):
    """The official matcher and criterion for ``cfg``, as the official ``models/detr.py: build`` wires them
    (with ``cfg.num_classes`` instead of its hard-coded 91, and our ``ce_loss_coef`` for its fixed 1)."""
    matcher = mods["models.matcher"].HungarianMatcher(cost_class=cfg.set_cost_class, cost_bbox=cfg.set_cost_bbox,
                                                      cost_giou=cfg.set_cost_giou)
    weight_dict = {"loss_ce": cfg.ce_loss_coef, "loss_bbox": cfg.bbox_loss_coef, "loss_giou": cfg.giou_loss_coef}
    if cfg.aux_loss:
        weight_dict.update({f"{k}_{i}": v for i in range(cfg.dec_layers - 1) for k, v in list(weight_dict.items())})
    criterion = mods["models.detr"].SetCriterion(cfg.num_classes, matcher=matcher, weight_dict=weight_dict,
                                                 eos_coef=cfg.eos_coef, losses=["labels", "boxes", "cardinality"])
    return matcher, criterion


def _check_same(label: str, matcher, criterion, off_matcher, off_criterion, inputs: dict, targets: list) -> dict:
    """Stop unless ours and the official code give the same indices and loss terms on ``inputs``."""
    import torch

    layers = [{k: inputs[k] for k in ("pred_logits", "pred_boxes")}, *inputs.get("aux_outputs", [])]
    for n, layer in enumerate(layers):
        ours, off = matcher(layer, targets), off_matcher(layer, targets)
        for i, ((oi, oj), (fi, fj)) in enumerate(zip(ours, off, strict=True)):
            if not (torch.equal(oi, fi.to(oi)) and torch.equal(oj, fj.to(oj))):
                where = "the last layer" if n == 0 else f"auxiliary layer {n - 1}"
                raise SystemExit(f"{label}: the matchers differ on {where}, image {i}: "
                                 f"ours {oi.tolist()}->{oj.tolist()}, official {fi.tolist()}->{fj.tolist()}")
    ours, off = criterion(inputs, targets), off_criterion(inputs, targets)
    if set(ours) != set(off):
        raise SystemExit(f"{label}: loss keys differ: ours only {sorted(set(ours) - set(off))}, "
                         f"official only {sorted(set(off) - set(ours))}")
    diff = 0.0
    for k in off:
        a, b = float(ours[k]), float(off[k])
        if abs(a - b) > 1e-5 * max(1.0, abs(b)):
            raise SystemExit(f"{label}: {k} differs: ours {a:.8g}, official {b:.8g}")
        diff = max(diff, abs(a - b))
    total_ours = float(criterion.total(ours))
    total_off = float(sum(off[k] * off_criterion.weight_dict[k] for k in off if k in off_criterion.weight_dict))
    if abs(total_ours - total_off) > 1e-5 * max(1.0, abs(total_off)):
        raise SystemExit(f"{label}: weighted totals differ: ours {total_ours:.8g}, official {total_off:.8g}")
    return {"layers_matched": len(layers), "loss_keys": len(off), "max_loss_diff": diff,
            "total_ours": total_ours, "total_official": total_off}


def _measure(official_dir: str | None, repeats: int, threads: int) -> dict:
    """Run in a child process: build every configuration, check, then time all calls interleaved."""
    import torch

    from detr_tutorial.config import get_config
    from detr_tutorial.criterion import build_criterion
    from detr_tutorial.data import build_dataset, collate_fn
    from detr_tutorial.validation import check_outputs, check_targets
    from detr_tutorial.models import build_model
    from detr_tutorial.recipes import RECIPES

    mods = import_official(official_dir) if official_dir else None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shapes_cpu = RECIPES["shapes-cpu"]
    calls: dict[tuple[str, str, str], object] = {}  # (setting, "ours"/"official", "matcher"/"loss") -> fn
    settings = []
    for label, preset, overrides, comparable in SETTINGS:
        if preset is None:
            preset, overrides = shapes_cpu.model, dict(shapes_cpu.model_overrides)
        cfg = get_config(preset, num_classes=3, **{"pretrained_backbone": False, **overrides})
        model, criterion = build_model(cfg), build_criterion(cfg)
        data = build_dataset("shapes", "val", num_images=BATCH)
        samples, targets = collate_fn([data[i] for i in range(BATCH)])
        with torch.no_grad():
            out = model(samples)
        last = {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}
        entry = {"label": label, "batch": BATCH, "target_boxes": sum(len(t["labels"]) for t in targets),
                 "dec_layers": 1 + len(out.get("aux_outputs", [])), "check": None}
        # default arguments bind this iteration's objects
        calls[(label, "ours", "matcher")] = lambda m=criterion.matcher, o=last, t=targets: m(o, t)
        calls[(label, "ours", "loss")] = lambda c=criterion, o=out, t=targets: c(o, t)
        if comparable and mods is not None:
            if cfg.focal_loss or getattr(cfg, "encoder_aux_loss", False) or set(out) - {"pred_logits", "pred_boxes",
                                                                                        "aux_outputs"}:
                raise SystemExit(f"{label}: not DETR's loss, so the official code is no counterpart")
            off_matcher, off_criterion = _official_pair(mods, cfg)
            with torch.no_grad():
                entry["check"] = _check_same(label, criterion.matcher, criterion, off_matcher, off_criterion,
                                             out, targets)
            calls[(label, "official", "matcher")] = lambda m=off_matcher, o=last, t=targets: m(o, t)
            calls[(label, "official", "loss")] = lambda c=off_criterion, o=out, t=targets: c(o, t)
            # where our matcher's extra time goes: the same call without validating its inputs (what
            # SetCriterion does for every layer after validating once); the official code validates nothing
            calls[(label, "ours", "matcher_unchecked")] = (
                lambda m=criterion.matcher, o=last, t=targets: m(o, t, check=False))
            # and those checks alone: what the matcher runs per call, and what SetCriterion runs per forward
            n_cls = cfg.num_classes
            calls[(label, "ours", "matcher_checks")] = (
                lambda o=last, t=targets, c=n_cls: (check_outputs(o), check_targets(t, len(t), c)))
            calls[(label, "ours", "loss_checks")] = (
                lambda o=out, t=targets, c=n_cls: (check_outputs(o), check_targets(t, len(t), c),
                                                   [check_outputs(x) for x in o.get("aux_outputs", [])]))
        settings.append(entry)

    keys = list(calls)
    times: dict[tuple[str, str, str], list[float]] = {k: [] for k in keys}
    with torch.no_grad():
        for r in range(WARMUP + repeats):
            order = keys[r % len(keys):] + keys[:r % len(keys)]  # rotate who goes first
            for k in order:
                t = time.perf_counter()
                calls[k]()
                dt = time.perf_counter() - t
                if r >= WARMUP:
                    times[k].append(dt * 1e3)
    for entry in settings:
        for who in ("ours", "official"):
            for what in ("matcher", "loss", "matcher_unchecked", "matcher_checks", "loss_checks"):
                entry[f"{who}_{what}_ms"] = times.get((entry["label"], who, what))
    return {"settings": settings, "timed_calls": len(keys)}


def _cells(ours: list[float], official: list[float] | None) -> list[str]:
    """median ours, median official, official / ours, middle half of the per-round ratios."""
    cells = [f"{statistics.median(ours):.3f}"]
    if official is None:
        return cells + ["—", "—", ""]
    per_round = [a / b for a, b in zip(official, ours)]
    q1, q3 = quartiles(per_round)
    return cells + [f"{statistics.median(official):.3f}",
                    f"**{statistics.median(official) / statistics.median(ours):.2f}x**", f"{q1:.2f}-{q3:.2f}x"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", metavar="DIR", help="a facebookresearch/detr checkout to run beside ours")
    p.add_argument("--repeats", type=int, default=50, help=f"timed rounds after {WARMUP} warm-up ones")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                   help="OMP_WAIT_POLICY of the measuring process (default PASSIVE, as `train` uses)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    if a.repeats < 1:
        p.error("--repeats must be >= 1")
    if a.child:
        print_result(_measure(a.official, a.repeats, a.threads))
        return
    load = LoadLog()
    args = ["--child", "--repeats", str(a.repeats), "--threads", str(a.threads),
            *(["--official", a.official] if a.official else [])]
    res = run_child(__file__, args, child_env(a.wait_policy), load)
    if res is None:
        raise SystemExit(1)
    settings = res["settings"]
    layers = settings[0]["dec_layers"]
    rows = []
    for s in settings:
        rows.append([s["label"], s["batch"], s["target_boxes"], *_cells(s["ours_matcher_ms"], s["official_matcher_ms"]),
                     *_cells(s["ours_loss_ms"], s["official_loss_ms"])])
        if s["ours_matcher_unchecked_ms"]:
            rows.append([f"{s['label']}: matcher with `check=False`", s["batch"], s["target_boxes"],
                         *_cells(s["ours_matcher_unchecked_ms"], s["official_matcher_ms"]), "n/a", "n/a", "n/a", ""])
            rows.append([f"{s['label']}: our input checks alone", s["batch"], s["target_boxes"],
                         f"{statistics.median(s['ours_matcher_checks_ms']):.3f}", "n/a", "n/a", "",
                         f"{statistics.median(s['ours_loss_checks_ms']):.3f}", "n/a", "n/a", ""])
    header = ["loss", "batch", "target boxes", "matcher ms: ours", "official", "official / ours", "middle half",
              f"matcher + loss ms ({layers} layers): ours", "official", "official / ours", "middle half"]
    if not any(s["official_matcher_ms"] for s in settings):  # ours only: no official columns
        keep = [0, 1, 2, 3, 7]
        header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
    table = markdown_table(header, rows)
    machine = machine_info()
    print(table)
    print(machine)
    if a.no_write:
        return
    checked = [s for s in settings if s["check"]]
    if checked:
        c = checked[0]["check"]
        verified = (f"Before timing, the official matcher gave the same indices as ours on all {c['layers_matched']} "
                    f"decoder layers of every image, and the official criterion the same values for all {c['loss_keys']} "
                    f"keys of its loss dict, terms and logged metrics (largest difference {c['max_loss_diff']:.1g}; weighted totals {c['total_official']:.5f} vs "
                    f"{c['total_ours']:.5f}). ")
        how = ("The official facebookresearch/detr `HungarianMatcher` and `SetCriterion` (imported from the "
               "`--official` checkout) ran beside ours in the same process on the same outputs and targets, with "
               "the same costs and weights. ")
    else:
        verified = ""
        how = "Ours only: run with `--official DIR` (a facebookresearch/detr checkout) for the official columns. "
    notes = ("Ratios are official time / our time (medians; above 1: ours is faster); \"middle half\" is the "
             "25-75 % range of the per-round ratios. Target (reported, not asserted): ours at most 0.8x the official "
             "time, a ratio >= 1.25. The `check=False` row times our matcher without validating its inputs "
             "(`check_outputs`, `check_targets`), as `SetCriterion` calls it for every layer after validating once; "
             "the official matcher validates nothing, so that row is the like-for-like cost of the matching itself "
             "and the difference to the row above is the price of our input checks. The \"input checks alone\" row "
             "times those checks by themselves: `check_outputs` and `check_targets` once (what the matcher runs per "
             "call), and in the loss column `check_targets` once and `check_outputs` on every layer (what "
             "`SetCriterion` runs per forward); the official code has no counterpart. The official DETR has no focal "
             "loss and no encoder loss, so the focal and recipe rows have no official counterpart and no ratio."
             if checked else "Absolute times on this machine, with no comparison.")
    update_section("matcher-loss", "\n".join([
        "### Matcher and loss time per batch",
        "",
        f"`{command_line()}` (commit {git_commit()}): outputs of randomly initialized models (train mode) on "
        f"{settings[0]['batch']} shapes validation images (128x128), 3 classes, 20 queries, {layers} decoder layers "
        f"with the auxiliary loss; no gradient. {how}{verified}Median of {a.repeats} rounds after {WARMUP} warm-up "
        f"rounds; each round calls all {res['timed_calls']} timed functions once, in an order rotated every round; "
        f"{a.threads} threads, OMP_WAIT_POLICY {a.wait_policy}, CPU.",
        "",
        table,
        "",
        "matcher: one `HungarianMatcher` call on the last layer; matcher + loss: one `SetCriterion` forward on all "
        "layers. " + notes,
        "",
        f"Machine: {machine}; {load.describe(a.threads)} (the interleaving spreads such load over all calls alike).",
    ]))


if __name__ == "__main__":
    main()
