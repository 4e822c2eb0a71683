"""The paper's DETR in the subset of Python that ``torch.jit.script`` compiles.

``torch.jit.script(model)`` on a :class:`~detr_tutorial.models.DETR` compiles
:class:`ScriptableDETR` (``DETR.__prepare_scriptable__`` hands it over), as the official
repository's ``test_all.py`` scripts its model; :func:`scripting_blockers` says which families
cannot be scripted and why. ``torch.export`` (``detr_tutorial.export``) handles the other families too.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .backbone import Backbone

__all__ = ["ScriptableDETR", "scripting_blockers", "scripting_error"]


class ScriptableDETR(nn.Module):
    """The paper's DETR at inference, in the subset of Python that ``torch.jit.script`` compiles.

    :class:`~detr_tutorial.models.DETR`'s ``forward`` takes a list of images or a
    ``NestedTensor`` and returns outputs of several types; TorchScript compiles neither. This
    module *shares* the model's submodules and parameters (backbone,
    position encoding, ``input_proj``, encoder, decoder layers, heads) and chains them as the
    paper's forward pass does, so its outputs are the model's own (the tests check equality).

    ``forward(images [B, 3, H, W], mask [B, H, W] or None)`` -> ``{"pred_logits", "pred_boxes"}``
    of the last decoder layer; ``mask`` marks padding pixels (True), ``None`` means none.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        blockers = scripting_blockers(model)
        if blockers:
            raise scripting_error(blockers)
        self.backbone = model.backbone
        self.position_embedding = model.position_embedding
        self.input_proj = model.input_proj
        self.encoder = model.transformer.encoder
        self.decoder_layers = model.transformer.decoder.layers
        self.decoder_norm = model.transformer.decoder.norm
        self.query_embed = model.query_embed
        self.class_embed = model.class_embed
        self.bbox_embed = model.bbox_embed

    def forward(self, images: Tensor, mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        if mask is None:
            mask = torch.zeros((images.shape[0], images.shape[2], images.shape[3]), dtype=torch.bool, device=images.device)
        trunk = self.backbone(images, mask)
        features, cell_mask = trunk[0], trunk[1]  # [B, C, h, w], [B, h, w]
        pos = self.position_embedding(cell_mask).to(features.dtype).flatten(2).transpose(1, 2)  # [B, hw, d]
        src = self.input_proj(features).flatten(2).transpose(1, 2)  # [B, hw, d]
        key_padding_mask = cell_mask.flatten(1)  # [B, hw]
        query_pos = self.query_embed.weight[None].expand(src.shape[0], -1, -1)  # [B, Q, d]
        memory, _ = self.encoder(src, key_padding_mask, pos, False)
        tgt = torch.zeros_like(query_pos)
        layers_out = []
        for layer in self.decoder_layers:
            tgt, _ = layer(tgt, memory, key_padding_mask, pos, query_pos, False)
            layers_out.append(self.decoder_norm(tgt))
        # the heads run on every layer's output, as DETR.forward does, so the last layer's numbers
        # are bit for bit the model's (a matrix product's rounding can depend on its batch shape)
        hs = torch.stack(layers_out)  # [L_dec, B, Q, d]
        logits = self.class_embed(hs.to(self.class_embed.weight.dtype))
        boxes = self.bbox_embed(hs.to(self.bbox_embed.layers[0].weight.dtype)).sigmoid()
        return {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}


def scripting_blockers(model: nn.Module) -> list[str]:
    """What keeps ``model`` from :func:`script_model` (empty: it scripts).

    The paper's family scripts: a ResNet trunk (with or without dilation), sine or learned
    positions, post- or pre-norm layers, any number of layers, heads and queries; settings that
    only change training (auxiliary losses, the focal loss) do not matter. Another family (its
    forward passes references between encoder and decoder, or, as RT-DETR, is no DETR subclass at
    all) and the small CNN trunk do not. ``model``: a DETR, or another family's model of the
    package (one with a ``config``: a :class:`~detr_tutorial.config.DETRConfig`).
    """
    from ..config import DETRConfig
    from .detr import DETR  # here: detr.py imports this module

    if not isinstance(model, DETR) and not isinstance(getattr(model, "config", None), DETRConfig):
        raise TypeError(f"expected a detr_tutorial model, got {type(model).__name__}")
    checks = [
        (type(model) is not DETR, f"the {_family_name(model)!r} family ({type(model).__name__})"),
        (not isinstance(model.backbone, Backbone), f"the {type(model.backbone).__name__} trunk"),
    ]
    return [name for used, name in checks if used]


def scripting_error(blockers: list[str]) -> ValueError:
    """The error for a model that does not script, naming its :func:`scripting_blockers` and the
    two formats that export every family, in one line (the command line prints it as it is)."""
    return ValueError(
        "torch.jit.script compiles the paper's DETR only; this model uses "
        f"{', '.join(blockers)}: export it with torch.export or ONNX instead (--format torch-export or onnx)"
    )


def _family_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return config.family if config is not None else type(model).__name__
