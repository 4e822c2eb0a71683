"""Export a trained model for deployment: ONNX files, ``torch.export`` programs, TorchScript.

Both formats hold the inference graph only: a normalized image batch ``images [B, 3, H, W]``
(ImageNet mean/std, no padding: every pixel is valid) goes in, the last decoder layer's
``pred_logits`` and ``pred_boxes [B, Q, 4]`` (normalized cxcywh, relative to the image) come out;
no auxiliary outputs, no post-processing. What ``pred_logits`` holds depends on the family, and so
does the post-processing, ``dt.build_postprocess(model.config)`` (a few lines a deployment rewrites
in its own language):

- DETR and its variants (:class:`~detr_tutorial.models.DETR`): ``[B, Q, C+1]``, the last column
  "no object"; softmax scores (:class:`~detr_tutorial.models.PostProcess`), or sigmoid ones for a
  focal-loss model, whose last column is then never read;
- RT-DETR (:class:`~detr_tutorial.families.rtdetr.RTDETR`, the ``"rtdetr"`` family): ``[B, Q, C]``,
  ``num_classes`` columns and no "no object" one: sigmoid scores, and the post-processing keeps the
  ``num_top_queries`` best (query, class) pairs of each image
  (:class:`~detr_tutorial.families.rtdetr_loss.RTDETRPostProcess`). The graph pads the image to a
  multiple of 32 inside, as the eager model does, and its boxes are already rescaled to the image.

Batch, height and width stay dynamic, so one file serves every image size; the smallest size the
graph accepts is recorded by ``torch.export`` (a feature map of one cell would change the graph,
so it starts a little above the backbone's stride).

Both are made by :func:`torch.export.export` (the ONNX file by ``torch.onnx.export(...,
dynamo=True)``, which translates that program into ONNX with ``onnxscript``): Python control flow
that depends only on shapes and settings is traced away, so the paper's, the conditional
(two-stage included), the deformable and the RT-DETR families export. A model whose code reads a
tensor's values as Python numbers (``.tolist()``) cannot be traced: :func:`export_program` says so
in one line, naming the line.

``torch.jit.script`` is a different matter: it compiles the Python source itself, and only the
paper's family is written in the subset it understands (:func:`script_model`,
:func:`scripting_blockers`; the conditional and RT-DETR families and the small CNN trunk do not).

>>> import detr_tutorial as dt
>>> dt.export_graph("runs/shapes-cpu/model_final.pth", "detr.onnx", format="onnx")  # doctest: +SKIP
>>> model = dt.load_shipped_model()
>>> postprocess = dt.build_postprocess(model.config)  # what turns the graph's outputs into pixel boxes
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from .models.scriptable import ScriptableDETR, scripting_blockers, scripting_error

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "InferenceGraph",
    "example_images",
    "export_program",
    "export_onnx",
    "export_torch",
    "export_graph",
    "ScriptableDETR",
    "scripting_blockers",
    "script_model",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: The output formats of :func:`export_graph` (and of ``python -m detr_tutorial export --format``);
#: ``torchscript`` compiles the paper's family only (:func:`script_model`).
FORMATS = ("onnx", "torch-export", "torchscript")
#: The default ONNX opset: 18, the opset torch's exporter writes natively (17 is the least accepted).
ONNX_OPSET = 18
_MIN_OPSET = 17
INPUT_NAMES = ("images",)
OUTPUT_NAMES = ("pred_logits", "pred_boxes")


class InferenceGraph(nn.Module):
    """A model as a deployable function ``images [B, 3, H, W] -> (pred_logits, pred_boxes)``.

    Tuples of tensors are what exporters and runtimes understand; the model's output dict also
    carries auxiliary outputs that inference never uses. The wrapped model must be in eval mode
    (dropout off, one query group, no training-only outputs): :func:`export_program` checks it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images [B, 3, H, W]`` normalized -> ``pred_logits [B, Q, C+1]`` (RT-DETR: ``[B, Q, C]``),
        ``pred_boxes [B, Q, 4]``."""
        out = self.model(images)
        return out["pred_logits"], out["pred_boxes"]


def _check_model(model: Any) -> nn.Module:
    """``model`` if it is one of the package's models (a DETR of any family, or an RT-DETR) in eval mode."""
    from .families.rtdetr import RTDETR
    from .models import DETR

    if not isinstance(model, (DETR, RTDETR)):
        raise TypeError(f"expected a detr_tutorial model (DETR or RTDETR), got {type(model).__name__}")
    if model.training:
        raise ValueError("the model is in training mode: call model.eval() before exporting (dropout, query groups)")
    return model


