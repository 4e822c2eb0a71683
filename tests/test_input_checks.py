"""Bad input is refused with a message that names it, and odd input is never misread silently:
image files (corrupt, 16-bit, float, EXIF-rotated), COCO-format annotations, pixel tensors and
DETRConfig fields. Every folder and image here is written by the test itself."""
import json
import logging
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import detr_tutorial as dt
from detr_tutorial.data import CocoDetection, VOCDataset
from detr_tutorial.image_io import EXIF_ORIENTATION, exif_orientation, open_image, to_rgb
from detr_tutorial.nested import nested_tensor_from_tensor_list, to_nested

RED, BLUE = (220, 20, 20), (20, 20, 220)


def two_colour_image(width=16, height=8):
    """Left half red, right half blue: easy to tell apart after a turn, even as a JPEG."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


def save_with_orientation(image, path, orientation):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    image.save(path, exif=exif, quality=95)
    return path


def is_close(pixel, colour, tol=40):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, colour))


# ---- image files -------------------------------------------------------------------------------

def test_sixteen_bit_image_is_rescaled_by_the_type_range_not_clipped():
    image = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    assert image.mode == "I;16"
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 100, 255]


def test_thirty_two_bit_image_holding_sixteen_bit_values_is_rescaled_like_i16():
    image = Image.fromarray(np.array([[0, 257 * 7, 65535]], dtype=np.int32))
    assert image.mode == "I"
    assert np.asarray(to_rgb(image))[0, :, 1].tolist() == [0, 7, 255]


def test_thirty_two_bit_image_beyond_sixteen_bits_is_refused_naming_the_mode():
    image = Image.fromarray(np.array([[0, 70000]], dtype=np.int32))
    with pytest.raises(ValueError, match="mode 'I'.*70000"):
        to_rgb(image)


def test_float_image_in_unit_range_is_scaled_by_255():
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(image))[0, :, 2].tolist() == [0, 128, 255]


@pytest.mark.parametrize("value, message", [(2.0, r"\[0, 2\]"), (float("nan"), "NaN")])
def test_float_image_outside_unit_range_or_nan_is_refused(value, message):
    image = Image.fromarray(np.array([[0.0, value]], dtype=np.float32))
    with pytest.raises(ValueError, match=f"mode 'F'.*{message}"):
        to_rgb(image)


def test_open_image_turns_an_exif_rotated_jpeg_upright(tmp_path):
    # orientation 6: the camera was turned a quarter clockwise; viewers rotate 90 degrees clockwise,
    # so the stored left (red) half ends up on top
    path = save_with_orientation(two_colour_image(16, 8), tmp_path / "turned.jpg", 6)
    image = open_image(path)
    assert image.size == (8, 16)
    assert is_close(image.getpixel((4, 2)), RED) and is_close(image.getpixel((4, 13)), BLUE)


def test_an_image_turned_upright_no_longer_carries_the_orientation_tag(tmp_path):
    path = save_with_orientation(two_colour_image(16, 8), tmp_path / "turned.jpg", 6)
    assert exif_orientation(open_image(path)) == 1


def test_open_image_can_keep_the_stored_pixels(tmp_path):
    path = save_with_orientation(two_colour_image(16, 8), tmp_path / "turned.jpg", 6)
    assert open_image(path, exif_transpose=False).size == (16, 8)


def test_truncated_jpeg_is_a_value_error_naming_the_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.jpg"):
        open_image(bad)


def test_a_file_that_is_not_an_image_is_a_value_error_naming_it(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    with pytest.raises(ValueError, match="cannot read image .*notes.jpg"):
        open_image(bad)


# ---- COCO-format folders -------------------------------------------------------------------------

def write_coco(root, data, images=None):
    """``root/images`` + ``root/ann.json``; images: file name -> PIL image (default: one 40 x 30 a.jpg)."""
    (root / "images").mkdir(exist_ok=True)
    for name, image in (images or {"a.jpg": Image.new("RGB", (40, 30), (10, 200, 10))}).items():
        image.save(root / "images" / name)
    (root / "ann.json").write_text(json.dumps(data))
    return root / "images", root / "ann.json"


def coco_json(annotations, width=40, height=30, file_name="a.jpg"):
    return {
        "images": [{"id": 1, "file_name": file_name, "width": width, "height": height}],
        "categories": [{"id": 1, "name": "dog"}],
        "annotations": annotations,
    }


def box(ann_id, bbox, category_id=1, image_id=1):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": 1.0, "iscrowd": 0}


def test_corrupt_image_in_a_coco_folder_is_a_value_error_naming_the_file(tmp_path):
    img_folder, ann_file = write_coco(tmp_path, coco_json([box(1, [1, 1, 5, 5])]))
    (img_folder / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    ds = CocoDetection(img_folder, ann_file)
    with pytest.raises(ValueError, match="a.jpg"):
        ds[0]


def test_an_annotation_file_that_is_not_json_is_a_value_error_naming_it(tmp_path):
    img_folder, ann_file = write_coco(tmp_path, coco_json([]))
    ann_file.write_text('{"images": [')
    with pytest.raises(ValueError, match="ann.json is not valid JSON"):
        CocoDetection(img_folder, ann_file)


def test_unknown_category_id_names_the_id_the_annotation_and_the_file(tmp_path):
    annotations = [box(1, [1, 1, 5, 5]), box(17, [1, 1, 5, 5], category_id=99)]
    img_folder, ann_file = write_coco(tmp_path, coco_json(annotations))
    with pytest.raises(ValueError, match="ann.json: annotation 17 .*category id 99"):
        CocoDetection(img_folder, ann_file)


def test_annotations_of_images_the_json_does_not_list_are_refused(tmp_path):
    img_folder, ann_file = write_coco(tmp_path, coco_json([box(1, [1, 1, 5, 5]), box(8, [1, 1, 5, 5], image_id=5)]))
    with pytest.raises(ValueError, match=r"ann.json: 1 annotation\(s\) refer to image ids .*\[8\]"):
        CocoDetection(img_folder, ann_file)


def test_a_json_without_annotations_is_refused_with_what_to_do(tmp_path):
    data = coco_json([])
    del data["annotations"]
    img_folder, ann_file = write_coco(tmp_path, data)
    with pytest.raises(ValueError, match="no 'annotations' list.*test-only"):
        CocoDetection(img_folder, ann_file)


def test_an_empty_annotations_list_is_a_set_without_objects(tmp_path):
    img_folder, ann_file = write_coco(tmp_path, coco_json([]))
    assert CocoDetection(img_folder, ann_file)[0][1]["boxes"].shape == (0, 4)


def test_nan_box_is_refused_naming_the_annotation(tmp_path):
    img_folder, ann_file = write_coco(tmp_path, coco_json([box(4, [1, float("nan"), 5, 5])]))
    with pytest.raises(ValueError, match="annotation 4 .*four finite numbers"):
        CocoDetection(img_folder, ann_file)


def test_repeated_image_ids_are_refused(tmp_path):
    data = coco_json([])
    data["images"].append(dict(data["images"][0]))
    img_folder, ann_file = write_coco(tmp_path, data)
    with pytest.raises(ValueError, match=r"unique; repeated: \[1\]"):
        CocoDetection(img_folder, ann_file)


def test_image_sizes_must_be_positive_whole_numbers(tmp_path):
    img_folder, ann_file = write_coco(tmp_path, coco_json([], width=0))
    with pytest.raises(ValueError, match="image 1 .*width 0"):
        CocoDetection(img_folder, ann_file)


def test_box_reaching_outside_the_image_is_clipped_with_a_warning(tmp_path, caplog):
    img_folder, ann_file = write_coco(tmp_path, coco_json([box(1, [2, 3, 10, 12]), box(6, [30, 20, 20, 20])]))
    with caplog.at_level(logging.WARNING, logger="detr_tutorial.data.coco"):
        ds = CocoDetection(img_folder, ann_file)
    assert "ann.json: clipped 1 boxes" in caplog.text and "annotation 6" in caplog.text
    assert ds.num_clipped == 1
    h, w = ds[0][1]["size"].tolist()
    cx, cy, bw, bh = (ds[0][1]["boxes"][1] * torch.tensor([w, h, w, h])).tolist()
    assert [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2] == pytest.approx([30, 20, 40, 30])


def test_json_size_that_differs_from_the_image_file_is_refused(tmp_path):
    img_folder, ann_file = write_coco(tmp_path, coco_json([box(1, [1, 1, 5, 5])], width=50, height=30))
    ds = CocoDetection(img_folder, ann_file)
    with pytest.raises(ValueError, match="image 1 of .*ann.json.*50 x 30.*a.jpg is 40 x 30"):
        ds[0]


def test_exif_rotated_image_is_turned_upright_when_the_json_size_is_the_upright_one(tmp_path):
    # stored 16 x 8 (red left half), shown upright as 8 x 16 (red top half); the box covers the
    # top half of the upright image, so it must hold red pixels
    (tmp_path / "images").mkdir()
    save_with_orientation(two_colour_image(16, 8), tmp_path / "images" / "a.jpg", 6)
    (tmp_path / "ann.json").write_text(json.dumps(coco_json([box(1, [0, 0, 8, 8])], width=8, height=16)))
    ds = CocoDetection(tmp_path / "images", tmp_path / "ann.json")
    image, target = ds[0]
    assert image.shape == (3, 16, 8)
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.5, 0.25, 1.0, 0.5]]))
    top = (image[:, :8, :] * 255).mean(dim=(1, 2)).tolist()
    assert is_close(top, RED)


def test_exif_rotated_image_keeps_its_stored_pixels_when_the_json_size_is_the_stored_one(tmp_path, caplog):
    (tmp_path / "images").mkdir()
    save_with_orientation(two_colour_image(16, 8), tmp_path / "images" / "a.jpg", 6)
    (tmp_path / "ann.json").write_text(json.dumps(coco_json([box(1, [0, 0, 8, 8])], width=16, height=8)))
    ds = CocoDetection(tmp_path / "images", tmp_path / "ann.json")
    with caplog.at_level(logging.WARNING, logger="detr_tutorial.data.coco"):
        image, _ = ds[0]
    assert image.shape == (3, 8, 16) and "stored pixels" in caplog.text
    assert is_close((image[:, :, :8] * 255).mean(dim=(1, 2)).tolist(), RED)


def test_sixteen_bit_png_in_a_coco_folder_is_not_saturated(tmp_path):
    grey = Image.fromarray(np.full((30, 40), 257 * 64, dtype=np.uint16))
    img_folder, ann_file = write_coco(tmp_path, coco_json([], file_name="a.png"), images={"a.png": grey})
    image, _ = CocoDetection(img_folder, ann_file)[0]
    assert image.mul(255).round().unique().tolist() == [64.0]


# ---- Pascal VOC ----------------------------------------------------------------------------------

def write_voc_image(root, xml_size, objects=""):
    """VOC2007 trainval with one 40 x 30 image, 000001, whose XML says ``xml_size`` (w, h)."""
    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(base / "JPEGImages" / "000001.jpg")
    (base / "Annotations" / "000001.xml").write_text(
        f"<annotation><size><width>{xml_size[0]}</width><height>{xml_size[1]}</height></size>{objects}</annotation>")
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n")


def test_voc_size_that_differs_from_the_image_file_is_refused(tmp_path):
    write_voc_image(tmp_path, (30, 40))
    with pytest.raises(ValueError, match="000001.xml.*30 x 40.*000001.jpg is 40 x 30"):
        VOCDataset(tmp_path)[0]


def test_voc_box_with_a_nan_coordinate_is_refused_naming_the_file(tmp_path):
    dog = ("<object><name>dog</name><bndbox><xmin>1</xmin><ymin>nan</ymin><xmax>9</xmax>"
           "<ymax>9</ymax></bndbox></object>")
    write_voc_image(tmp_path, (40, 30), dog)
    with pytest.raises(ValueError, match="000001.xml: a <bndbox> holds a non-finite"):
        VOCDataset(tmp_path)[0]


# ---- pixel tensors -------------------------------------------------------------------------------

def test_padding_refuses_nan_pixels_naming_the_image():
    bad = torch.zeros(3, 4, 4)
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="image 1 has 1 NaN or infinite"):
        nested_tensor_from_tensor_list([torch.zeros(3, 4, 4), bad])


def test_a_batch_tensor_with_inf_pixels_is_refused():
    images = torch.zeros(2, 3, 4, 4)
    images[0, 0, 0, 0] = math.inf
    with pytest.raises(ValueError, match="images has 1 NaN or infinite"):
        to_nested(images)


@pytest.mark.parametrize("images", [torch.zeros(1, 3, 4, 4, dtype=torch.float64),
                                    [torch.zeros(3, 4, 4, dtype=torch.float64)]])
def test_float64_pixels_are_refused_with_how_to_convert(images):
    with pytest.raises(TypeError, match=r"float64.*\.float\(\)"):
        to_nested(images)


def test_integer_images_in_a_list_are_refused():
    with pytest.raises(TypeError, match="image 0 must be a float tensor"):
        nested_tensor_from_tensor_list([torch.zeros(3, 4, 4, dtype=torch.uint8)])


def test_a_batch_mixing_dtypes_is_refused():
    with pytest.raises(TypeError, match="image 1 is torch.float16 .* one dtype"):
        nested_tensor_from_tensor_list([torch.zeros(3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.float16)])


# ---- predict -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return dt.build_model(
        "detr-tiny", num_classes=2, backbone="smallcnn", backbone_norm="bn", backbone_stride=16,
        hidden_dim=16, nheads=2, enc_layers=1, dec_layers=1, dim_feedforward=16, num_queries=3,
    ).eval()


def test_predict_reads_a_sixteen_bit_image_as_its_eight_bit_equivalent(small_model):
    values = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint16)
    sixteen = Image.fromarray(values * 257)
    eight = Image.fromarray(values.astype(np.uint8)).convert("RGB")
    a, b = (dt.predict(small_model, im, threshold=0.0)[0] for im in (sixteen, eight))
    torch.testing.assert_close(a["scores"], b["scores"])


def test_predict_warns_that_a_pil_image_with_exif_orientation_is_taken_as_stored(small_model, tmp_path):
    path = save_with_orientation(two_colour_image(32, 16), tmp_path / "turned.jpg", 6)
    with Image.open(path) as image, pytest.warns(UserWarning, match="EXIF orientation 6.*exif_transpose"):
        dt.predict(small_model, image)


def test_predict_on_an_upright_image_does_not_warn(small_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dt.predict(small_model, two_colour_image(32, 16))


def test_predict_refuses_nan_pixels(small_model):
    image = torch.rand(3, 32, 32)
    image[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        dt.predict(small_model, image)


def test_cli_predict_of_a_corrupt_image_is_one_error_line(tmp_path, capsys):
    from detr_tutorial.cli import main

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"never read: the images are read first")
    assert main(["predict", "--checkpoint", str(checkpoint), str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read image") and "broken.jpg" in err and "Traceback" not in err


def test_cli_predict_draws_an_exif_rotated_photo_upright(tmp_path, capsys):
    from detr_tutorial.checkpoint import SHIPPED_MODEL
    from detr_tutorial.cli import main

    photo = save_with_orientation(two_colour_image(128, 64), tmp_path / "photo.jpg", 6)
    assert main(["predict", "--checkpoint", str(SHIPPED_MODEL), str(photo), "--out", str(tmp_path / "out")]) == 0
    with Image.open(tmp_path / "out" / "photo_pred.png") as drawn:
        assert drawn.size == (64, 128)


# ---- DETRConfig ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(nheads=0), "nheads must be a positive int, got 0"),
        (dict(hidden_dim=0), "hidden_dim must be a positive int, got 0"),
        (dict(num_queries=-3), "num_queries must be a positive int, got -3"),
        (dict(dim_feedforward=64.5), "dim_feedforward must be a positive int, got 64.5"),
        (dict(num_classes=True), "num_classes must be a positive int, got True"),
        (dict(enc_layers=-1), "enc_layers must be a non-negative int, got -1"),
        (dict(set_cost_bbox=-1.0), r"set_cost_bbox must be a finite number >= 0, got -1.0"),
        (dict(giou_loss_coef=float("nan")), "giou_loss_coef must be a finite number >= 0, got nan"),
        (dict(eos_coef=0.0), "eos_coef must be a finite number > 0, got 0.0"),
        (dict(focal_alpha=1.5), r"focal_alpha must be a number in \[0, 1\], got 1.5"),
        (dict(dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
        (dict(aux_loss="yes"), "aux_loss must be True or False, got 'yes'"),
        (dict(class_names=["a", 2, "c"]), "class_names must be None or a list of str"),
    ],
)
def test_config_fields_are_checked_when_the_config_is_made(overrides, message):
    with pytest.raises(ValueError, match=message):
        dt.get_config("detr-tiny", **overrides)


def test_every_preset_and_recipe_config_passes_the_checks():
    from detr_tutorial.recipes import RECIPES

    for cfg in dt.PRESETS.values():
        cfg.validate()
    for recipe in RECIPES.values():
        dt.get_config(recipe.model, **recipe.model_overrides).validate()


def test_the_shipped_checkpoint_config_passes_the_checks():
    from pathlib import Path

    state = torch.load(Path(dt.__file__).parent / "checkpoints" / "shapes_detr.pth", map_location="cpu",
                       weights_only=True)
    dt.DETRConfig.from_dict(state["config"]).validate()


@pytest.mark.parametrize("threshold", [float("nan"), 5, -0.1, "0.5", True])
def test_predict_refuses_a_threshold_that_is_not_a_score(threshold):
    model = dt.build_model("detr-tiny", num_classes=2, backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1,
                           dec_layers=1, dim_feedforward=32, num_queries=3, pretrained_backbone=False)
    with pytest.raises(ValueError, match="threshold must be a score in"):
        dt.predict(model, torch.rand(3, 64, 64), threshold=threshold)


@pytest.mark.parametrize("device, message", [("foo", "unknown device 'foo'"), ("cuda", "CUDA is not available")])
def test_train_api_refuses_an_unusable_device_with_a_value_error(device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from detr_tutorial.distributed import init_distributed

    with pytest.raises(ValueError, match=message):
        init_distributed(device)
