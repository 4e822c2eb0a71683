"""The command line: ``python -m detr_tutorial train | eval | predict | convert | export``.

Examples::

    python -m detr_tutorial train                         # the CPU recipe on shapes, ends with mAP
    python -m detr_tutorial train --recipe coco-r50 --data-dir /data/coco --device cuda
    torchrun --nproc_per_node 8 -m detr_tutorial train --recipe coco-r50 --data-dir /data/coco
    python -m detr_tutorial train --resume runs/shapes-cpu      # continue exactly where it stopped
    python -m detr_tutorial eval --checkpoint runs/shapes-cpu/model_final.pth --dataset shapes --split val
    python -m detr_tutorial predict --checkpoint model.pth img1.jpg img2.jpg --out preds/
    python -m detr_tutorial convert --official detr-r50-e632da11.pth --out detr_r50.pth
    python -m detr_tutorial export --checkpoint model.pth --format onnx --out detr.onnx
    python -m detr_tutorial export --checkpoint model.pth --format checkpoint --out small.pth

User errors (a missing file or folder, an unreadable checkpoint, a class-count mismatch, a bad
option value) print one line starting with ``error:`` and exit with status 2; ``--debug``
shows the traceback instead. A diverged run (NaN loss) ends with one ``error:`` line and status 1;
Ctrl-C during ``train`` saves a resumable checkpoint after the current step and exits with 130.

``train`` started from the command line runs with ``OMP_WAIT_POLICY=PASSIVE`` unless the
variable is already set: by default OpenMP threads spin while they wait for work, and on a CPU
shared with other processes the spinning threads steal the cores the busy ones need. Measured on
a 2-core machine under a load of ~8: 2.9 s per training step with the default policy, 0.55 s
with ``PASSIVE`` (``benchmarks/RESULTS.md``). OpenMP reads the variable when torch is loaded, so
the command re-executes itself once with it set; set ``OMP_WAIT_POLICY`` yourself to opt out.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["main", "build_parser", "UsageError"]

logger = logging.getLogger("detr_tutorial.cli")


class UsageError(Exception):
    """A problem with the user's input: reported in one line, exit status 2."""


# --------------------------------------------------------------------------------- helpers
def _parse_value(text: str) -> Any:
    """``--set`` values: JSON when it parses (numbers, true/false, null, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        return text


def _apply_sets(recipe: Any, sets: Sequence[str]) -> Any:
    """Apply ``KEY=VALUE`` overrides: recipe fields, ``model.FIELD`` and ``data.OPTION``."""
    fields: dict[str, Any] = {}
    model_overrides = dict(recipe.model_overrides)
    data_options = dict(recipe.dataset_options)
    for item in sets:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        value = _parse_value(value)
        if key.startswith("model."):
            model_overrides[key[len("model."):]] = value
        elif key.startswith("data."):
            data_options[key[len("data."):]] = value
        else:
            _check_recipe_value(type(recipe), key, value)
            fields[key] = value
    try:
        return recipe.replace(**fields, model_overrides=model_overrides, dataset_options=data_options)
    except TypeError as e:
        raise UsageError(str(e)) from e


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` (parsed from ``--set``) has the type a recipe field is annotated with."""
    import typing

    origin = typing.get_origin(hint)
    if origin is typing.Union:
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an int is a float here (lr=1 is fine), a bool or nan is not a rate
        import math

        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    return isinstance(value, origin or hint) if isinstance(origin or hint, type) else True


def _check_recipe_value(recipe_type: type, key: str, value: Any) -> None:
    """Refuse ``--set KEY=VALUE`` whose value has the wrong type for the recipe field ``KEY``.

    ``--set batch_size=abc`` would otherwise reach the training loop as a string and fail there
    with a message about comparing ``str`` and ``int``.
    """
    import dataclasses
    import typing

    hints = typing.get_type_hints(recipe_type)
    names = [f.name for f in dataclasses.fields(recipe_type)]
    if key not in names:
        return  # Recipe.replace names the unknown field
    hint = hints[key]
    if not _accepts(hint, value):
        wanted = {int: "an int", float: "a finite number", bool: "true or false", str: "a string"}.get(
            hint, str(hint).replace("typing.", "")
        )
        raise UsageError(f"--set {key} expects {wanted}, got {value!r}")