class _BatchFirstAttention(nn.Module):
    """What an eval-mode, batch-first :class:`torch.nn.MultiheadAttention` computes, written batch-first.

    ``nn.MultiheadAttention(batch_first=True)`` (RT-DETR's encoder and decoder use it) transposes
    its inputs to ``[L, B, E]`` and projects those views; tracing that projection records a guard
    that holds for the traced batch and fails for a batch of one (torch 2.14), so the exported
    graph would refuse single images. This module shares the attention's parameters (same names,
    so the program's state dict keys are the model's) and computes the same function on the
    ``[B, L, E]`` tensors: projections, :func:`~torch.nn.functional.scaled_dot_product_attention`,
    ``out_proj``. It serves inference only: no masks, no dropout, no weights returned.
    """

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        self.embed_dim = attention.embed_dim
        self.num_heads = attention.num_heads
        self.in_proj_weight = attention.in_proj_weight
        self.in_proj_bias = attention.in_proj_bias
        self.out_proj = attention.out_proj

    @staticmethod
    def replaces(attention: nn.Module) -> bool:
        """Whether ``attention`` is a ``nn.MultiheadAttention`` this module computes exactly."""
        return (
            isinstance(attention, nn.MultiheadAttention) and attention.batch_first and attention._qkv_same_embed_dim
            and attention.in_proj_bias is not None and attention.bias_k is None and not attention.add_zero_attn
        )

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, None]:
        """``query [B, Lq, E]``, ``key``/``value [B, Lk, E]`` -> ``(output [B, Lq, E], None)``."""
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError("the exported attention takes no masks: inference passes none")
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        head_dim = self.embed_dim // self.num_heads

        def heads(x: Tensor) -> Tensor:  # [B, L, E] -> [B, heads, L, head_dim]
            return x.view(x.shape[0], x.shape[1], self.num_heads, head_dim).transpose(1, 2)

        q, k, v = heads(F.linear(query, w_q, b_q)), heads(F.linear(key, w_k, b_k)), heads(F.linear(value, w_v, b_v))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, Lq, head_dim]
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], self.embed_dim)  # [B, Lq, E]
        return self.out_proj(out), None


def _traceable(model: nn.Module) -> nn.Module:
    """``model``, or a copy of its module tree (sharing every parameter and buffer, so nothing is
    duplicated and the user's model is left as it is) with each ``nn.MultiheadAttention`` replaced by
    :class:`_BatchFirstAttention`, which traces for every batch size."""
    if not any(_BatchFirstAttention.replaces(m) for m in model.modules()):
        return model
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    clone = copy.deepcopy(model, memo)
    for module in list(clone.modules()):
        for name, child in list(module.named_children()):
            if _BatchFirstAttention.replaces(child):
                setattr(module, name, _BatchFirstAttention(child))
    return clone


def example_images(model: nn.Module, batch: int = 2) -> Tensor:
    """A random normalized batch ``[batch, 3, H, W]`` that ``model`` can trace through.

    ``H`` and ``W`` differ (so the tracer cannot confuse the two dimensions) and give a feature
    map of at least 9 x 11 cells, and at least ``num_queries`` cells (a two-stage model picks its
    queries among them). The batch is 2, not 1: an example dimension of size 1 would be
    specialized by the tracer instead of kept dynamic.
    """
    stride = int(getattr(model.backbone, "stride", 32))
    cells_h = max(9, math.isqrt(int(model.num_queries)) + 1)
    h, w = cells_h * stride, (cells_h + 2) * stride
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    return torch.randn(batch, 3, h, w, generator=generator).to(device)


def _dynamic_shapes() -> dict[str, dict[int, Any]]:
    """Batch, height and width dynamic; ``Dim.DYNAMIC`` lets the tracer find their ranges itself
    (the least image side depends on the backbone's stride, the largest on a learned encoding's table)."""
    if not hasattr(torch.export.Dim, "DYNAMIC"):
        raise RuntimeError(f"export needs torch >= 2.6 (torch.export.Dim.DYNAMIC); this is torch {torch.__version__}")
    dyn = torch.export.Dim.DYNAMIC
    return {INPUT_NAMES[0]: {0: dyn, 2: dyn, 3: dyn}}


