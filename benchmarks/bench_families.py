"""The four model families trained side by side on shapes: same data, budget, sizes and seed.

    python benchmarks/bench_families.py                         # all four, objects 12-48 px
    python benchmarks/bench_families.py --variant small          # objects 6-16 px
    python benchmarks/bench_families.py --families deformable    # one family (the table keeps the others)
    python benchmarks/bench_families.py --table-only             # rewrite the table from stored runs
    python benchmarks/bench_families.py --probe                  # step cost of each recipe (sets the budget)

Each family trains its ``shapes-<family>`` recipe (``detr_tutorial/recipes.py``: one small trunk,
width, depth and query count; multi-scale training with one canvas size per batch, 96-176 px;
its own number of optimizer steps of 32 images for 12 idle minutes, ``FAMILY_STEPS``, or
``--max-steps``; seed 42) into ``--output-dir/<variant>/<family>``,
then is measured:

- **mAP@[.5:.95], AP50, AP75, APs, APm** on the whole validation split at 128 px;
- **worst mAP over sizes**: the validation scenes drawn at 96-176 px (``SWEEP_SIZES``, 150 among
  them; objects keep their pixel sizes), the first ``--sweep-images`` of each size;
- **parameters**, **training seconds per step** and **minutes** (from the run's log: evaluation
  excluded), **inference images/s** (one 128-px image per forward, ``torch.no_grad``, median of
  interleaved rounds over the families, this process's threads);
- the **curve**: the periodic evaluations (first 200 validation images every 200 steps) against
  steps and against training minutes.

Every family's numbers go to ``summary.json`` in its run folder; the table in RESULTS.md
("families: <variant>") and the figure ``images/bench_families_<variant>.png`` (and the Korean
twin in ``images/ko/``) are written from all the summaries present, so families can be trained in
separate sessions. Training runs one family at a time with ``--threads`` torch threads.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (RESULTS.md, "threads")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import command_line, git_commit, machine_info, markdown_table, update_section  # noqa: E402

FAMILIES = ("detr", "conditional", "deformable", "rtdetr")
LABELS = {"detr": "DETR", "conditional": "Conditional (shapes-cpu)", "deformable": "Deformable DETR",
          "rtdetr": "RT-DETR"}
#: the data of each variant: dataset_options of the recipes (shapes config fields)
VARIANTS = {"standard": {}, "small": {"config": {"min_size": 6, "max_size": 16}}}


def recipe_for(family: str, variant: str, max_steps: int | None):
    from detr_tutorial.recipes import get_recipe

    recipe = get_recipe(f"shapes-{family}")
    changes = {"dataset_options": {**recipe.dataset_options, **VARIANTS[variant]}}
    if max_steps:
        changes["max_steps"] = max_steps
    return recipe.replace(**changes)


def train_family(family: str, variant: str, out: Path, args: argparse.Namespace) -> dict:
    """Train one family and measure it; the summary is also written to ``out/summary.json``."""
    import dataclasses

    import detr_tutorial as dt
    from detr_tutorial.data.shapes import ShapesConfig
    from detr_tutorial.runlog import read_log
    from detr_tutorial.size_sweep import SWEEP_SIZES, shapes_map_at_sizes

    recipe = recipe_for(family, variant, args.max_steps)
    machine = machine_info()
    result = dt.train(recipe, out, device="cpu", progress=not args.quiet)
    records = read_log(result.log)
    weights = result.final_model or result.checkpoint
    model = dt.model_from_checkpoint(weights).eval()
    config = dataclasses.replace(ShapesConfig(), **VARIANTS[variant].get("config", {}))
    sweep = shapes_map_at_sizes(model, SWEEP_SIZES, num_images=args.sweep_images, config=config)
    curve = [{"step": r["step"], "minutes": r["train_minutes"], "AP": r["metrics"]["AP"]}
             for r in records if r.get("kind") == "eval"]
    summary = {
        "family": family, "variant": variant, "recipe": recipe.name, "steps": result.steps,
        "minutes": result.minutes, "seconds_per_step": 60 * result.minutes / max(result.steps, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "metrics_128": {k: result.metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm")},
        "sweep": {str(size): metrics["AP"] for size, metrics in sweep.items()},
        "sweep_images": args.sweep_images, "curve": curve, "weights": str(weights), "machine": machine, "commit": git_commit(),
        "command": command_line(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def inference_rates(summaries: dict[str, dict], rounds: int = 5, repeats: int = 10) -> dict[str, float]:
    """Images/s of every trained family (one 128-px image per forward), interleaved rounds."""
    import torch

    import detr_tutorial as dt

    models = {f: dt.model_from_checkpoint(s["weights"]).eval() for f, s in summaries.items()}
    image = torch.rand(1, 3, 128, 128)
    rates: dict[str, list[float]] = {f: [] for f in models}
    names = list(models)
    with torch.no_grad():
        for r in range(rounds):
            for f in names[r % len(names):] + names[:r % len(names)]:
                models[f](image)
                start = time.perf_counter()
                for _ in range(repeats):
                    models[f](image)
                rates[f].append(repeats / (time.perf_counter() - start))
    return {f: statistics.median(v) for f, v in rates.items()}


def write_table(variant: str, root: Path, no_write: bool) -> None:
    """The RESULTS.md section and the figure of ``variant``, from the summaries under ``root``."""
    summaries = {}
    for family in FAMILIES:
        path = root / family / "summary.json"
        if path.is_file():
            summaries[family] = json.loads(path.read_text())
    if not summaries:
        raise SystemExit(f"no summary.json under {root}: train a family first")
    rates = inference_rates(summaries)
    rows = []
    for family, s in summaries.items():
        m, sweep = s["metrics_128"], s["sweep"]
        worst_size = min(sweep, key=sweep.get)
        rows.append([LABELS[family], s["recipe"], s["steps"], f"{s['minutes']:.1f}", f"{m['AP']:.3f}",
                     f"{m['AP50']:.3f}", f"{m['AP75']:.3f}", f"{m['APs']:.3f}", f"{m['APm']:.3f}",
                     f"{sweep[worst_size]:.3f} ({worst_size} px)", f"{s['parameters'] / 1e6:.2f}",
                     f"{s['seconds_per_step']:.3f}", f"{rates[family]:.1f}"])
    header = ["family", "recipe", "steps", "train min", "mAP", "AP50", "AP75", "APs", "APm",
              "worst mAP 96-176 px", "params (M)", "s/step", "images/s"]
    table = markdown_table(header, rows)
    sweep_header = ["family"] + list(next(iter(summaries.values()))["sweep"])
    sweep_rows = [[LABELS[f]] + [f"{v:.3f}" for v in s["sweep"].values()] for f, s in summaries.items()]
    print(table)
    print(markdown_table(sweep_header, sweep_rows))
    if no_write:
        return
    figures = draw_curves(summaries, variant)
    objects = VARIANTS[variant].get("config", {})
    store_results(variant, summaries, rates)
    size_text = f"objects {objects['min_size']}-{objects['max_size']} px" if objects else "objects 12-48 px"
    body = "\n".join([
        f"### Families: {variant} ({size_text})",
        "",
        f"`{command_line()}` (commit {git_commit()}). Each family: its `shapes-<family>` recipe, the same data, "
        "batch (32), sizes (one canvas of 96-176 px per batch), budget in steps and seed. mAP etc. at 128 px on "
        "all 500 validation images; the worst mAP over the 11 sizes of `SWEEP_SIZES` (first "
        f"{next(iter(summaries.values()))['sweep_images']} scenes of each); s/step and minutes exclude evaluation; "
        "images/s: one 128-px image per forward, median of interleaved rounds. Torch threads of the training "
        "runs and the load beside them: see each run's machine line below (minutes on a loaded machine are not "
        "idle minutes; compare steps).",
        "",
        table,
        "",
        "mAP at each validation size:",
        "",
        markdown_table(sweep_header, sweep_rows),
        "",
        "Curves (periodic evaluation on the first 200 validation images): " + ", ".join(
            f"`{p.relative_to(ROOT)}`" for p in figures) + f". The numbers, for the book: "
        f"`detr_tutorial/results/families_{variant}.json` (`dt.benchmark_results(\"families_{variant}\")`).",
        "",
        *[f"- {LABELS[f]}: trained on {s['machine']}; commit {s['commit']}." for f, s in summaries.items()],
        f"- Table written on: {machine_info()}.",
    ])
    update_section(f"families: {variant}", body)


def store_results(variant: str, summaries: dict[str, dict], rates: dict[str, float]) -> Path:
    """The table's numbers as package data (``dt.benchmark_results("families_<variant>")``), for
    the chapters that print them; the local weight paths stay out."""
    from detr_tutorial.stored_results import RESULTS_DIR

    objects = VARIANTS[variant].get("config", {})
    keep = ("recipe", "steps", "minutes", "seconds_per_step", "parameters", "metrics_128", "sweep",
            "sweep_images", "curve", "machine", "commit", "command")
    data = {
        "benchmark": "benchmarks/bench_families.py",
        "variant": variant,
        "objects_px": [objects.get("min_size", 12), objects.get("max_size", 48)],
        "command": command_line(),
        "commit": git_commit(),
        "written_on": machine_info(),
        "families": {
            f: {"label": LABELS[f], **{k: s[k] for k in keep}, "images_per_s": rates[f]} for f, s in summaries.items()
        },
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"families_{variant}.json"
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def draw_curves(summaries: dict[str, dict], variant: str) -> list[Path]:
    """mAP against steps and against minutes, one line per family, in English and Korean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detr_tutorial.language import figure_language, tr

    objects = VARIANTS[variant].get("config", {})
    what = f"objects {objects['min_size']}-{objects['max_size']} px" if objects else "objects 12-48 px"
    paths = []
    for lang, folder in (("en", ROOT / "images"), ("ko", ROOT / "images" / "ko")):
        lang = figure_language(lang)  # selects the Korean font (English labels where none is installed)
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        for family, s in summaries.items():
            steps = [0] + [p["step"] for p in s["curve"]]
            minutes = [0] + [p["minutes"] for p in s["curve"]]
            ap = [0] + [p["AP"] for p in s["curve"]]
            label = tr(LABELS[family], lang=lang, known_only=True)
            axes[0].plot(steps, ap, marker="o", ms=3, label=label)
            axes[1].plot(minutes, ap, marker="o", ms=3, label=label)
        axes[0].set_xlabel(tr("optimizer steps", lang=lang))
        axes[1].set_xlabel(tr("training minutes", lang=lang))
        axes[0].set_ylabel(tr("mAP (first 200 validation images)", lang=lang))
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=8)
        fig.suptitle(tr("Families on shapes ({variant})", lang=lang, variant=tr(what, lang=lang, known_only=True)))
        fig.tight_layout()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"bench_families_{variant}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


