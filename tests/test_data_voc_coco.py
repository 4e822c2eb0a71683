"""Pascal VOC and COCO-format loaders, on tiny folders the tests write themselves."""
import json
import logging

import pytest
import torch
from PIL import Image

from detr_tutorial.data import (
    VOC_CLASSES,
    CocoDetection,
    VOCDataset,
    build_dataset,
    find_coco_folder,
)  # fmt: skip
from detr_tutorial.data.coco import make_label_map


def pixel_boxes(target):
    h, w = target["size"].tolist()
    cx, cy, bw, bh = (target["boxes"] * torch.tensor([w, h, w, h])).unbind(-1)
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)


# ---- Pascal VOC ------------------------------------------------------------------------------

VOC_XML = """<annotation><filename>{name}.jpg</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"""
VOC_OBJECT = """<object><name>{cls}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"""


def write_voc(root, year, images, image_set="trainval"):
    """A VOC<year> folder; images: name -> ((w, h), [(class, difficult, (xmin, ymin, xmax, ymax))])."""
    base = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for name, ((w, h), objects) in images.items():
        Image.new("RGB", (w, h), (120, 30, 200)).save(base / "JPEGImages" / f"{name}.jpg")
        objs = "".join(VOC_OBJECT.format(cls=c, difficult=d, b=b) for c, d, b in objects)
        (base / "Annotations" / f"{name}.xml").write_text(VOC_XML.format(name=name, w=w, h=h, objects=objs))
    (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{n}\n" for n in images))


@pytest.fixture
def voc_root(tmp_path):
    """VOC2007 with two images: 000001 (40 x 30): a dog and a difficult person; 000002 (20 x 20): a cat."""
    write_voc(tmp_path, "2007", {
        "000001": ((40, 30), [("dog", 0, (5, 6, 20, 25)), ("person", 1, (1, 1, 10, 10))]),
        "000002": ((20, 20), [("cat", 0, (2, 3, 12, 18))]),
    })  # fmt: skip
    return tmp_path


def test_voc_classes_are_the_twenty_in_fixed_order():
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[11] == "dog" and VOC_CLASSES[19] == "tvmonitor"


def test_voc_target_converts_one_based_inclusive_boxes_and_drops_difficult(voc_root):
    ds = VOCDataset(voc_root, "2007", "trainval")
    assert len(ds) == 2 and ds.num_classes == 20
    image, target = ds[0]
    assert image.shape == (3, 30, 40)
    # dog: xmin..xmax = 5..20 (1-based, inclusive) -> pixel edges x1 = 4, x2 = 20; y: 5, 25
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog")]
    torch.testing.assert_close(target["boxes"], torch.tensor([[12 / 40, 15 / 30, 16 / 40, 20 / 30]]))
    assert int(target["image_id"]) == 0 and target["orig_size"].tolist() == [30, 40]


def test_voc_keeps_difficult_objects_on_request(voc_root):
    _, target = VOCDataset(voc_root, "2007", "trainval", keep_difficult=True)[0]
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    torch.testing.assert_close(pixel_boxes(target)[1], torch.tensor([0.0, 0.0, 10.0, 10.0]))


def test_voc_exports_coco_json_with_difficult_as_ignored_crowd(voc_root, tmp_path):
    ds = VOCDataset(voc_root, "2007", "trainval")
    data = json.loads(ds.write_coco_json(tmp_path / "voc.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(VOC_CLASSES)
    assert [(im["id"], im["width"], im["height"]) for im in data["images"]] == [(0, 40, 30), (1, 20, 20)]
    anns = [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in data["annotations"]]
    assert anns == [
        (0, VOC_CLASSES.index("dog") + 1, [4.0, 5.0, 16.0, 20.0], 0),
        (0, VOC_CLASSES.index("person") + 1, [0.0, 0.0, 10.0, 10.0], 1),
        (1, VOC_CLASSES.index("cat") + 1, [1.0, 2.0, 11.0, 16.0], 0),
    ]
    assert ds.coco.getImgIds() == [0, 1]


def test_missing_voc_root_says_where_and_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        VOCDataset(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "VOCdevkit" / "VOC2007") in str(info.value)


def test_voc_download_skips_data_already_in_place(voc_root, monkeypatch):
    import torchvision.datasets.voc as tv_voc

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(tv_voc, "download_and_extract_archive", no_network)
    assert len(VOCDataset(voc_root, "2007", "trainval", download=True)) == 2


def test_voc_rejects_unknown_year_and_image_set(voc_root):
    with pytest.raises(ValueError, match="year"):
        VOCDataset(voc_root, year="2013")
    with pytest.raises(ValueError, match="image_set"):
        VOCDataset(voc_root, year="2012", image_set="test")


def test_build_dataset_voc_train_uses_trainval_of_2007(voc_root):
    ds = build_dataset("voc", "train", root=voc_root, transforms=None)
    assert ds.image_set == "trainval" and len(ds) == 2


def test_voc_07_plus_12_concatenates_with_unique_image_ids(voc_root):
    write_voc(voc_root, "2012", {"2008_000001": ((30, 30), [("horse", 0, (1, 1, 30, 30))])})
    ds = build_dataset("voc", "train", root=voc_root, year="2007+2012", transforms=None)
    assert len(ds) == 3 and ds.class_names == VOC_CLASSES
    image, target = ds[2]  # the VOC2012 image: ids 0, 1 are taken by VOC2007
    assert int(target["image_id"]) == 2 and image.shape == (3, 30, 30)
    assert target["labels"].tolist() == [VOC_CLASSES.index("horse")]
    assert ds.coco.getImgIds() == [0, 1, 2]
    ann = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=2))
    assert [a["bbox"] for a in ann] == [[0.0, 0.0, 30.0, 30.0]]
    assert len(ds.coco.getAnnIds()) == 4 and len(set(ds.coco.getAnnIds())) == 4


def test_concatenation_needs_the_same_classes(voc_root):
    from detr_tutorial.data import ConcatDetectionDataset, ShapesDataset

    with pytest.raises(ValueError, match="same classes"):
        ConcatDetectionDataset([VOCDataset(voc_root), ShapesDataset("val", num_images=1)])


# ---- COCO format -----------------------------------------------------------------------------

@pytest.fixture
def coco_root(tmp_path):
    """``annotations/instances_val.json`` + ``val/``: image 42 (40 x 30) with a dog, a crowd of
    cats and a box outside the image; image 7 (20 x 20) without objects. Category ids are
    3 (cat), 5 (bird), 7 (dog), listed out of order."""
    (tmp_path / "val").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.new("RGB", (40, 30), (10, 200, 10)).save(tmp_path / "val" / "a.jpg")
    Image.new("RGB", (20, 20), (10, 10, 200)).save(tmp_path / "val" / "b.jpg")
    data = {
        "images": [{"id": 42, "file_name": "a.jpg", "width": 40, "height": 30},
                   {"id": 7, "file_name": "b.jpg", "width": 20, "height": 20}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 5, "name": "bird"}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 7, "bbox": [2, 3, 10, 12], "area": 120, "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 3, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 1},
            {"id": 3, "image_id": 42, "category_id": 5, "bbox": [45, 5, 5, 5], "area": 25, "iscrowd": 0},
        ],
    }  # fmt: skip
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return tmp_path


