"""2-D position encodings: sine values by hand, mask awareness, learned shapes."""
import math

import pytest
import torch

from detr_tutorial.models import PositionEmbeddingLearned, PositionEmbeddingSine


def test_sine_values_by_hand_on_a_tiny_mask():
    # one image, a 2x3 feature map whose last column is padding: valid area 2x2
    mask = torch.tensor([[[False, False, True], [False, False, True]]])
    d = 4  # channels per axis: (sin, cos) at frequency 1, (sin, cos) at frequency 1/T^(2/4) = 1/100
    pos = PositionEmbeddingSine(num_pos_feats=d, temperature=10000, normalize=True)(mask)
    assert pos.shape == (1, 2 * d, 2, 3)
    eps, two_pi = 1e-6, 2 * math.pi
    for row in range(2):
        for col in range(2):
            y = (row + 1) / (2 + eps) * two_pi  # cumsum down the column, divided by the valid height
            x = (col + 1) / (2 + eps) * two_pi
            expected_y = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100)]
            expected_x = [math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
            got = pos[0, :, row, col].tolist()
            assert got == pytest.approx(expected_y + expected_x, abs=1e-5)


def test_sine_codes_of_real_cells_do_not_depend_on_padding():
    alone = torch.zeros(1, 3, 4, dtype=torch.bool)
    padded = torch.ones(1, 5, 7, dtype=torch.bool)
    padded[:, :3, :4] = False
    enc = PositionEmbeddingSine(num_pos_feats=8)
    torch.testing.assert_close(enc(alone)[..., :3, :4], enc(padded)[..., :3, :4])


def test_sine_without_normalization_uses_raw_indices():
    mask = torch.zeros(1, 1, 3, dtype=torch.bool)
    pos = PositionEmbeddingSine(num_pos_feats=2, normalize=False)(mask)
    # x-half channel 0 is sin(x) with x = 1, 2, 3
    assert pos[0, 2, 0].tolist() == pytest.approx([math.sin(1), math.sin(2), math.sin(3)], abs=1e-6)


def test_learned_encoding_shapes_and_layout():
    enc = PositionEmbeddingLearned(num_pos_feats=16)
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    pos = enc(mask)
    assert pos.shape == (2, 32, 3, 5)
    # first half: column code (same down a column), second half: row code (same along a row)
    torch.testing.assert_close(pos[0, :16, 0, 4], enc.col_embed.weight[4])
    torch.testing.assert_close(pos[0, 16:, 2, 0], enc.row_embed.weight[2])
    torch.testing.assert_close(pos[0, :16, 1, 4], pos[0, :16, 2, 4])


def test_learned_encoding_rejects_maps_larger_than_its_table():
    with pytest.raises(ValueError, match="exceeds"):
        PositionEmbeddingLearned(num_pos_feats=4, max_size=50)(torch.zeros(1, 51, 2, dtype=torch.bool))


def test_sine_encoding_with_the_true_extent_codes_a_cell_as_the_same_fraction_of_any_image():
    """With ``extent`` (valid cells, fractional) a cell's code depends on where it is in the image,
    not on how many cells the map has: 7.5 cells of 120 px and 8 of 128 px code cell 3 alike
    after scaling by 8 / 7.5; without it the official encoding divides by the cell count."""
    from detr_tutorial.models import PositionEmbeddingSine

    pe = PositionEmbeddingSine(8, normalize=True)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    torch.testing.assert_close(pe(mask, torch.tensor([[8.0, 8.0]])), pe(mask))
    half = pe(mask, torch.tensor([[16.0, 16.0]]))  # the same 8 cells as the top-left quarter of a bigger image
    big = pe(torch.zeros(1, 16, 16, dtype=torch.bool))
    torch.testing.assert_close(half, big[:, :, :8, :8])
