"""HungarianMatcher: optimal, batched = per image, empty targets, deterministic, official indices."""
import itertools

import pytest
import torch

import detr_tutorial as dt
from reference_data import load_io, load_json


def _random_case(batch: int, queries: int, num_classes: int, sizes: list, seed: int):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(batch, queries, num_classes + 1, generator=g),
        "pred_boxes": torch.rand(batch, queries, 2, generator=g).mul(0.5).add(0.25).repeat(1, 1, 2)
        * torch.tensor([1, 1, 0.4, 0.4]),
    }
    targets = []
    for n in sizes:
        cxcy = torch.rand(n, 2, generator=g) * 0.5 + 0.25
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": torch.cat([cxcy, wh], 1)})
    return outputs, targets


def _brute_force_cost(cost: torch.Tensor) -> float:
    q, n = cost.shape
    return min(sum(cost[p[j], j].item() for j in range(n)) for p in itertools.permutations(range(q), n))


@pytest.mark.parametrize("seed", range(5))
def test_assignment_cost_equals_brute_force_over_all_permutations(seed):
    outputs, targets = _random_case(1, 5, 3, [3], seed)
    matcher = dt.HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    (pred_idx, tgt_idx), = matcher(outputs, targets)
    cost = matcher.cost_matrices(outputs, targets)[0]
    assert len(pred_idx) == 3 and sorted(tgt_idx.tolist()) == [0, 1, 2]
    assert cost[pred_idx, tgt_idx].sum().item() == pytest.approx(_brute_force_cost(cost), abs=1e-5)


def test_batched_matching_equals_matching_each_image_alone():
    outputs, targets = _random_case(3, 6, 4, [2, 0, 4], seed=7)
    matcher = dt.HungarianMatcher()
    batched = matcher(outputs, targets)
    for i in range(3):
        alone = matcher({k: v[i : i + 1] for k, v in outputs.items()}, [targets[i]])[0]
        assert torch.equal(batched[i][0], alone[0]) and torch.equal(batched[i][1], alone[1])


def test_images_without_objects_get_empty_index_tensors():
    outputs, targets = _random_case(2, 4, 2, [0, 0], seed=1)
    for pred_idx, tgt_idx in dt.HungarianMatcher()(outputs, targets):
        assert pred_idx.dtype == torch.int64 and pred_idx.numel() == 0 and tgt_idx.numel() == 0


def test_ties_are_broken_deterministically():
    # every query predicts the same thing: all assignments cost the same
    outputs = {"pred_logits": torch.zeros(1, 4, 3), "pred_boxes": torch.full((1, 4, 4), 0.25)}
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2]])}]
    matcher = dt.HungarianMatcher()
    first = matcher(outputs, targets)[0]
    for _ in range(3):
        again = matcher(outputs, targets)[0]
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[0].tolist() == sorted(first[0].tolist())


def test_a_zero_weight_removes_its_term_from_the_cost():
    outputs, targets = _random_case(1, 5, 3, [2], seed=3)
    terms = dt.HungarianMatcher().cost_terms(outputs, targets)[0]
    cost = dt.HungarianMatcher(cost_class=0, cost_bbox=5, cost_giou=2).cost_matrices(outputs, targets)[0]
    torch.testing.assert_close(cost, 5 * terms["bbox"] + 2 * terms["giou"])


def test_indices_equal_the_official_matcher():
    io, ref = load_io(), load_json()
    matcher = dt.HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    for targets, key in ((io["targets"], "indices"), (io["empty_targets"], "indices_with_empty")):
        got = [[p.tolist(), t.tolist()] for p, t in matcher(io["outputs"], targets)]
        assert got == ref[key]


@pytest.mark.parametrize(
    "bad_target, message",
    [
        ({"labels": torch.tensor([0])}, "missing key"),
        ({"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}, r"must be in 0\.\.2"),
        ({"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.0, 0.2]])}, "non-positive"),
        ({"labels": torch.tensor([0]), "boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]])}, "normalized"),
        ({"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}, "2 labels but 1 boxes"),
    ],
)
def test_bad_targets_are_rejected_with_a_clear_message(bad_target, message):
    outputs, _ = _random_case(1, 4, 3, [1], seed=0)
    with pytest.raises(ValueError, match=message):
        dt.HungarianMatcher()(outputs, [bad_target])


def test_nan_predictions_are_rejected():
    outputs, targets = _random_case(1, 4, 3, [1], seed=0)
    outputs["pred_boxes"][0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        dt.HungarianMatcher()(outputs, targets)


def test_wrong_number_of_target_dicts_is_rejected():
    outputs, targets = _random_case(2, 4, 3, [1, 1], seed=0)
    with pytest.raises(ValueError, match="2 images"):
        dt.HungarianMatcher()(outputs, targets[:1])
