"""Deformable DETR at image sizes that are not multiples of its strides (``exact_extent``).

With the official rule a level's valid extent is the count of cells the image touches: a 146-px
image fills 19 stride-8 cells (152 px), so every normalized position, reference point and
two-stage proposal is stretched by 152/146. A model trained at multiples of 8 lost most of its
mAP at such sizes (benchmarks/RESULTS.md, "Notes: image size"). ``exact_extent=True`` uses the
image's size divided by the stride instead; the official rule stays the default (the official
checkpoints and the reference tests use it).
"""
from __future__ import annotations

import pytest
import torch

import detr_tutorial as dt
from detr_tutorial.nested import to_nested

TINY = dict(num_classes=3, backbone="smallcnn", backbone_norm="bn", backbone_stride=16, pretrained_backbone=False,
            hidden_dim=32, nheads=2, enc_layers=1, dec_layers=1, dim_feedforward=64, num_queries=5, dropout=0.0,
            num_feature_levels=3)


def tiny(exact: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return dt.build_model("deformable-detr-two-stage", exact_extent=exact, **TINY).eval()


def intermediates(model, images):
    with torch.no_grad():
        return model.forward_with_intermediates(images)


def test_the_official_rule_is_the_default():
    assert dt.get_config("deformable-detr").exact_extent is False
    assert tiny(False).level_extents(to_nested([torch.rand(3, 146, 146)])) is None


def test_each_level_has_the_trunks_stride_then_doubles():
    assert tiny(True).level_strides == [8, 16, 32]


@pytest.mark.parametrize("side", [128, 160])
def test_at_multiples_of_the_coarsest_stride_both_rules_give_the_same_outputs(side):
    image = [torch.rand(3, side, side)]
    official, exact = intermediates(tiny(False), image), intermediates(tiny(True), image)
    torch.testing.assert_close(exact[0]["pred_boxes"], official[0]["pred_boxes"])
    torch.testing.assert_close(exact[0]["pred_logits"], official[0]["pred_logits"])
    torch.testing.assert_close(exact[1]["valid_ratios"], official[1]["valid_ratios"])


def test_a_146_px_image_holds_18_25_of_its_19_stride_8_cells():
    model = tiny(True)
    extents = model.level_extents(to_nested([torch.rand(3, 146, 120)]))
    # (h, w) in cells per level: 146 / 8, 120 / 8; 146 / 16, 120 / 16; 146 / 32, 120 / 32
    torch.testing.assert_close(extents[0], torch.tensor([[18.25, 15.0]]))
    torch.testing.assert_close(extents[1], torch.tensor([[9.125, 7.5]]))
    torch.testing.assert_close(extents[2], torch.tensor([[4.5625, 3.75]]))
    _, t = intermediates(model, [torch.rand(3, 146, 120)])
    # maps of 19 x 15, 10 x 8 and 5 x 4 cells: ratios (w, h) = extent / cells
    expected = torch.tensor([[[15 / 15, 18.25 / 19], [7.5 / 8, 9.125 / 10], [3.75 / 4, 4.5625 / 5]]])
    torch.testing.assert_close(t["valid_ratios"], expected)


def test_proposal_centres_are_the_cells_true_fractions_of_the_image():
    """Cell ``i`` of a stride-``s`` map is centred on pixel ``(i + 0.5) * s``: its proposal's centre is
    that pixel over the image's size, whatever the size."""
    model = tiny(True)
    memory = torch.randn(1, 19 * 19, 32)
    shapes = torch.tensor([[19, 19]])
    mask = torch.zeros(1, 19 * 19, dtype=torch.bool)
    extents = [torch.tensor([[146 / 8, 146 / 8]])]
    _, props = model.transformer.encoder_proposals(memory, mask, shapes, extents)
    centres = props[0, :, :2].sigmoid().view(19, 19, 2)  # finite where the proposal is inside (0.01, 0.99)
    pixel = (torch.arange(19) + 0.5) * 8 / 146
    inside = pixel < 0.99
    torch.testing.assert_close(centres[0, inside, 0], pixel[inside])  # x of row 0
    torch.testing.assert_close(centres[inside, 0, 1], pixel[inside])  # y of column 0
    assert torch.isinf(props[0].view(19, 19, 4)[0, ~inside]).all()  # the last cell's centre is off the image
    _, official = model.transformer.encoder_proposals(memory, mask, shapes)
    torch.testing.assert_close(official[0, :18, 0].sigmoid(), (torch.arange(18) + 0.5) / 19)  # stretched: / 19 cells


def test_sine_positions_code_each_cell_centre_at_its_fraction_of_the_image():
    """The first frequency's channels are ``sin, cos`` of ``2 pi`` times the centre's fraction of the
    image: ``(i + 0.5) / 18.25`` for row ``i`` of a 146-px image at stride 8 (y first, then x)."""
    model = tiny(True)
    mask = torch.zeros(1, 19, 19, dtype=torch.bool)
    pos = model.position_embedding(mask, torch.tensor([[18.25, 15.0]]))  # [1, 32, 19, 19]
    features = pos.shape[1] // 2
    rows = 2 * torch.pi * (torch.arange(19) + 0.5) / 18.25
    cols = 2 * torch.pi * (torch.arange(19) + 0.5) / 15.0
    torch.testing.assert_close(pos[0, 0, :, 3], rows.sin(), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[0, 1, :, 3], rows.cos(), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[0, features, 3, :], cols.sin(), atol=1e-5, rtol=0)
    official = model.position_embedding(mask)  # the official rule: / 19 cells
    torch.testing.assert_close(official[0, 0, :, 3], (2 * torch.pi * (torch.arange(19) + 0.5) / 19).sin(),
                               atol=1e-5, rtol=0)


def test_a_padded_batch_uses_each_images_own_size():
    model = tiny(True)
    nested = to_nested([torch.rand(3, 146, 146), torch.rand(3, 100, 120)])
    extents = model.level_extents(nested)
    torch.testing.assert_close(extents[0], torch.tensor([[146 / 8, 146 / 8], [100 / 8, 120 / 8]]))
    out, t = intermediates(model, nested)
    assert torch.isfinite(out["pred_boxes"]).all()
    assert (t["valid_ratios"] <= 1).all() and (t["valid_ratios"] > 0).all()


def test_the_option_belongs_to_the_deformable_family():
    with pytest.raises(ValueError, match="exact_extent=True belongs to family 'deformable'"):
        dt.get_config("detr-r50", exact_extent=True)


def test_the_shapes_deformable_recipe_uses_the_exact_extent():
    assert dt.get_recipe("shapes-deformable").model_overrides["exact_extent"] is True