def export_program(model: nn.Module, example: Optional[Tensor] = None) -> torch.export.ExportedProgram:
    """Trace an eval-mode model (a DETR of any family, or an RT-DETR) with :func:`torch.export.export`,
    batch, height and width dynamic.

    ``example``: the batch to trace with (default :func:`example_images`). Run the result with
    ``program.module()(images)``, which returns ``(pred_logits, pred_boxes)``.
    """
    model = _check_model(model)
    if example is None:
        example = example_images(model)
    _check_images(example)
    graph = InferenceGraph(_traceable(model)).eval()
    try:
        with torch.no_grad():
            program = torch.export.export(graph, (example,), dynamic_shapes=_dynamic_shapes())
    except GuardOnDataDependentSymNode as e:
        raise ValueError(f"{type(model).__name__} cannot be exported: {_data_dependent_cause(e)}") from e
    _check_stays_dynamic(program, model, example)
    logger.info("traced %s: input ranges %s", type(model).__name__, program.range_constraints)
    return program


def _data_dependent_cause(error: Exception) -> str:
    """One line for a trace that stopped where the model reads a tensor's values as Python numbers
    (``.tolist()``, ``int(t)``, ``if t.any()``): the tracer has symbolic sizes, not values, there."""
    frames = [f for f in re.findall(r'File "([^"]+)", line (\d+), in (\w+)', str(error))
              if f"{os.sep}torch{os.sep}" not in f[0]]  # the model's line, not torch's
    where = f" ({Path(frames[-1][0]).name}:{frames[-1][1]} in {frames[-1][2]})" if frames else ""
    return f"its code reads a tensor's values as Python numbers{where}, which torch.export cannot trace"


def _check_stays_dynamic(program: torch.export.ExportedProgram, model: nn.Module, example: Tensor) -> None:
    """Run the program once at another image size, so a graph fixed to the example's size fails here.

    A model that turns a size into a Python number (``int(x.shape[-1])``) lets the tracer keep the
    input dynamic but records a guard on a size derived from it; such a program then refuses every
    other size at run time, far from the cause. One small forward pass finds it at export time.
    """
    stride = int(getattr(model.backbone, "stride", 32))
    other = torch.randn(
        1, 3, example.shape[2] + stride, example.shape[3] + 2 * stride, generator=torch.Generator().manual_seed(1)
    ).to(example.device)
    try:
        with torch.no_grad():
            program.module()(other)
    except (AssertionError, RuntimeError) as e:  # a failed guard (AssertionError in torch 2.14)
        raise ValueError(
            f"the exported graph only accepts the example's size {tuple(example.shape[2:])}: the model code fixes a "
            f"size during tracing ({str(e).strip().splitlines()[0][:200]})"
        ) from e


def _check_images(images: Any) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"example images must be a Tensor [B, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"example images must be a float tensor [B, 3, H, W], got {images.dtype} {list(images.shape)}")
    if images.shape[0] < 2:
        raise ValueError("example images need a batch of at least 2 (a batch of 1 would be traced as fixed)")


def _write_atomically(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then rename it to ``path``.

    The folder must exist (a typo in it should fail, not create a new tree); a crash in the
    middle leaves any previous file at ``path`` as it was.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder not found: {path.parent}")
    if path.is_dir():
        raise IsADirectoryError(f"output path is a directory, expected a file: {path}")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


Traced = Union[nn.Module, torch.export.ExportedProgram]


def _program(model: Traced, example: Optional[Tensor]) -> torch.export.ExportedProgram:
    """``model`` itself if it is already traced, else its :func:`export_program`."""
    if isinstance(model, torch.export.ExportedProgram):
        return model
    return export_program(model, example)


def export_torch(model: Traced, path: PathLike, example: Optional[Tensor] = None) -> Path:
    """Save the :func:`export_program` of ``model`` (or a program made before) to ``path`` (``.pt2``, atomically).

    Load it with ``torch.export.load(path).module()``; it needs torch, not this package.
    """
    program = _program(model, example)
    return _write_atomically(path, lambda tmp: torch.export.save(program, tmp))


def export_onnx(model: Traced, path: PathLike, opset: int = ONNX_OPSET, example: Optional[Tensor] = None) -> Path:
    """Write ``model`` as an ONNX file (atomically): input ``images``, outputs ``pred_logits``, ``pred_boxes``.

    Batch, height and width are dynamic. ``torch.onnx.export(..., dynamo=True)`` translates the
    :func:`export_program` of the model; pass a program made before to write both formats from one
    trace. ``opset`` must be 17 or later.
    """
    if not isinstance(opset, int) or opset < _MIN_OPSET:
        raise ValueError(f"opset must be an int >= {_MIN_OPSET}, got {opset!r}")
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; fail with a clear message)
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript") from e
    program = _program(model, example)
    onnx_program = _translate_to_onnx(program, opset, optimize=True)
    problem = _onnx_graph_problem(onnx_program.model_proto)
    if problem is not None:
        # onnxscript's graph optimizer can leave a node whose input it removed (seen on Deformable
        # DETR's inverse sigmoid, torch 2.14): the unoptimized translation computes the same thing
        logger.warning("the optimized ONNX graph is invalid (%s); writing the unoptimized translation", problem)
        onnx_program = _translate_to_onnx(program, opset, optimize=False)
        problem = _onnx_graph_problem(onnx_program.model_proto)
        if problem is not None:
            raise ValueError(f"the ONNX translation of this model is not a valid graph: {problem}")
    return _write_atomically(path, lambda tmp: _save_onnx_with_named_axes(onnx_program, tmp))