def _positive(value: Optional[int], option: str) -> Optional[int]:
    """``value`` unless it is below 1 (``--max-steps 0`` would otherwise mean "the recipe's budget")."""
    if value is not None and value < 1:
        raise UsageError(f"{option} must be a positive integer, got {value}")
    return value


def _device(text: Optional[str]) -> Optional[str]:
    """Check a ``--device`` value: a device torch knows, and CUDA only where there is CUDA."""
    if text is None:
        return None
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"unknown --device {text!r}: use cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type not in ("cpu", "mps"):
        raise UsageError(f"unsupported --device {text!r}: use cpu, cuda or cuda:N")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {text}: MPS is not available on this machine (use --device cpu)")
    return text


def _output_folder(path: str, option: str) -> Path:
    """An output folder that exists or can be made: refuse a path that is (or lies under) a file."""
    p = Path(path)
    for parent in (p, *p.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {p} is not a folder: {parent} is a file")
            break
    return p


def _existing_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} not found: {p}")
    if p.is_dir():
        raise UsageError(f"{what} is a directory, expected a file: {p}")
    return p


def _existing_dir(path: Optional[str], what: str) -> Optional[str]:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} not found: {p}")
    if not p.is_dir():
        raise UsageError(f"{what} is not a directory: {p}")
    return str(p)


# --------------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from .evaluation import format_metrics_table
    from .recipes import get_recipe
    from .train import train

    recipe = get_recipe(args.recipe)
    if args.set:
        recipe = _apply_sets(recipe, args.set)
    data_dir = _existing_dir(args.data_dir, "data directory")
    if recipe.dataset == "folder" and data_dir is None and recipe.data_dir is None:
        raise UsageError("the 'folder' data set needs --data-dir (a COCO-format folder)")
    if args.data_dir and recipe.dataset == "shapes":
        recipe = recipe.replace(dataset="folder")  # --data-dir with the default recipe: the user's own data
    output_dir = str(_output_folder(args.output_dir or f"runs/{recipe.name}", "--output-dir"))
    max_steps = _positive(args.max_steps, "--max-steps")
    device = _device(args.device)
    resume = args.resume
    if resume == "auto":
        resume = output_dir
    if resume is not None:
        r = Path(resume)
        target = r / "checkpoint.pth" if r.is_dir() else r
        if not target.exists():
            raise UsageError(f"checkpoint to resume not found: {target}")
    if args.init_from is not None:
        _existing_file(args.init_from, "checkpoint")
    result = train(
        recipe,
        output_dir,
        device=device,
        max_steps=max_steps,
        resume=resume,
        init_from=args.init_from,
        reset_class_head=args.reset_class_head,
        data_dir=data_dir,
        amp=args.amp,
        compile=args.compile,
        channels_last=args.channels_last,
        progress=not args.no_progress,
    )
    from .distributed import is_main_process

    if is_main_process():
        print(f"trained {recipe.name}: {result.steps} steps in {result.minutes:.1f} min of training")
        print(f"model: {result.final_model}   checkpoint: {result.checkpoint}   log: {result.log}")
        if result.metrics:
            print(format_metrics_table(result.metrics))
            print(f"mAP@[.5:.95] = {result.metrics['AP']:.4f}")
    return 0