#: the shipped model's recipe on an idle machine: 2700 steps in 10.7 training minutes (its log,
#: detr_tutorial/checkpoints/shapes_detr_log.jsonl), the reference the step budgets scale from
SHAPES_CPU_IDLE_SECONDS_PER_STEP = 10.7 * 60 / 2700


def probe_step_costs(rounds: int, steps: int, no_write: bool) -> None:
    """Seconds per training step of every family recipe and of ``shapes-cpu``, interleaved.

    A shared machine's speed moves by 2-3x, so only ratios measured side by side mean anything:
    each round trains every recipe for ``steps`` steps (in an order rotated every round), the
    first 4 steps of each are dropped (kernel set-up for new sizes), and a recipe's cost is its
    median step over all rounds. Each family recipe's steps (``FAMILY_STEPS``) are what it does in
    12 idle minutes, at the idle speed of ``shapes-cpu`` times its ratio, less 10-30 %.
    """
    import tempfile

    import detr_tutorial as dt
    from detr_tutorial.recipes import FAMILY_STEPS, get_recipe

    names = ["shapes-cpu"] + [f"shapes-{f}" for f in FAMILIES]
    seconds: dict[str, list[float]] = {n: [] for n in names}
    machine = machine_info()
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            recipe = get_recipe(name).replace(max_steps=steps, eval_every=0, checkpoint_every=0, num_workers=0)
            times: list[float] = []
            with tempfile.TemporaryDirectory() as out:
                dt.train(recipe, out, device="cpu", final_eval=False, progress=False,
                         on_step_end=lambda info: times.append(info.seconds))
            seconds[name] += times[4:]
    median = {n: statistics.median(v) for n, v in seconds.items()}
    rows, budgets = [], {}
    for name in names:
        ratio = median[name] / median["shapes-cpu"]
        idle = SHAPES_CPU_IDLE_SECONDS_PER_STEP * ratio
        budgets[name] = int(12 * 60 / idle)
        rows.append([name, f"{median[name]:.3f}", f"{ratio:.2f}", f"{idle:.3f}", budgets[name]])
    table = markdown_table(["recipe", "s/step here (median)", "ratio to shapes-cpu", "idle s/step (estimated)",
                            "steps in 12 idle min"], rows)
    print(table)
    chosen = ", ".join(f"{f} {FAMILY_STEPS[f]} (estimate {budgets['shapes-' + f]})" for f in FAMILIES)
    print(f"the recipes' steps (FAMILY_STEPS): {chosen}")
    if no_write:
        return
    update_section("families: step cost", "\n".join([
        "### Families: step cost",
        "",
        f"`{command_line()}` (commit {git_commit()}). {rounds} interleaved rounds of {steps} training steps per "
        "recipe (the first 4 of each dropped), batch 32, one canvas of 96-176 px per batch (`shapes-cpu`: 128 px). "
        f"The idle estimate scales `shapes-cpu`'s idle {SHAPES_CPU_IDLE_SECONDS_PER_STEP:.3f} s/step (the shipped "
        "model's log) by each ratio.",
        "",
        table,
        "",
        f"The recipes' steps (`FAMILY_STEPS`, set 10-30 % under each estimate for a noisy machine): {chosen}.",
        f"Machine at start: {machine}.",
        f"Machine at end: {machine_info()}.",
    ]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--variant", choices=sorted(VARIANTS), default="standard")
    p.add_argument("--max-steps", type=int, help="default: the recipes' budget (FAMILY_STEPS)")
    p.add_argument("--sweep-images", type=int, default=200, help="validation scenes per size of the sweep")
    p.add_argument("--output-dir", default="runs/bench-families")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table-only", action="store_true", help="only rewrite the table from stored summaries")
    p.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--probe", action="store_true", help="only measure every recipe's step cost (interleaved)")
    p.add_argument("--probe-rounds", type=int, default=3)
    p.add_argument("--probe-steps", type=int, default=12)
    args = p.parse_args()

    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.probe:
        return probe_step_costs(args.probe_rounds, args.probe_steps, args.no_write)
    root = Path(args.output_dir) / args.variant
    if not args.table_only:
        for family in args.families:
            out = root / family
            if (out / "summary.json").exists() or (out / "log.jsonl").exists():
                raise SystemExit(f"{out} holds a run already: remove it or pick another --output-dir")
            summary = train_family(family, args.variant, out, args)
            print(f"{family}: mAP {summary['metrics_128']['AP']:.3f} at 128 px, worst "
                  f"{min(summary['sweep'].values()):.3f}, {summary['steps']} steps in {summary['minutes']:.1f} min")
    write_table(args.variant, root, args.no_write)


if __name__ == "__main__":
    main()