def _translate_to_onnx(program: torch.export.ExportedProgram, opset: int, optimize: bool) -> Any:
    """``torch.onnx.export`` of a traced program (``optimize``: onnxscript's graph optimizer)."""
    with torch.no_grad(), _quiet_constant_folding():
        return torch.onnx.export(
            program,
            program.example_inputs[0],
            dynamo=True,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            verbose=False,
            optimize=optimize,
        )


def _onnx_graph_problem(proto: Any) -> Optional[str]:
    """``None`` for a graph the ONNX checker accepts, else the first line of what it rejects."""
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        return str(e).strip().splitlines()[0][:200]
    return None


def _save_onnx_with_named_axes(onnx_program: Any, path: Path) -> None:
    """Save, then name the symbolic sizes ``batch``, ``height``, ``width`` instead of the tracer's
    ``s14``, ``s54``... (in inputs, outputs and intermediate shapes alike), so a deployment tool
    shows what each dynamic axis is."""
    import onnx

    onnx_program.save(path, external_data=False)
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim  # images [B, 3, H, W]
    rename = {dims[i].dim_param: name for i, name in ((0, "batch"), (2, "height"), (3, "width")) if dims[i].dim_param}
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
    onnx.save(proto, str(path))


@contextlib.contextmanager
def _quiet_constant_folding() -> Iterator[None]:
    """Hide onnxscript's optimizer notices ("Skipping constant folding for op Split ..."), one per
    attention layer: the split of ``in_proj_weight`` into q, k, v stays a node, which is harmless."""
    folding = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = folding.level
    folding.setLevel(logging.ERROR)
    try:
        yield
    finally:
        folding.setLevel(level)


def _load_model(src: Union[nn.Module, PathLike, Mapping[str, Any]]) -> nn.Module:
    if isinstance(src, nn.Module):
        return src
    from .checkpoint import model_from_checkpoint

    return model_from_checkpoint(src).eval()


def export_graph(
    src: Union[nn.Module, PathLike, Mapping[str, Any]],
    out: PathLike,
    format: str = "onnx",
    opset: int = ONNX_OPSET,
) -> Path:
    """Export a model, or the model of a checkpoint, to ``out`` as ``format`` (one of :data:`FORMATS`).

    What ``python -m detr_tutorial export --checkpoint C --format F --out PATH`` runs. A
    checkpoint's model is rebuilt from its stored config and put in eval mode; a model passed
    directly must already be in eval mode.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if not out.parent.is_dir():  # before the (slow) export, not after it
        raise FileNotFoundError(f"output folder not found: {out.parent}")
    model = _load_model(src)
    if format == "onnx":
        return export_onnx(model, out, opset=opset)
    if format == "torch-export":
        return export_torch(model, out)
    with warnings.catch_warnings():
        # torch 2.10+ calls TorchScript deprecated; the user asked for it by name
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        scripted = script_model(model)
        return _write_atomically(out, lambda tmp: torch.jit.save(scripted, str(tmp)))


# ----------------------------------------------------------------------------- TorchScript
def script_model(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` a DETR of the paper's family (:class:`ScriptableDETR`), or raise a
    ``ValueError`` that names the options in the way (:func:`scripting_blockers`; for an RT-DETR,
    ``the 'rtdetr' family (RTDETR)``).

    ``torch.export`` (:func:`export_torch`, :func:`export_onnx`) handles every family and is what
    torch recommends now; TorchScript
    is here for deployments that still load TorchScript files, as the official repository's
    ``test_all.py`` scripts its model.
    """
    model = _check_model(model)
    blockers = scripting_blockers(model)
    if blockers:  # before torch.jit.script, whose deprecation warning would precede the message
        raise scripting_error(blockers)
    return torch.jit.script(model)  # DETR.__prepare_scriptable__ hands over ScriptableDETR
