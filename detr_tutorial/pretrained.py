"""Official DETR checkpoints (facebookresearch/detr) in this package's model.

The official code nests the trunk and the position encoding in a ``Joiner`` (``backbone.0`` and
``backbone.1``) and calls the decoder's cross-attention ``multihead_attn``. Our model names them
``backbone``, ``position_embedding`` and ``cross_attn``; everything else has the same name and
layout. Converting is therefore a pure renaming: no tensor is changed, none is dropped, and any
key that does not fit is reported instead of being ignored.

Official Deformable DETR checkpoints (fundamentalvision/Deformable-DETR) load the same way into a
model of the ``"deformable"`` family: only the trunk prefix differs (``backbone.0.body.``); the
duplicated head keys of its box-refinement and two-stage variants
(``transformer.decoder.bbox_embed.*``, ``transformer.decoder.class_embed.*``) are the same
modules here, so they load as they are.

Official RT-DETR checkpoints (lyuwenyu/RT-DETR, ``rtdetr_pytorch``) load into a model of the
``"rtdetr"`` family key for key: its modules carry the official names (``backbone.*``,
``encoder.*``, ``decoder.*``); the released files hold ``{"ema": {"module": ...}}`` or
``{"model": ...}``, both are read.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from .families import build_model
from .families.deformable import DeformableDETR
from .families.rtdetr import RTDETR
from .models.detr import DETR

__all__ = [
    "COCO_CLASSES",
    "OFFICIAL_URLS",
    "convert_official_state_dict",
    "load_official_state_dict",
    "from_official",
    "infer_official_preset",
    "infer_official_deformable_preset",
    "infer_official_rtdetr_preset",
]

logger = logging.getLogger(__name__)

_RTDETR_RELEASES = "https://github.com/lyuwenyu/storage/releases/download/v0.1/"
_DRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"

#: Download addresses of the official COCO detection checkpoints (from the official READMEs).
OFFICIAL_URLS: dict[str, str] = {
    "detr-r50": "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth",
    "detr-r50-dc5": "https://dl.fbaipublicfiles.com/detr/detr-r50-dc5-f0fb7ef5.pth",
    "detr-r101": "https://dl.fbaipublicfiles.com/detr/detr-r101-2c7b67e5.pth",
    "detr-r101-dc5": "https://dl.fbaipublicfiles.com/detr/detr-r101-dc5-a2e86def.pth",
    # Deformable DETR's README links Google Drive files (r50_deformable_detr, + iterative bounding box
    # refinement, ++ two-stage); this address downloads them directly (no virus-scan page)
    "deformable-detr": _DRIVE.format("1nDWZWHuRwtwGden77NLM9JoWe-YisJnA"),
    "deformable-detr-refine": _DRIVE.format("1JYKyRYzUH7uo9eVfDaVCiaIGZb5YTCuI"),
    "deformable-detr-two-stage": _DRIVE.format("15I03A7hNTpwuLNdfuEmW9_taZMNVssEp"),
    # rtdetr_pytorch/README.md: the COCO models converted from PaddlePaddle (80 classes)
    "rtdetr-r18": _RTDETR_RELEASES + "rtdetr_r18vd_dec3_6x_coco_from_paddle.pth",
    "rtdetr-r50": _RTDETR_RELEASES + "rtdetr_r50vd_6x_coco_from_paddle.pth",
}

#: The 91 COCO category ids as the official models index them ("N/A": ids unused by COCO 2017).
COCO_CLASSES: list[str] = [
    "N/A", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack",
    "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet",
    "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]  # fmt: skip

# (official pattern, our replacement); applied in order, first match wins
_RENAMES = [
    (re.compile(r"^backbone\.0\.body\."), "backbone.body."),
    (re.compile(r"^backbone\.1\.(row_embed|col_embed)\."), r"position_embedding.\1."),
    (re.compile(r"^(transformer\.decoder\.layers\.\d+)\.multihead_attn\."), r"\1.cross_attn."),
    (re.compile(r"^(transformer\.(encoder|decoder)\.|input_proj\.|query_embed\.|class_embed\.|bbox_embed\.)"), r"\1"),
]


def _unwrap(state_dict: dict[str, Any]) -> dict[str, Tensor]:
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        return state_dict["model"]
    return state_dict


def _rename_keys(sd: dict[str, Tensor], rename: Callable[[str], Optional[str]], model: str) -> dict[str, Tensor]:
    """``{rename(key): value}`` without BatchNorm's ``num_batches_tracked`` (frozen BN has none);
    ``ValueError`` listing the keys ``rename`` maps to ``None`` (no part of ``model``)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        ours = rename(key)
        if ours is None:
            unknown.append(key)
        else:
            out[ours] = value
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) of the checkpoint are not part of a {model} model: {unknown[:10]}"
            + (" ..." if len(unknown) > 10 else "")
        )
    return out


