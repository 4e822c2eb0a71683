"""``detr_tutorial``: DETR (DEtection TRansformer) built from scratch, the companion of the book.

Importing the package builds nothing and downloads nothing.

>>> import detr_tutorial as dt
>>> model = dt.build_model("detr-tiny", num_classes=3)
"""
from . import box_ops
from .config import PRESETS, DETRConfig, get_config
from .criterion import SetCriterion, build_criterion
from .matcher import HungarianMatcher, build_matcher
from .models import DETR, Backbone, PostProcess, Transformer, build_model, predict
from .nested import NestedTensor, nested_tensor_from_tensor_list
from .pretrained import COCO_CLASSES, convert_official_state_dict, from_official, load_official_state_dict

__version__ = "0.1.0"

__all__ = [
    "box_ops",
    "PRESETS",
    "DETRConfig",
    "get_config",
    "build_model",
    "DETR",
    "Backbone",
    "Transformer",
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
]
