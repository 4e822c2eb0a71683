"""Pascal VOC 2007 / 2012 detection, in the package's targets convention.

``torchvision.datasets.VOCDetection`` finds (and in Colab downloads) the files; this module
turns its XML annotations into labels ``0..19`` in the fixed VOC class order and boxes in
pixels, and describes the split as COCO json so pycocotools evaluates it like any other set.

VOC marks hard objects ``difficult``. The VOC benchmark neither rewards nor punishes
detections of them; by default they are left out of the training targets and exported as
COCO "crowd" regions, which pycocotools ignores in the same spirit (a detection on them is
neither a true nor a false positive). ``keep_difficult=True`` treats them as ordinary objects.

Box convention: VOC stores 1-based, inclusive pixel indices ``xmin..xmax``; in pixel-edge
coordinates that object spans ``[xmin - 1, xmax)``, so ``x1 = xmin - 1`` and ``x2 = xmax``.

An image whose file size differs from its XML ``<size>``, or that cannot be decoded, is a
``ValueError`` naming the files; the ``<size>`` also decides, as for COCO, whether an EXIF
orientation is applied (:func:`~detr_tutorial.data.base.load_annotated_image`).
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from torchvision.datasets import VOCDetection

from .base import DetectionDataset, Transforms, load_annotated_image, make_raw_target
from .coco_format import build_coco_dict, coco_from_dict, write_json

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# The usual protocol: train on trainval, test on VOC2007 test (2012 test labels are private).
SPLIT_TO_IMAGE_SET = {
    ("2007", "train"): "trainval",
    ("2007", "val"): "test",
    ("2012", "train"): "train",
    ("2012", "val"): "val",
}
YEARS = tuple(str(y) for y in range(2007, 2013))


def parse_voc_xml(path: str | Path) -> dict:
    """One VOC annotation file -> ``{"width", "height", "boxes" [N,4] xyxy, "names", "difficult"}``."""
    root = ET.parse(path).getroot()
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: VOC annotation has no <size> element")
    try:
        width, height = int(size.findtext("width")), int(size.findtext("height"))
    except (TypeError, ValueError):
        raise ValueError(f"{path}: <size> needs whole-number <width> and <height>") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: <size> must be positive, got width {width} and height {height}")
    boxes, names, difficult = [], [], []
    for obj in root.iter("object"):
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ValueError(f"{path}: an <object> has no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: a <bndbox> needs numeric <xmin>, <ymin>, <xmax> and <ymax>") from None
        if not all(np.isfinite([xmin, ymin, xmax, ymax])):
            raise ValueError(f"{path}: a <bndbox> holds a non-finite coordinate: {[xmin, ymin, xmax, ymax]}")
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
        names.append(obj.findtext("name").strip())
        difficult.append(int(obj.findtext("difficult") or 0))
    return {
        "width": width,
        "height": height,
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "names": names,
        "difficult": np.asarray(difficult, dtype=bool),
    }


class VOCDataset(DetectionDataset):
    """Pascal VOC detection.

    Args:
        root: folder that holds (or will hold) ``VOCdevkit/VOC<year>``.
        year: ``"2007"`` .. ``"2012"``.
        image_set: ``"train"``, ``"val"``, ``"trainval"`` or (2007 only) ``"test"``.
        download: fetch and unpack the official archive into ``root`` if missing (Colab).
        keep_difficult: keep ``difficult`` objects as ordinary targets and ground truth.
        transforms: see :class:`~detr_tutorial.data.base.DetectionDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        year: str = "2007",
        image_set: str = "trainval",
        download: bool = False,
        keep_difficult: bool = False,
        transforms: Transforms | None = None,
    ) -> None:
        super().__init__(transforms)
        year = str(year)
        if year not in YEARS:
            raise ValueError(f"VOC year must be one of {YEARS}, got {year!r}")
        valid_sets = ("train", "val", "trainval") + (("test",) if year == "2007" else ())
        if image_set not in valid_sets:
            raise ValueError(f"VOC{year} image_set must be one of {valid_sets}, got {image_set!r}")
        self.root = Path(root)
        voc_dir = self.root / "VOCdevkit" / f"VOC{year}"
        if not download and not voc_dir.is_dir():
            raise FileNotFoundError(
                f"Pascal VOC {year} not found: expected the folder {voc_dir} (with JPEGImages/, "
                f"Annotations/ and ImageSets/Main/{image_set}.txt). Pass download=True (about 0.5-2 GB "
                f"from the official mirror) or unpack VOCtrainval/VOCtest tar files into {self.root}."
            )
        split_file = voc_dir / "ImageSets" / "Main" / f"{image_set}.txt"
        if not split_file.is_file() and not download:
            raise FileNotFoundError(f"VOC split list not found: {split_file}")
        # Download (and unpack, which takes minutes) only what is missing.
        self._voc = VOCDetection(
            str(self.root), year=year, image_set=image_set, download=download and not split_file.is_file()
        )
        self.year, self.image_set, self.keep_difficult = year, image_set, keep_difficult
        self.class_names = VOC_CLASSES
        self.label_to_cat_id = {label: label + 1 for label in range(len(VOC_CLASSES))}
        self._name_to_label = {name: i for i, name in enumerate(VOC_CLASSES)}
        self._parsed: dict[int, dict] = {}
        self._warned_orientation = False

    def __len__(self) -> int:
        return len(self._voc.images)

    def annotation(self, index: int) -> dict:
        """The parsed XML of image ``index`` plus ``labels`` (cached; does not read the image)."""
        if index not in self._parsed:
            ann = parse_voc_xml(self._voc.annotations[index])
            unknown = [n for n in ann["names"] if n not in self._name_to_label]
            if unknown:
                raise ValueError(f"{self._voc.annotations[index]}: unknown VOC classes {unknown}")
            ann["labels"] = np.asarray([self._name_to_label[n] for n in ann["names"]], dtype=np.int64)
            self._parsed[index] = ann
        return self._parsed[index]

    def load(self, index: int) -> tuple[Image.Image, dict]:
        ann = self.annotation(index)
        what = str(self._voc.annotations[index])
        image, unturned = load_annotated_image(self._voc.images[index], ann["width"], ann["height"], what)
        if unturned and not self._warned_orientation:
            self._warned_orientation = True
            logger.warning("%s: the image has an EXIF orientation that its <size> cannot confirm; its boxes "
                           "are read on the stored pixels (later such images are not reported)", what)
        keep = np.ones(len(ann["labels"]), bool) if self.keep_difficult else ~ann["difficult"]
        width, height = image.size
        return image, make_raw_target(ann["boxes"][keep], ann["labels"][keep], index, height, width)

    def to_coco_dict(self) -> dict:
        """The split's ground truth as COCO json (difficult objects as crowd regions unless kept)."""
        images, boxes, labels, crowd = [], [], [], []
        for i in range(len(self)):
            ann = self.annotation(i)
            images.append(
                {
                    "id": i,
                    "file_name": Path(self._voc.images[i]).name,
                    "height": ann["height"],
                    "width": ann["width"],
                }
            )
            boxes.append(ann["boxes"])
            labels.append(ann["labels"])
            crowd.append(np.zeros_like(ann["difficult"]) if self.keep_difficult else ann["difficult"])
        return build_coco_dict(images, boxes, labels, self.class_names, self.label_to_cat_id, crowd)

    def write_coco_json(self, path: str | Path) -> Path:
        """Write :meth:`to_coco_dict` to ``path``; returns the path."""
        return write_json(self.to_coco_dict(), path)

    def _build_coco(self) -> COCO:
        return coco_from_dict(self.to_coco_dict())