def test_coco_labels_follow_category_ids_in_ascending_order(coco_root):
    ds = build_dataset("folder", "val", root=coco_root, transforms=None)
    assert ds.label_map == {3: 0, 5: 1, 7: 2}
    assert ds.class_names == ("cat", "bird", "dog") and ds.num_classes == 3
    assert ds.label_to_cat_id == {0: 3, 1: 5, 2: 7}


def test_coco_target_skips_crowd_and_degenerate_boxes(coco_root, caplog):
    with caplog.at_level(logging.WARNING, logger="detr_tutorial.data.coco"):
        ds = build_dataset("folder", "val", root=coco_root, transforms=None)
    assert "removed 1 degenerate" in caplog.text
    assert (ds.num_crowd_removed, ds.num_degenerate_removed) == (1, 1)
    image, target = ds[1]  # ids are sorted: 7, 42
    assert int(target["image_id"]) == 42 and image.shape == (3, 30, 40)
    assert target["labels"].tolist() == [2]  # the dog
    # xywh (2, 3, 10, 12) -> xyxy (2, 3, 12, 15)
    torch.testing.assert_close(target["boxes"], torch.tensor([[7 / 40, 9 / 30, 10 / 40, 12 / 30]]))


def test_coco_image_without_objects_has_empty_target(coco_root):
    _, target = build_dataset("folder", "val", root=coco_root, transforms=None)[0]
    assert int(target["image_id"]) == 7
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_coco_ground_truth_keeps_the_json_untouched(coco_root):
    ds = build_dataset("folder", "val", root=coco_root)
    assert len(ds.coco.getAnnIds()) == 3 and ds.get_coco_api() is ds.coco