def _detr_key(key: str) -> Optional[str]:
    for pattern, repl in _RENAMES:
        if pattern.search(key):
            return pattern.sub(repl, key)
    return None


def convert_official_state_dict(state_dict: dict[str, Any]) -> dict[str, Tensor]:
    """Rename an official DETR state dict (or a checkpoint ``{"model": ...}``) to our key names.

    Raises ``ValueError`` listing every key that belongs to no known part of DETR (for example a
    segmentation head, or a checkpoint of another model altogether).
    """
    return _rename_keys(_unwrap(state_dict), _detr_key, "DETR detection")


def infer_official_preset(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Read the architecture off a (official or converted) state dict: preset name and sizes.

    Dilation (DC5) changes no weight, so ``detr-r50`` and ``detr-r50-dc5`` are told apart only by
    the name the caller gives.
    """
    sd = _unwrap(state_dict)
    sd = {k.replace("backbone.0.body.", "backbone.body."): v for k, v in sd.items()}
    layer3_blocks = {int(m.group(1)) for k in sd if (m := re.match(r"backbone\.body\.layer3\.(\d+)\.", k))}
    bottleneck = any(".conv3." in k for k in sd if k.startswith("backbone.body.layer1."))
    depth = {(6, True): "resnet50", (23, True): "resnet101", (6, False): "resnet34", (2, False): "resnet18"}.get(
        (len(layer3_blocks), bottleneck)
    )
    enc = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.encoder\.layers\.(\d+)\.", k))}
    dec = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.decoder\.layers\.(\d+)\.", k))}
    info: dict[str, Any] = {
        "backbone": depth,
        "num_classes": int(sd["class_embed.weight"].shape[0]) - 1 if "class_embed.weight" in sd else None,
        "hidden_dim": int(sd["query_embed.weight"].shape[1]) if "query_embed.weight" in sd else None,
        "num_queries": int(sd["query_embed.weight"].shape[0]) if "query_embed.weight" in sd else None,
        "enc_layers": len(enc),
        "dec_layers": len(dec),
    }
    if "transformer.encoder.layers.0.linear1.weight" in sd:
        info["dim_feedforward"] = int(sd["transformer.encoder.layers.0.linear1.weight"].shape[0])
    elif "transformer.decoder.layers.0.linear1.weight" in sd:
        info["dim_feedforward"] = int(sd["transformer.decoder.layers.0.linear1.weight"].shape[0])
    info["position_embedding"] = "learned" if any(k.startswith(("backbone.1.", "position_embedding.")) for k in sd) else "sine"
    paper = {"hidden_dim": 256, "num_queries": 100, "enc_layers": 6, "dec_layers": 6, "dim_feedforward": 2048}
    if depth in ("resnet50", "resnet101") and all(info.get(k) == v for k, v in paper.items()):
        info["preset"] = "detr-r50" if depth == "resnet50" else "detr-r101"
    else:
        info["preset"] = None
    return info


def _describe(info: dict[str, Any]) -> str:
    if info.get("preset"):
        return f"preset {info['preset']!r} (or its -dc5 variant) with num_classes={info['num_classes']}"
    keys = ("backbone", "hidden_dim", "enc_layers", "dec_layers", "dim_feedforward", "num_queries", "num_classes", "position_embedding")
    return "dt.build_model('detr-tiny', " + ", ".join(f"{k}={info.get(k)!r}" for k in keys) + ")"


def load_official_state_dict(model: nn.Module, state_dict: dict[str, Any]) -> None:
    """Load an official DETR state dict into ``model`` (in place), strictly.

    Missing keys, leftover keys and shape mismatches are all errors; the message names the preset
    (or the ``build_model`` call) whose architecture fits the checkpoint. A model of the
    ``"deformable"`` family reads fundamentalvision/Deformable-DETR checkpoints instead.
    """
    if isinstance(model, DeformableDETR):
        _load_deformable(model, state_dict)
        return
    if isinstance(model, RTDETR):
        _load_rtdetr(model, state_dict)
        return
    converted = convert_official_state_dict(state_dict)
    own = model.state_dict()
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    mismatched = sorted(k for k in set(own) & set(converted) if tuple(own[k].shape) != tuple(converted[k].shape))
    if missing or unexpected or mismatched:
        info = infer_official_preset(converted)
        details = []
        if mismatched:
            k = mismatched[0]
            details.append(
                f"{len(mismatched)} shape mismatch(es), e.g. {k}: checkpoint {list(converted[k].shape)} vs model {list(own[k].shape)}"
            )
        if missing:
            details.append(f"{len(missing)} key(s) missing from the checkpoint, e.g. {missing[:3]}")
        if unexpected:
            details.append(f"{len(unexpected)} key(s) the model does not have, e.g. {unexpected[:3]}")
        hint = ""
        if mismatched == ["class_embed.bias", "class_embed.weight"] and not missing and not unexpected:
            hint = (
                f" Only the class head differs: load into a model with num_classes={info['num_classes']}, then call "
                f"model.reset_class_head(your_num_classes) to fine-tune on your classes."
            )
        raise ValueError(
            "checkpoint does not fit this model: " + "; ".join(details) + f". It fits {_describe(info)}." + hint
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in converted.items()}, strict=True)


_DEFORMABLE_PREFIXES = ("input_proj.", "transformer.", "query_embed.", "class_embed.", "bbox_embed.")


def _deformable_key(key: str) -> Optional[str]:
    if key.startswith("backbone.0.body."):
        return "backbone.body." + key[len("backbone.0.body."):]
    return key if key.startswith(_DEFORMABLE_PREFIXES) else None


def convert_official_deformable_state_dict(state_dict: dict[str, Any]) -> dict[str, Tensor]:
    """Rename an official Deformable DETR state dict (or checkpoint) to our keys: the trunk only.

    Raises ``ValueError`` listing the keys that belong to no part of Deformable DETR.
    """
    return _rename_keys(_unwrap(state_dict), _deformable_key, "Deformable DETR")


def infer_official_deformable_preset(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The variant and sizes of an official (or converted) Deformable DETR state dict.

    ``preset`` is ``deformable-detr``, ``-refine`` or ``-two-stage``: two-stage checkpoints hold
    ``transformer.enc_output``, refinement ones separate per-layer heads
    (``transformer.decoder.bbox_embed``).
    """
    sd = {k.replace("backbone.0.body.", "backbone.body."): v for k, v in _unwrap(state_dict).items()}
    two_stage = "transformer.enc_output.weight" in sd
    refine = any(k.startswith("transformer.decoder.bbox_embed.") for k in sd)
    enc = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.encoder\.layers\.(\d+)\.", k))}
    dec = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.decoder\.layers\.(\d+)\.", k))}
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"backbone\.body\.layer3\.(\d+)\.", k))}
    bottleneck = any(".conv3." in k for k in sd if k.startswith("backbone.body.layer1."))
    info: dict[str, Any] = {
        "preset": "deformable-detr" + ("-two-stage" if two_stage else "-refine" if refine else ""),
        "with_box_refine": refine,
        "two_stage": two_stage,
        "backbone": {(6, True): "resnet50", (23, True): "resnet101", (6, False): "resnet34", (2, False): "resnet18"}.get(
            (len(blocks), bottleneck)
        ),
        "num_classes": int(sd["class_embed.0.weight"].shape[0]) if "class_embed.0.weight" in sd else None,
        "hidden_dim": int(sd["transformer.level_embed"].shape[1]) if "transformer.level_embed" in sd else None,
        "num_feature_levels": int(sd["transformer.level_embed"].shape[0]) if "transformer.level_embed" in sd else None,
        "enc_layers": len(enc),
        "dec_layers": len(dec),
    }
    if "query_embed.weight" in sd:
        info["num_queries"] = int(sd["query_embed.weight"].shape[0])
    return info


