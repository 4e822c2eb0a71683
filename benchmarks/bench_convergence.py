"""mAP against training steps and minutes for a recipe (default: ``shapes-cpu``).

    python benchmarks/bench_convergence.py --recipe shapes-cpu
    python benchmarks/bench_convergence.py --recipe detr-paper --max-steps 300 \
        --set model.pretrained_backbone=false --label detr-paper-300

Trains with periodic evaluation (``--eval-every`` steps on the first ``--eval-images`` validation
images; the last row is always the whole validation split), prints a table of step, training
minutes (evaluation excluded), AP and AP50, and writes it to the ``convergence: LABEL`` section of
``RESULTS.md``. The whole run (log, checkpoints) stays in ``--output-dir``.

``--from-run DIR`` writes the table of a run that already happened (e.g. the shipped model's
``python -m detr_tutorial train`` run) from its ``log.jsonl``, without training again.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import command_line, git_commit, machine_info, markdown_table, update_section  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="shapes-cpu")
    p.add_argument("--max-steps", type=int, help="default: the recipe's budget")
    p.add_argument("--eval-every", type=int, default=0, help="default: the recipe's")
    p.add_argument("--eval-images", type=int, default=0, help="images per periodic evaluation (default: the recipe's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe/model./data. overrides")
    p.add_argument("--label", help="section name in RESULTS.md (default: the recipe name)")
    p.add_argument("--output-dir", help="default: runs/bench-LABEL")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    p.add_argument("--from-run", metavar="DIR", help="tabulate an existing run's log.jsonl instead of training")
    a = p.parse_args()
    if a.from_run:
        return from_run(Path(a.from_run), a.label, a.no_write)

    import torch

    from detr_tutorial.cli import _apply_sets
    from detr_tutorial.recipes import get_recipe
    from detr_tutorial.runlog import read_log
    from detr_tutorial.train import train

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    recipe = _apply_sets(get_recipe(a.recipe), a.set)
    if a.eval_every:
        recipe = recipe.replace(eval_every=a.eval_every)
    if a.eval_images:
        recipe = recipe.replace(eval_max_images=a.eval_images)
    label = a.label or recipe.name
    out = Path(a.output_dir or f"runs/bench-{label}")
    machine_before = machine_info()
    t0 = time.perf_counter()
    result = train(recipe, out, max_steps=a.max_steps, progress=True)
    wall = (time.perf_counter() - t0) / 60
    records = read_log(result.log)
    rows = _rows(records, result.steps, recipe.eval_max_images)
    table = markdown_table(["step", "train min", "val images", "AP", "AP50", "train loss"], rows)
    print(table)
    print(f"{result.steps} steps, {result.minutes:.1f} training minutes, {wall:.1f} wall minutes; final AP {result.metrics.get('AP')}")
    if a.no_write:
        return
    body = "\n".join([
        f"### Convergence: {label}",
        "",
        f"`{command_line()}` (commit {git_commit()})",
        "",
        f"Recipe `{recipe.name}` with overrides {a.set or 'none'}: batch {recipe.batch_size}, lr {recipe.lr}, "
        f"backbone lr {recipe.lr_backbone}, schedule {recipe.schedule} (warm-up {recipe.warmup_steps}), "
        f"{result.steps} steps. Model: {recipe.model} + {recipe.model_overrides}.",
        "",
        table,
        "",
        f"Training time {result.minutes:.1f} min (evaluation excluded), wall {wall:.1f} min.",
        f"Machine at start: {machine_before}.",
        f"Machine at end: {machine_info()}.",
    ])
    update_section(f"convergence: {label}", body)


def _rows(records: list[dict], last_step: int, eval_images: object) -> list[list[object]]:
    evals = {r["step"]: r for r in records if r.get("kind") == "eval"}
    train_recs = {r["step"]: r for r in records if r.get("kind") == "train"}
    rows = []
    for step in sorted(evals):
        m = evals[step]["metrics"]
        n_img = "all" if step == last_step else str(eval_images or "all")
        loss = train_recs.get(step, {}).get("loss", float("nan"))
        rows.append([step, round(evals[step]["train_minutes"], 2), n_img, round(m["AP"], 4), round(m["AP50"], 4),
                     round(loss, 3) if isinstance(loss, float) else loss])
    return rows


def from_run(run: Path, label: str | None, no_write: bool) -> None:
    """The convergence table of a finished run, from its log."""
    from detr_tutorial.runlog import read_log

    records = read_log(run / "log.jsonl")
    starts = [r for r in records if r.get("kind") == "start"]
    ends = [r for r in records if r.get("kind") == "end"]
    if not starts or not ends:
        raise SystemExit(f"{run}/log.jsonl has no finished run (start and end records)")
    recipe, end = starts[0]["recipe"], ends[-1]
    label = label or recipe["name"]
    rows = _rows(records, end["step"], recipe.get("eval_max_images"))
    table = markdown_table(["step", "train min", "val images", "AP", "AP50", "train loss"], rows)
    print(table)
    if no_write:
        return
    resumed = len(starts) > 1
    update_section(f"convergence: {label}", "\n".join([
        f"### Convergence: {label}",
        "",
        f"From the log of `{run}` (`{command_line()}`, commit {git_commit()}): recipe `{recipe['name']}`, "
        f"batch {recipe['batch_size']}, lr {recipe['lr']}, backbone lr {recipe['lr_backbone']}, "
        f"schedule {recipe['schedule']} (warm-up {recipe['warmup_steps']}), {end['step']} steps"
        + (" (resumed at least once)" if resumed else "") + ".",
        "",
        table,
        "",
        f"Training time {end['train_minutes']:.1f} min (evaluation excluded), wall {end['wall_minutes']:.1f} min "
        f"(of the last start). Device: {starts[-1].get('device')}, processes: {starts[-1].get('world_size')}.",
        f"Tabulated on: {machine_info()}.",
    ]))


if __name__ == "__main__":
    main()