def test_coco_category_id_labels_as_in_official_detr(coco_root):
    ds = CocoDetection(coco_root / "val", coco_root / "annotations" / "instances_val.json",
                       label_map="category_id")
    assert ds.class_names == ("N/A", "N/A", "N/A", "cat", "N/A", "bird", "N/A", "dog")
    assert ds[1][1]["labels"].tolist() == [7]
    assert ds.label_to_cat_id == {i: i for i in range(8)}


def test_coco_label_map_saved_with_a_checkpoint_round_trips(coco_root):
    first = build_dataset("folder", "val", root=coco_root)
    saved = json.loads(json.dumps(first.label_info()))  # as a checkpoint would store it
    label_map = {cat: int(label) for label, cat in saved["label_to_cat_id"].items()}
    again = build_dataset("folder", "val", root=coco_root, label_map=label_map)
    assert again.class_names == tuple(saved["class_names"]) and again.label_map == first.label_map


def test_explicit_label_map_must_cover_every_category_without_gaps():
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    with pytest.raises(ValueError, match="category ids \\[7\\]"):
        make_label_map(cats, {3: 0})
    with pytest.raises(ValueError, match="0..1"):
        make_label_map(cats, {3: 0, 7: 2})


def test_roboflow_layout_is_found(tmp_path, coco_root):
    (tmp_path / "rf" / "valid").mkdir(parents=True)
    (coco_root / "annotations" / "instances_val.json").rename(tmp_path / "rf" / "valid" / "_annotations.coco.json")
    img_folder, ann_file = find_coco_folder(tmp_path / "rf", "valid")
    assert img_folder == tmp_path / "rf" / "valid" and ann_file.name == "_annotations.coco.json"


def test_missing_coco_folder_lists_the_paths_tried(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_val.json"):
        build_dataset("folder", "val", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="download=True"):
        build_dataset("coco", "val", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoDetection(tmp_path, tmp_path / "missing.json")


def test_missing_image_file_names_the_path(coco_root):
    (coco_root / "val" / "a.jpg").unlink()
    ds = build_dataset("folder", "val", root=coco_root)
    with pytest.raises(FileNotFoundError, match="a.jpg"):
        ds[1]


def test_build_dataset_rejects_unknown_names_and_missing_root():
    with pytest.raises(ValueError, match="unknown data set"):
        build_dataset("imagenet", "train")
    with pytest.raises(ValueError, match="root"):
        build_dataset("folder", "val")
    with pytest.raises(ValueError, match="transforms"):
        build_dataset("shapes", "val", transforms="fancy")


def test_build_dataset_shapes_uses_the_normalized_preset():
    image, _target = build_dataset("shapes", "val", num_images=1)[0]
    assert image.shape == (3, 128, 128) and image.min() < 0  # ImageNet-normalized