def _eval_dataset(name: str, split: str, data_dir: Optional[str], options: dict[str, Any]):
    from .data import build_dataset

    return build_dataset(name, split, root=data_dir, **options)


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from . import checkpoint as ckpt_io
    from .engine import evaluate
    from .evaluation import format_metrics_table
    from .families import build_postprocess
    from .models import PostProcess
    from .train import make_eval_loader

    path = _existing_file(args.checkpoint, "checkpoint")
    _positive(args.batch_size, "--batch-size")
    _positive(args.max_images, "--max-images")
    if args.json:
        _output_folder(str(Path(args.json).parent), "--json")
        if Path(args.json).is_dir():
            raise UsageError(f"--json {args.json} is a folder, expected a file path")
    state = ckpt_io.load_checkpoint(path)
    device = torch.device(_device(args.device) or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = ckpt_io.model_from_checkpoint(state).to(device)
    dataset_name = args.dataset or (state.get("recipe") or {}).get("dataset") or "shapes"
    data_dir = _existing_dir(args.data_dir, "data directory")
    options = {}
    for item in args.set or []:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        options[k.removeprefix("data.")] = _parse_value(v)
    if "transforms" not in options:  # score the model at the image size its recipe trained it for
        from .train import eval_transforms

        sizes = {k: options.pop(k) for k in ("val_size", "max_size") if k in options}
        try:
            options["transforms"] = eval_transforms(state.get("recipe"), dataset_name, **sizes)
        except ValueError as e:
            raise UsageError(str(e)) from e
    dataset = _eval_dataset(dataset_name, args.split, data_dir, options)
    n_model, n_data = model.num_classes, len(dataset.class_names)
    if n_model != n_data:
        raise UsageError(
            f"checkpoint {path} predicts {n_model} classes but the {dataset_name} {args.split} set has {n_data}"
        )
    cfg = model.config
    loader = make_eval_loader(dataset, args.batch_size, args.num_workers, args.max_images)
    post = build_postprocess(cfg) if cfg is not None else PostProcess()  # a config-less model: softmax scores
    metrics = evaluate(model, post, loader, dataset, device, progress=not args.no_progress)
    print(f"{path} on {dataset_name} {args.split} ({len(loader.dataset)} images)")
    print(format_metrics_table(metrics))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
        print(f"metrics written to {out}")
    return 0


def _draw(image, det: dict, class_names: Optional[Sequence[str]]):
    """A copy of a PIL image with boxes, names and scores drawn on it."""
    from PIL import ImageDraw

    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    image = image.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
        color = palette[int(label) % len(palette)]
        name = class_names[int(label)] if class_names and int(label) < len(class_names) else str(int(label))
        draw.rectangle(box, outline=color, width=2)
        text = f"{name} {score:.2f}"
        x, y = box[0], max(0.0, box[1] - 11)
        draw.rectangle(draw.textbbox((x, y), text), fill=color)
        draw.text((x, y), text, fill=(255, 255, 255))
    return image


def _prediction_names(paths: Sequence[Path]) -> list[str]:
    """One distinct output file name per input image: ``STEM_pred.png``, or ``STEM_K_pred.png``
    (K = 1, 2, ... in command-line order) for stems that several inputs share (``a/img.png`` and
    ``b/img.png`` would otherwise overwrite one drawing)."""
    from collections import Counter

    counts = Counter(p.stem for p in paths)
    seen: Counter = Counter()
    names = []
    for p in paths:
        seen[p.stem] += 1
        names.append(f"{p.stem}_pred.png" if counts[p.stem] == 1 else f"{p.stem}_{seen[p.stem]}_pred.png")
    taken = set(names)
    if len(taken) != len(names):  # "img_1.png" next to two "img.png": refuse rather than overwrite
        raise UsageError("input images map to the same output name; rename them or predict them separately")
    return names


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from . import checkpoint as ckpt_io
    from .image_io import open_image
    from .detect import predict

    path = _existing_file(args.checkpoint, "checkpoint")
    if not 0.0 <= args.threshold <= 1.0:  # also refuses nan
        raise UsageError(f"--threshold must be a score in [0, 1], got {args.threshold}")
    out_dir = _output_folder(args.out, "--out")
    images = []
    for name in args.images:
        p = _existing_file(name, "image")
        try:  # upright as its EXIF orientation says; 16-bit and float images rescaled, not clipped
            images.append((p, open_image(p)))
        except ValueError as e:  # names the file: corrupt, truncated, not an image, unconvertible pixels
            raise UsageError(str(e)) from e
    state = ckpt_io.load_checkpoint(path)
    device = torch.device(_device(args.device) or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = ckpt_io.model_from_checkpoint(state).to(device)
    names = state.get("class_names") or (model.config.class_names if model.config is not None else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for (p, im), out_name in zip(images, _prediction_names([p for p, _ in images])):
        det = predict(model, im, threshold=args.threshold, device=device)[0]
        drawn = _draw(im, det, names)
        target = out_dir / out_name
        drawn.save(target)
        print(f"{p}: {len(det['scores'])} objects -> {target}")
        records.append(
            {
                "image": str(p),
                "drawn": str(target),
                "boxes": det["boxes"].tolist(),
                "scores": det["scores"].tolist(),
                "labels": det["labels"].tolist(),
                "names": [names[int(i)] for i in det["labels"]] if names else None,
            }
        )
    with open(out_dir / "predictions.json", "w", encoding="utf-8") as f:
        json.dump(records, f, indent=2)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Official checkpoint -> our format. The architecture is read off the weights (``nheads`` and
    ``dilation`` leave no trace in them: pass ``--name`` for a paper model or ``--set nheads=N``)."""
    from . import checkpoint as ckpt_io
    from .families import build_model
    from .pretrained import from_official, infer_official_preset, load_official_state_dict

    src = _existing_file(args.official, "official checkpoint")
    state = ckpt_io.read_weights_file(src, "cpu")
    if not isinstance(state, dict):
        raise UsageError(f"checkpoint {src} holds a {type(state).__name__}, expected a dict")
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise UsageError(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.removeprefix("model.")] = _parse_value(v)
    name = args.name
    if name is None and not overrides:
        name = infer_official_preset(state).get("preset")
    if name is not None and not overrides:
        model = from_official(name, checkpoint=str(src), map_location="cpu")
    else:
        info = infer_official_preset(state)
        arch = {k: info[k] for k in ("backbone", "num_classes", "hidden_dim", "num_queries", "enc_layers",
                                      "dec_layers", "dim_feedforward", "position_embedding") if info.get(k) is not None}
        model = build_model(name or "detr-tiny", **{**arch, "pretrained_backbone": False, **overrides})
        load_official_state_dict(model, state)
    cfg = model.config
    ckpt_io.save_checkpoint(
        {
            "format": ckpt_io.FORMAT,
            "model": model.state_dict(),
            "config": cfg.to_dict() if cfg is not None else {},
            "class_names": list(cfg.class_names) if cfg is not None and cfg.class_names else None,
            "label_map": None,
            "source": str(src),
        },
        args.out,
    )
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {src} ({n:,} parameters) -> {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Checkpoint -> a deployable graph (ONNX, ``torch.export`` or TorchScript); see ``detr_tutorial.export``."""
    from . import checkpoint as ckpt_io
    from .export import FORMATS, export_graph

    formats = (*FORMATS, "checkpoint")
    if args.format not in formats:
        raise UsageError(f"unknown export format {args.format!r}; choose one of {', '.join(formats)}")
    src = _existing_file(args.checkpoint, "checkpoint")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"output folder not found: {out.parent}")
    if out.is_dir():
        raise UsageError(f"--out is a directory, expected a file: {out}")
    if args.format == "checkpoint":  # what the shipped model is: float16 weights + config, no optimizer
        path = ckpt_io.export_model(src, out, half=True)
    else:
        path = export_graph(src, out, format=args.format, opset=args.opset)
    print(f"exported {src} as {args.format} -> {path}")
    return 0


# ---------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .recipes import RECIPES

    parser = argparse.ArgumentParser(prog="detr-tutorial", description="Train, evaluate and run DETR.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe (default: the CPU recipe on shapes)")
    t.add_argument("--recipe", default="shapes-cpu", choices=sorted(RECIPES), help="named recipe (default shapes-cpu)")
    t.add_argument("--data-dir", help="data root (VOC/COCO) or a COCO-format folder of your own")
    t.add_argument("--output-dir", help="where checkpoints and the log go (default runs/RECIPE)")
    t.add_argument("--max-steps", type=int, help="optimizer steps (overrides the recipe's budget)")
    t.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                   help="continue a run exactly (no value: OUTPUT_DIR/checkpoint.pth)")
    t.add_argument("--init-from", metavar="CHECKPOINT", help="start from these weights (fine-tuning)")
    t.add_argument("--reset-class-head", action="store_true",
                   help="with --init-from: replace the class head (checkpoint made for other classes)")
    t.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    t.add_argument("--amp", choices=["none", "bf16", "fp16", "auto"],
                   help="mixed precision (fp16 needs CUDA; auto: bf16 where the device has it natively)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe field (batch_size=8), a model field (model.hidden_dim=64) "
                        "or a data set option (data.train_num_images=100); repeatable")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="COCO mAP of a checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--dataset", choices=["shapes", "voc", "coco", "folder"], help="default: the checkpoint's")
    e.add_argument("--split", default="val")
    e.add_argument("--data-dir")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--num-workers", type=int, default=0)
    e.add_argument("--max-images", type=int, help="evaluate the first N images only")
    e.add_argument("--device")
    e.add_argument("--json", metavar="PATH", help="also write the metrics as JSON")
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="a data set option; repeatable")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="draw detections on images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device")
    p.set_defaults(func=cmd_predict)

    c = sub.add_parser("convert", help="official DETR checkpoint -> this package's format")
    c.add_argument("--official", required=True, help="a checkpoint of facebookresearch/detr")
    c.add_argument("--out", required=True)
    c.add_argument("--name", help="the official model (detr-r50, detr-r50-dc5, ...); default: read off the weights")
    c.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="config fields the weights do not show (nheads=4, dilation=true, ...); repeatable")
    c.set_defaults(func=cmd_convert)

    x = sub.add_parser("export", help="checkpoint -> ONNX / torch.export / TorchScript file for deployment")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--format", default="onnx", metavar="FORMAT",
                   help="onnx (default), torch-export (a .pt2 program), torchscript (the paper's DETR only) or "
                        "checkpoint (a float16 inference .pth, as the shipped model: weights, config, class names)")
    x.add_argument("--out", required=True, help="the file to write (its folder must exist)")
    x.add_argument("--opset", type=int, default=18, help="ONNX opset, 17 or later (default 18)")
    x.set_defaults(func=cmd_export)
    return parser