def _load_deformable(model: DeformableDETR, state_dict: dict[str, Any]) -> None:
    """:func:`load_official_state_dict` for the deformable family (strict; errors name the variant)."""
    converted = convert_official_deformable_state_dict(state_dict)
    own = model.state_dict()
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    mismatched = sorted(k for k in set(own) & set(converted) if tuple(own[k].shape) != tuple(converted[k].shape))
    if missing or unexpected or mismatched:
        info = infer_official_deformable_preset(converted)
        details = []
        if mismatched:
            k = mismatched[0]
            details.append(f"{len(mismatched)} shape mismatch(es), e.g. {k}: checkpoint "
                           f"{list(converted[k].shape)} vs model {list(own[k].shape)}")
        if missing:
            details.append(f"{len(missing)} key(s) missing from the checkpoint, e.g. {missing[:3]}")
        if unexpected:
            details.append(f"{len(unexpected)} key(s) the model does not have, e.g. {unexpected[:3]}")
        sizes = ", ".join(f"{k}={v!r}" for k, v in info.items() if k not in ("preset", "with_box_refine", "two_stage"))
        raise ValueError(
            "checkpoint does not fit this model: " + "; ".join(details)
            + f". It is an official {info['preset']!r} checkpoint (with_box_refine={info['with_box_refine']}, "
            f"two_stage={info['two_stage']}): build it with dt.build_model({info['preset']!r}, {sizes})."
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in converted.items()}, strict=True)


