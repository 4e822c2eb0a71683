"""Specification of detr_tutorial.viz.static_explorers: the explorers' kernel-free HTML twins.

A twin embeds what its explorer can show; these tests undo the packing in Python (as the
browser script does) and compare it with the package's own functions on a tiny model:
``viz.encoder_attention_map``, ``viz.decoder_attention_map`` and ``HungarianMatcher``. The
browser side (drawing, clicks, sliders) is checked on the built book in ``tests/test_browser.py``.
"""
from __future__ import annotations

import json
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import detr_tutorial as dt  # noqa: E402
from detr_tutorial import viz  # noqa: E402
from detr_tutorial.viz import static_explorers as se  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 96, 128  # a 3 x 4 feature map
CHAPTER = "09_inference_and_attention.ipynb"
KINDS = ("encoder", "decoder", "matching")


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inference() -> viz.AttentionInference:
    torch.manual_seed(0)
    model = dt.build_model("detr-tiny", num_classes=3, pretrained_backbone=False, num_queries=6)
    image = torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    return viz.run_attention(model, image, class_names=["circle", "square", "triangle"])


@pytest.fixture(scope="module")
def problem(inference) -> viz.MatchingProblem:
    outputs = {"pred_logits": inference.pred_logits[None], "pred_boxes": inference.pred_boxes[None]}
    target = {"labels": torch.tensor([0, 2, 1]),
              "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4], [0.5, 0.5, 0.1, 0.6]])}
    return viz.MatchingProblem(outputs, [target])


class _Markup(HTMLParser):
    """Every start tag with its attributes, and the text of <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self._script: dict | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs)
            self.scripts.append((self._script, ""))

    def handle_data(self, data):
        if self._script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None


def _parse(text: str) -> _Markup:
    parser = _Markup()
    parser.feed(text)
    return parser


def _classes(parser: _Markup) -> list[str]:
    return [c for _, attrs in parser.tags for c in (attrs.get("class") or "").split()]


# -- packing ------------------------------------------------------------------------------------
def test_quantize_gives_every_value_back_within_half_a_step():
    maps = np.random.default_rng(0).random((3, 5, 17)) ** 3
    codes, scales = se.quantize(maps)
    assert codes.dtype == np.uint8 and scales.dtype == np.float32 and scales.shape == (3, 5)
    error = np.abs(se.dequantize(codes, scales) - maps)
    assert np.all(error <= scales[..., None] / 2 * (1 + 1e-5) + 1e-9)
    assert np.all(codes.max(axis=-1) == 255)  # each map uses the whole code range


def test_quantize_keeps_an_all_zero_map_zero():
    codes, scales = se.quantize(np.zeros((2, 4)))
    assert scales.tolist() == [0.0, 0.0] and not se.dequantize(codes, scales).any()


def test_base64_round_trip_is_little_endian():
    values = np.arange(6, dtype=np.uint16).reshape(2, 3) * 1000
    text = se.to_base64(values, "u2")
    assert np.array_equal(se.from_base64(text, "u2", (2, 3)), values)
    assert np.frombuffer(__import__("base64").b64decode(text), dtype="<u2")[1] == 1000


@pytest.mark.parametrize("direction", ["row", "column"])
@pytest.mark.parametrize("head", ["mean", 0, 3])
@pytest.mark.parametrize("layer", [0, -1])
def test_encoder_twin_map_equals_the_package_map(inference, layer, head, direction):
    payload = viz.static_encoder_explorer(inference, lang="en").payload
    for point in [(0, 0), (70, 40), (WIDTH - 1, HEIGHT - 1), (33, 90)]:
        expected = viz.encoder_attention_map(inference, point, layer=layer, head=head,
                                             direction=direction)
        shown = viz.encoder_map_from_payload(payload, point, layer=layer, head=head,
                                             direction=direction)
        # each value carries the scale of its matrix row: max of that row / 255
        matrix = se.select_head(inference.enc_attn[layer], head).numpy()
        row_max = matrix.max(axis=1)
        h, w = inference.feature_shape
        cell = viz.inference.point_to_cell(point, inference.image_size, (h, w))
        index = cell[0] * w + cell[1]
        step = (np.full(h * w, row_max[index]) if direction == "row" else row_max) / 255
        assert shown.shape == expected.shape == (h, w)
        assert np.all(np.abs(shown - expected).ravel() <= step / 2 * (1 + 1e-4) + 1e-8)


def test_encoder_twin_keeps_every_layer_and_head_and_the_mean(inference):
    payload = se.pack_encoder(inference)
    assert payload["layers"] == list(range(inference.num_enc_layers))
    assert payload["heads"] == ["mean"] + list(range(inference.num_heads))


def test_an_encoder_too_big_for_the_budget_drops_heads_then_layers(inference):
    hw = inference.feature_shape[0] * inference.feature_shape[1]
    layers = inference.num_enc_layers
    mean_only = se.pack_encoder(inference, max_bytes=layers * hw * hw)
    assert mean_only["heads"] == ["mean"] and mean_only["layers"] == list(range(layers))
    last_only = se.pack_encoder(inference, max_bytes=hw * hw)
    assert last_only["heads"] == ["mean"] and last_only["layers"] == [layers - 1]
    with pytest.raises(ValueError, match="smaller image"):
        se.pack_encoder(inference, max_bytes=hw * hw - 1)


@pytest.mark.parametrize("head", ["mean", 1])
@pytest.mark.parametrize("layer", [0, -1])
def test_decoder_twin_map_equals_the_package_map(inference, layer, head):
    payload = viz.static_decoder_explorer(inference, threshold=0.0, lang="en").payload
    assert payload["queries"], "threshold 0 keeps every query with a positive score"
    for query in payload["queries"]:
        expected = viz.decoder_attention_map(inference, query, layer=layer, head=head)
        shown = viz.decoder_map_from_payload(payload, query, layer=layer, head=head)
        step = expected.max() / 255
        assert np.all(np.abs(shown - expected) <= step / 2 * (1 + 1e-4) + 1e-8)


def test_decoder_twin_offers_the_detections_above_the_threshold_best_first(inference):
    threshold = float(inference.scores.median())
    payload = se.pack_decoder(inference, threshold)
    expected = [int(q) for q in inference.scores.argsort(descending=True)
                if inference.scores[q] > threshold]
    assert payload["queries"] == expected
    assert [d["query"] for d in payload["detections"]] == expected


def test_decoder_twin_without_detections_says_why(inference):
    twin = viz.static_decoder_explorer(inference, threshold=1.0, lang="en")
    assert twin.payload["detections"] == [] and "codes" not in twin.payload
    assert "no detection scores above 1.00" in twin.payload["none_message"]


@pytest.fixture(scope="module")
def rt_inference() -> viz.AttentionInference:
    """A tiny random RT-DETR on a 64 x 96 image: AIFI on a 4 x 6 grid, decoder maps on 8 x 12."""
    torch.manual_seed(0)
    model = dt.build_model("rtdetr-r18", num_classes=3, backbone="smallcnn", backbone_norm="bn",
                           backbone_stride=16, pretrained_backbone=False, hidden_dim=32, enc_nheads=4,
                           enc_dim_feedforward=64, dec_nheads=4, dec_dim_feedforward=64, dec_layers=2,
                           num_queries=6, num_denoising=4, eval_spatial_size=None, expansion=0.5,
                           freeze_stem=None)
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(1))
    return viz.run_attention(model, image, class_names=["circle", "square", "triangle"])


def test_rtdetr_twins_carry_each_their_own_grid(rt_inference):
    assert se.pack_encoder(rt_inference)["feature_shape"] == [4, 6]
    assert se.pack_decoder(rt_inference, threshold=0.0)["feature_shape"] == [8, 12]


@pytest.mark.parametrize("head", ["mean", 2])
def test_rtdetr_encoder_twin_map_equals_the_package_map(rt_inference, head):
    payload = viz.static_encoder_explorer(rt_inference, lang="en").payload
    for point in [(0, 0), (40, 50), (95, 63)]:
        expected = viz.encoder_attention_map(rt_inference, point, head=head)
        shown = viz.encoder_map_from_payload(payload, point, head=head)
        assert shown.shape == expected.shape == (4, 6)
        assert np.abs(shown - expected).max() <= expected.max() / 255 / 2 * (1 + 1e-4) + 1e-8


@pytest.mark.parametrize("head", ["mean", 3])
def test_rtdetr_decoder_twin_map_is_the_splatted_map(rt_inference, head):
    payload = viz.static_decoder_explorer(rt_inference, threshold=0.0, lang="en").payload
    for query in payload["queries"]:
        expected = viz.decoder_attention_map(rt_inference, query, layer=0, head=head)
        shown = viz.decoder_map_from_payload(payload, query, layer=0, head=head)
        assert shown.shape == expected.shape == (8, 12)
        assert np.abs(shown - expected).max() <= expected.max() / 255 / 2 * (1 + 1e-4) + 1e-8


GRID = (0.0, 0.5, 2.0, 5.0)


def test_matching_twin_assignment_equals_the_matching_problem_at_every_grid_point(problem):
    payload = se.pack_matching(problem, GRID)
    for weights in np.ndindex(len(GRID), len(GRID), len(GRID)):
        named = {name: GRID[i] for name, i in zip(se.TERMS, weights)}
        _, (rows, cols) = problem.solve(named)
        assert viz.matching_assignment_from_payload(payload, named) == (rows.tolist(), cols.tolist())


@pytest.mark.parametrize("weights", [(1.0, 5.0, 2.0), (2.0, 5.0, 0.0), (0.5, 0.0, 2.0), (5.0, 0.5, 0.5)])
def test_matching_twin_assignment_equals_the_hungarian_matcher(problem, weights):
    payload = viz.static_matching_explorer(problem, grid=(0.0, 0.5, 1.0, 2.0, 5.0), lang="en").payload
    shown = viz.matching_assignment_from_payload(payload, dict(zip(se.TERMS, weights)))
    pred_idx, tgt_idx = dt.HungarianMatcher(*weights)(problem.outputs, problem.targets)[0]
    assert shown == (pred_idx.tolist(), tgt_idx.tolist())


def test_matching_twin_stores_the_loss_of_each_distinct_assignment(problem):
    payload = se.pack_matching(problem, GRID)
    assert len(payload["losses"]) == len(payload["assignments"]) >= 1
    for (rows, cols), losses in zip(payload["assignments"], payload["losses"]):
        expected = problem.losses((np.array(rows), np.array(cols)))
        assert losses["total"] == pytest.approx(expected["total"], abs=1e-6)


def test_matching_weights_off_the_grid_are_refused(problem):
    payload = se.pack_matching(problem, GRID)
    with pytest.raises(ValueError, match="grid"):
        viz.matching_assignment_from_payload(payload, {"class": 0.7, "bbox": 0.0, "giou": 0.0})


# -- markup -------------------------------------------------------------------------------------
def _twins(inference, problem, lang):
    return [viz.static_encoder_explorer(inference, lang=lang),
            viz.static_decoder_explorer(inference, threshold=0.0, lang=lang),
            viz.static_matching_explorer(problem, grid=GRID, lang=lang)]


@pytest.mark.parametrize("index", range(3))
def test_each_twin_is_a_block_a_test_can_drive(inference, problem, index):
    twin = _twins(inference, problem, "en")[index]
    parser = _parse(twin._repr_html_())
    block = [attrs for tag, attrs in parser.tags if "detr-explorer" in (attrs.get("class") or "").split()]
    assert len(block) == 1 and block[0]["data-kind"] == KINDS[index] == twin.kind
    classes = _classes(parser)
    assert "detr-explorer-status" in classes and "detr-explorer-canvas" in classes
    assert any(tag == "canvas" for tag, _ in parser.tags)
    data = [text for attrs, text in parser.scripts if attrs.get("type") == "application/json"]
    assert json.loads(data[0]) == json.loads(json.dumps(twin.payload))
    code = [text for attrs, text in parser.scripts if not attrs.get("type")]
    assert len(code) == 1 and block[0]["data-explorer-id"] in code[0]
    assert "http://" not in code[0] and "https://" not in code[0]  # nothing from a CDN


def test_the_controls_of_each_twin(inference, problem):
    encoder, decoder, matching = (_parse(t.html) for t in _twins(inference, problem, "en"))
    roles = lambda p: {attrs.get("data-role") for _, attrs in p.tags} - {None}  # noqa: E731
    assert roles(encoder) == {"layer", "head", "direction"}
    assert roles(decoder) == {"detection", "layer", "head"}
    assert roles(matching) == {"cost_class", "cost_bbox", "cost_giou"}


def test_korean_twins_have_korean_labels(inference, problem):
    for twin in _twins(inference, problem, "ko"):
        assert twin.payload["labels"] == se.LABELS["ko"]
        assert 'lang="ko"' in twin.html
    encoder = _twins(inference, problem, "ko")[0].html
    assert "헤드 평균" in encoder and "인코더 2층" in encoder


def test_both_languages_have_the_same_labels_and_placeholders():
    en, ko = se.LABELS["en"], se.LABELS["ko"]
    assert en.keys() == ko.keys()
    placeholders = lambda s: sorted(__import__("re").findall(r"\{(\w+)\}", s))  # noqa: E731
    assert all(placeholders(en[k]) == placeholders(ko[k]) for k in en)


def test_an_unknown_language_is_refused(inference):
    with pytest.raises(ValueError, match="lang"):
        viz.static_encoder_explorer(inference, lang="fr")


def test_the_language_follows_the_notebook_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    (tmp_path / "book" / "ko").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "book" / "ko")
    assert viz.book_language() == "ko"
    monkeypatch.chdir(tmp_path)
    assert viz.book_language() == "en"
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "book" / "ko" / "09.ipynb"))
    assert viz.book_language() == "ko"


def test_a_large_picture_is_embedded_downscaled():
    url = se.image_data_url(torch.rand(3, 600, 1200), max_side=300)
    from PIL import Image
    import base64
    import io
    picture = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert picture.size == (300, 150)


def test_the_script_ships_with_the_package():
    assert resources.files("detr_tutorial.viz").joinpath("static_explorers.js").is_file()
    package_data = (REPO_ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1]
    assert '"viz/*.js"' in package_data.split("[")[1]  # the next table starts with "["


# -- the chapter's twins ------------------------------------------------------------------------
def _stored_twins(path: Path) -> dict[str, str]:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    found = {}
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            text = "".join(output.get("data", {}).get("text/html", []))
            for kind in KINDS:
                if f'class="detr-explorer" data-kind="{kind}"' in text:
                    found[kind] = text
    return found


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_the_chapter_stores_all_three_twins_in_under_2_mb(lang):
    twins = _stored_twins(REPO_ROOT / "book" / lang / CHAPTER)
    assert sorted(twins) == sorted(KINDS), f"book/{lang}/{CHAPTER} lacks twins: re-execute it"
    total = sum(len(text.encode("utf-8")) for text in twins.values())
    assert total < 2_000_000, f"{total:,} bytes of twins on one page"
    for text in twins.values():
        assert f'lang="{lang}"' in text