def _one_line(e: BaseException) -> str:
    """The exception's own message on one line.

    A DataLoader worker's exception reaches the main process as the same type with the worker's
    whole traceback as its message ("Caught ValueError in DataLoader worker process 0. Original
    Traceback ...: ValueError: <message>"): keep the original message only. An ``OSError`` says
    what failed on which file ("No space left on device: runs/x/checkpoint.pth").
    """
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        text = f"{e.strerror}: {os.fsdecode(e.filename)}"
    else:
        text = str(e).strip() or type(e).__name__
    lines = text.splitlines()
    if any(line.startswith("Original Traceback") for line in lines):
        prefix = f"{type(e).__name__}: "
        own = [line[len(prefix):] for line in lines if line.startswith(prefix)]
        text = own[-1] if own else lines[-1]
    return " ".join(text.split())


def _reexec_with_passive_openmp(command: str) -> None:
    """Restart this command with ``OMP_WAIT_POLICY=PASSIVE`` (see the module docstring)."""
    if command != "train" or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "detr_tutorial", *sys.argv[1:]])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m detr_tutorial`` and the ``detr-tutorial`` console script.

    ``argv=None`` means "the program's own arguments" (and allows the OpenMP re-execution);
    a list runs the command in this process as is (tests, notebooks).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:
        _reexec_with_passive_openmp(args.command)
    # training reports its progress through logging; the other commands print only their results
    verbose = args.command == "train" and not args.quiet
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .checkpoint import CheckpointError
    from .engine import NonFiniteLossError

    try:
        return int(args.func(args) or 0)
    except (UsageError, CheckpointError, OSError, ValueError, TypeError) as e:  # OSError: disk full, read-only, ...
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        saved = getattr(e, "checkpoint", None)
        where = f": checkpoint of step {e.step} saved to {saved} (continue with --resume)" if saved else ""
        print(f"interrupted{where}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