def _unwrap_rtdetr(state_dict: dict[str, Any]) -> dict[str, Tensor]:
    """The weights of an official RT-DETR file: ``{"ema": {"module": sd}}`` (the released ones, EMA
    weights), ``{"model": sd}`` (training checkpoints, the reference) or a bare state dict."""
    ema = state_dict.get("ema")
    if isinstance(ema, dict) and isinstance(ema.get("module"), dict):
        return ema["module"]
    return _unwrap(state_dict)


def infer_official_rtdetr_preset(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The sizes of an official RT-DETR state dict: ``backbone`` (``presnet18`` .. ``presnet101``),
    ``num_classes``, ``hidden_dim`` and ``dec_layers`` (``num_queries`` is not in a state dict)."""
    sd = _unwrap_rtdetr(state_dict)
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"backbone\.res_layers\.2\.blocks\.(\d+)\.", k))}
    bottleneck = any(".branch2c." in k for k in sd)
    depth = {(2, False): 18, (6, False): 34, (6, True): 50, (23, True): 101}.get((len(blocks), bottleneck))
    dec = {int(m.group(1)) for k in sd if (m := re.match(r"decoder\.decoder\.layers\.(\d+)\.", k))}
    head = sd.get("decoder.enc_score_head.weight")
    return {"backbone": None if depth is None else f"presnet{depth}",
            "num_classes": None if head is None else int(head.shape[0]),
            "hidden_dim": None if head is None else int(head.shape[1]), "dec_layers": len(dec)}


def _load_rtdetr(model: RTDETR, state_dict: dict[str, Any]) -> None:
    """:func:`load_official_state_dict` for the rtdetr family: the same keys, strict. A trunk with
    frozen BatchNorm has no ``num_batches_tracked``: those entries are the only ones skipped."""
    sd = _unwrap_rtdetr(state_dict)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or mismatched:
        details = []
        if mismatched:
            k = mismatched[0]
            details.append(f"{len(mismatched)} shape mismatch(es), e.g. {k}: checkpoint {list(sd[k].shape)} "
                           f"vs model {list(own[k].shape)}")
        if missing:
            details.append(f"{len(missing)} key(s) missing from the checkpoint, e.g. {missing[:3]}")
        if unexpected:
            details.append(f"{len(unexpected)} key(s) the model does not have, e.g. {unexpected[:3]}")
        sizes = ", ".join(f"{k}={v!r}" for k, v in infer_official_rtdetr_preset(sd).items())
        raise ValueError("checkpoint does not fit this model: " + "; ".join(details)
                         + f". It is an official RT-DETR checkpoint with {sizes}.")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def from_official(
    name: str = "detr-r50",
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    map_location: Union[str, torch.device] = "cpu",
    progress: bool = True,
) -> DETR:
    """Build ``name`` with the 91 COCO classes and load the official weights.

    With ``checkpoint`` (a local ``.pth``) nothing is downloaded; otherwise the official file is
    fetched with :func:`torch.hub.load_state_dict_from_url` (cached under ``~/.cache/torch``).
    The model is returned in eval mode.
    """
    if name not in OFFICIAL_URLS:
        raise ValueError(f"no official checkpoint named {name!r}; choose one of {sorted(OFFICIAL_URLS)}")
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"official checkpoint {os.fspath(checkpoint)!r} not found")
        from .checkpoint import CheckpointError, read_weights_file

        state = read_weights_file(checkpoint, map_location, what="official checkpoint")
        if not isinstance(state, dict):
            raise CheckpointError(
                f"official checkpoint {os.fspath(checkpoint)} holds a {type(state).__name__}, expected a dict"
            )
    elif name.startswith("rtdetr"):  # release assets: no hash in the file name
        state = torch.hub.load_state_dict_from_url(OFFICIAL_URLS[name], map_location=map_location, progress=progress)
    elif name.startswith("deformable"):  # Drive addresses carry no file name nor hash
        state = torch.hub.load_state_dict_from_url(
            OFFICIAL_URLS[name], map_location=map_location, progress=progress, file_name=f"{name}-official.pth"
        )
    else:
        state = torch.hub.load_state_dict_from_url(
            OFFICIAL_URLS[name], map_location=map_location, progress=progress, check_hash=True
        )
    if name.startswith("rtdetr"):  # RT-DETR's heads score the 80 COCO categories (label i: the i-th id in use)
        names = [n for n in COCO_CLASSES if n != "N/A"]
        model = build_model(name, num_classes=80, class_names=names, pretrained_backbone=False)
    else:
        model = build_model(name, num_classes=91, class_names=list(COCO_CLASSES), pretrained_backbone=False)
    load_official_state_dict(model, state)
    logger.info("loaded official %s weights", name)
    return model.eval()
