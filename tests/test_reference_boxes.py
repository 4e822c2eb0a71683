"""The reference-box ablation (issue: "its own decoder must do the boxes").

``ReferenceBoxes(model)`` answers with the boxes the last decoder layer started from. When that
layer's box head outputs zero corrections, its boxes *are* the references, so the two must agree;
with the head's real weights they must not.
"""
from __future__ import annotations

import pytest
import torch

import detr_tutorial as dt
from detr_tutorial.reference_boxes import ReferenceBoxes

SMALL = dict(num_classes=3, backbone="smallcnn", backbone_norm="bn", backbone_stride=16, pretrained_backbone=False,
             hidden_dim=32, dec_layers=2, num_queries=5, dropout=0.0)


def conditional():
    return dt.build_model("detr-tiny", family="conditional", nheads=2, enc_layers=1, dim_feedforward=64,
                          encoder_aux_loss=True, encoder_cell_units=True, two_stage=True, box_refine=True,
                          focal_loss=True, **SMALL), lambda m: m.bbox_embed.layers[-1]


def deformable():
    return dt.build_model("deformable-detr-two-stage", nheads=2, enc_layers=1, dim_feedforward=64,
                          num_feature_levels=2, **SMALL), lambda m: m.bbox_embed[1].layers[-1]


def rtdetr():
    return dt.build_model("rtdetr-r18", enc_nheads=2, dec_nheads=2, enc_dim_feedforward=64, dec_dim_feedforward=64,
                          num_top_queries=5, num_denoising=0, freeze_stem=None, **SMALL), \
        lambda m: m.decoder.dec_bbox_head[m.decoder.decoder.eval_idx].layers[-1]


@pytest.mark.parametrize("build", [conditional, deformable, rtdetr], ids=["conditional", "deformable", "rtdetr"])
def test_the_reference_boxes_are_the_boxes_when_the_last_box_head_is_zero(build):
    torch.manual_seed(0)
    model, last_layer = build()
    model.eval()
    images = [torch.rand(3, 112, 128), torch.rand(3, 96, 120)]  # padded batch, sizes not multiples of 32
    head = last_layer(model)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.1)  # the heads start at zero: give the last layer real corrections
        own, ablated = model(images), ReferenceBoxes(model)(images)
        assert not torch.allclose(own["pred_boxes"], ablated["pred_boxes"], atol=1e-3)
        torch.testing.assert_close(ablated["pred_logits"], own["pred_logits"])  # same scores
        head.weight.zero_()
        head.bias.zero_()
        own, ablated = model(images), ReferenceBoxes(model)(images)
    torch.testing.assert_close(ablated["pred_boxes"], own["pred_boxes"], atol=1e-5, rtol=0)


def test_the_model_is_left_as_it_was():
    torch.manual_seed(0)
    model, _ = conditional()
    model.eval()
    with torch.no_grad():
        ReferenceBoxes(model)([torch.rand(3, 96, 96)])
    assert "decode" not in vars(model)


@pytest.mark.parametrize("preset, overrides, match", [
    ("detr-tiny", {}, "'detr' model has no reference boxes"),
    ("detr-tiny", {"family": "conditional"}, "learns reference points, not boxes"),
    ("deformable-detr", {"num_feature_levels": 2}, "references are points, not boxes"),
    ("deformable-detr-refine", {"num_feature_levels": 2}, "references are points, not boxes"),
])
def test_models_without_reference_boxes_are_refused(preset, overrides, match):
    kwargs = {k: v for k, v in SMALL.items() if k != "dec_layers"}
    model = dt.build_model(preset, **kwargs, **overrides)
    with pytest.raises(ValueError, match=match):
        ReferenceBoxes(model)
