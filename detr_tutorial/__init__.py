"""``detr_tutorial``: DETR (DEtection TRansformer) built from scratch, the companion of the book.

Importing the package builds nothing and downloads nothing.

>>> import detr_tutorial as dt
>>> model = dt.build_model("detr-tiny", num_classes=3)
"""
from . import box_ops
from .config import PRESETS, DETRConfig, get_config
from .criterion import SetCriterion
from .families import FAMILIES, build_criterion, build_model, build_postprocess
from .matcher import HungarianMatcher, build_matcher
from .detect import predict
from .models import DETR, Backbone, MSDeformAttn, PostProcess, Transformer, ms_deform_attn
from .nested import NestedTensor, nested_tensor_from_tensor_list
from .pretrained import COCO_CLASSES, convert_official_state_dict, from_official, load_official_state_dict

__version__ = "0.1.0"

# Training, checkpoints and evaluation import the data sets and pycocotools: they load on first use,
# so that `import detr_tutorial` stays light.
_LAZY = {
    "train": ("train", "train"),
    "Trainer": ("trainer", "Trainer"),
    "Recipe": ("recipes", "Recipe"),
    "RECIPES": ("recipes", "RECIPES"),
    "get_recipe": ("recipes", "get_recipe"),
    "train_one_epoch": ("engine", "train_one_epoch"),
    "evaluate": ("engine", "evaluate"),
    "plot_log": ("runlog", "plot_log"),
    "load_checkpoint": ("checkpoint", "load_checkpoint"),
    "model_from_checkpoint": ("checkpoint", "model_from_checkpoint"),
    "export_model": ("checkpoint", "export_model"),
    "load_shipped_model": ("checkpoint", "load_shipped_model"),
    "export_graph": ("export", "export_graph"),
    "export_onnx": ("export", "export_onnx"),
    "export_torch": ("export", "export_torch"),
    "script_model": ("export", "script_model"),
    "benchmark_results": ("stored_results", "benchmark_results"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "box_ops",
    "PRESETS",
    "DETRConfig",
    "get_config",
    "build_model",
    "FAMILIES",
    "build_postprocess",
    "DETR",
    "Backbone",
    "Transformer",
    "MSDeformAttn",
    "ms_deform_attn",
    "PostProcess",
    "predict",
    "HungarianMatcher",
    "build_matcher",
    "SetCriterion",
    "build_criterion",
    "NestedTensor",
    "nested_tensor_from_tensor_list",
    "COCO_CLASSES",
    "convert_official_state_dict",
    "load_official_state_dict",
    "from_official",
    *_LAZY,
]
