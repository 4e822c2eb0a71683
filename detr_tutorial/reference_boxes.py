"""Does the decoder do the boxes? The reference-box ablation.

In the families with box refinement each decoder layer starts from a *reference box* (the
previous layer's box, or a two-stage proposal for the first layer) and predicts a correction of
it. If the last layer's corrections were negligible, its boxes would be the references it was
handed, and the decoder would only pick and score proposals. :func:`reference_box_ablation`
measures that: the mAP with the model's final boxes, and with each final box replaced by the
reference box the last decoder layer started from (same scores, same classes)::

    from detr_tutorial.reference_boxes import reference_box_ablation
    reference_box_ablation(dt.load_shipped_model(), num_images=200)
    # {'AP': ..., 'AP_reference': ..., 'drop': ...}

A drop near zero means a dead box head. It applies to the conditional family and to Deformable
DETR with two-stage queries, and to RT-DETR; other models have no reference *box*
and are refused.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

__all__ = ["ReferenceBoxes", "reference_box_ablation"]


class ReferenceBoxes(nn.Module):
    """``model`` with its final boxes replaced by the reference boxes of its last decoder layer.

    The outputs are the model's (eval mode), except ``pred_boxes [B, Q, 4]``: the box each query's
    last decoder layer started from, in the same normalized image coordinates."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        family = getattr(getattr(model, "config", None), "family", None)
        if family == "conditional" and not getattr(model, "two_stage", False):
            raise ValueError("this conditional model learns reference points, not boxes: the ablation needs two_stage=True")
        if family == "deformable" and not getattr(model, "two_stage", False):
            # one-stage references are points, refined or not: only two-stage proposals are boxes
            raise ValueError("this Deformable DETR's references are points, not boxes: the ablation needs "
                             "two_stage=True (with with_box_refine=True)")
        if family not in ("conditional", "deformable", "rtdetr"):
            raise ValueError(f"a {family!r} model has no reference boxes (conditional two-stage, deformable with "
                             "box refinement or rtdetr)")
        self.model, self.family = model, family

    def forward(self, samples: Any) -> dict[str, Any]:
        if self.family == "deformable":
            out, t = self.model.forward_with_intermediates(samples)
            refs = t["init_reference"] if t["inter_references"].shape[0] < 2 else t["inter_references"][-2]
        elif self.family == "conditional":
            out, refs = self._conditional(samples)
        else:
            out, refs = self._rtdetr(samples)
        return dict(out, pred_boxes=refs.to(out["pred_boxes"].dtype))

    def _conditional(self, samples: Any) -> tuple[dict[str, Any], Tensor]:
        captured: dict[str, Tensor] = {}
        decode = self.model.decode

        def capture(*args: Any, **kwargs: Any):
            hs, references, weights = decode(*args, **kwargs)
            captured["references"] = references  # [L, B, Q, 4]: the reference each layer started from
            return hs, references, weights

        self.model.decode = capture
        try:
            out = self.model(samples)
        finally:
            del self.model.decode  # the class's method again
        return out, captured["references"][-1]

    def _rtdetr(self, samples: Any) -> tuple[dict[str, Any], Tensor]:
        decoder = self.model.decoder
        layer = decoder.decoder.layers[decoder.decoder.eval_idx]
        captured: dict[str, Tensor] = {}

        def capture(_module: nn.Module, args: tuple) -> None:
            captured["reference"] = args[1]  # [B, Q, 4]: the layer's reference boxes, on the padded canvas

        handle = layer.register_forward_pre_hook(capture)
        try:
            out, inter = self.model.forward_with_intermediates(samples)
        finally:
            handle.remove()
        refs = captured["reference"]
        return out, refs if inter["scale"] is None else refs * inter["scale"]


def reference_box_ablation(
    model: nn.Module, size: int = 128, num_images: Optional[int] = 200, config: Optional[Any] = None,
) -> dict[str, float]:
    """The shapes validation mAP at ``size`` px with the model's boxes (``AP``) and with the last
    decoder layer's reference boxes instead (``AP_reference``), and ``drop = AP - AP_reference``."""
    from .families import build_postprocess
    from .size_sweep import shapes_map_at_sizes

    model = model.eval()
    postprocess = build_postprocess(model.config)
    own = shapes_map_at_sizes(model, (size,), num_images=num_images, config=config)[size]["AP"]
    with torch.no_grad():
        ref = shapes_map_at_sizes(ReferenceBoxes(model), (size,), num_images=num_images, config=config,
                                  postprocess=postprocess)[size]["AP"]
    return {"AP": own, "AP_reference": ref, "drop": own - ref}
