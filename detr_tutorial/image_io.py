"""Reading image files into 8-bit RGB without silent misreadings.

``Image.open(path).convert("RGB")``, the usual one-liner, goes wrong quietly in three ways:

* a truncated or corrupt file raises a PIL ``OSError`` deep inside a DataLoader worker, far from
  the name of the file;
* 16-bit and floating-point images (PIL modes ``I;16``, ``I``, ``F``) are *clipped* at 255 by
  ``convert("RGB")``: a 16-bit PNG comes out almost white, a float image in ``[0, 1]`` black;
* the EXIF ``Orientation`` tag (how a camera says "this photo is rotated") is ignored, so the
  model sees a portrait photo lying on its side while every image viewer shows it upright.

:func:`open_image` reads a file and fixes all three (a ``ValueError`` naming the file; 16-bit
data rescaled by the type's range, ``65535 -> 255``; ``ImageOps.exif_transpose`` on request).
:func:`to_rgb` is the mode-aware conversion alone, for PIL images already in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EXIF_ORIENTATION", "exif_orientation", "open_image", "read_image", "to_rgb", "upright", "upright_size"]

PathLike = Union[str, Path]

#: The per-channel (R, G, B) mean and standard deviation of ImageNet, in ``[0, 1]`` pixels: every
#: trunk here (pretrained or not) sees images normalized with them, as in the official code.
#: Defined here once; the transforms, ``predict`` and the drawing helpers import them.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: The EXIF tag that records how the stored pixels must be turned to be seen upright.
EXIF_ORIENTATION = 0x0112
_UINT16_MAX = 65535


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (1 = upright, 2..8 = flipped and/or rotated); 1 when absent."""
    value = image.getexif().get(EXIF_ORIENTATION, 1)
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _sixteen_bit_to_l(values: np.ndarray) -> Image.Image:
    """An 8-bit grey image from 16-bit values, ``0..65535`` mapped linearly onto ``0..255``."""
    return Image.fromarray(np.rint(values.astype(np.float64) * (255.0 / _UINT16_MAX)).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, rescaling (not clipping) high-bit-depth grey images.

    * ``I;16`` (16-bit, e.g. a 16-bit PNG): rescaled by the type's range, ``v * 255 / 65535``.
    * ``I`` (32-bit int): how PIL hands over 16-bit data from some files, so values in
      ``0..65535`` are rescaled like ``I;16``; other values have no known range: ``ValueError``.
    * ``F`` (32-bit float): values in ``[0, 1]`` are scaled by 255; anything else (NaN, or
      another range) is refused with a ``ValueError``, as no scale can be assumed.
    * every other mode (``L``, ``P``, ``RGBA``, ``CMYK``, ...): PIL's ``convert("RGB")``.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    mode = image.mode
    if mode.startswith("I;16"):
        return _sixteen_bit_to_l(np.asarray(image.convert("I"))).convert("RGB")
    if mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > _UINT16_MAX):
            raise ValueError(
                f"cannot convert a 32-bit integer image (PIL mode 'I') with values in "
                f"[{values.min()}, {values.max()}] to 8-bit RGB: only 0..65535 (16-bit data) has a "
                f"known range; rescale it yourself"
            )
        return _sixteen_bit_to_l(values).convert("RGB")
    if mode == "F":
        values = np.asarray(image)
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise ValueError(
                f"cannot convert a float image (PIL mode 'F') to 8-bit RGB: {bad} of its pixels are NaN or infinite"
            )
        if values.size and (values.min() < 0.0 or values.max() > 1.0):
            raise ValueError(
                f"cannot convert a float image (PIL mode 'F') with values in [{values.min():g}, "
                f"{values.max():g}] to 8-bit RGB: float images must hold values in [0, 1]; rescale it yourself"
            )
        return Image.fromarray(np.rint(values * 255.0).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


# What ImageOps.exif_transpose does for each orientation (PIL's own table), kept here so the
# data sets can decide the frame from the sizes before turning the pixels.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def upright(image: Image.Image, orientation: int) -> Image.Image:
    """``image`` turned as EXIF ``orientation`` says (the pixels ``ImageOps.exif_transpose`` gives).

    As ``exif_transpose`` does, the result no longer carries the orientation tag, so nothing
    downstream (``predict``'s check, another ``exif_transpose``) turns it a second time.
    """
    method = _UPRIGHT.get(int(orientation))
    if method is None:
        return image
    turned = image.transpose(method)
    exif = turned.getexif()
    if EXIF_ORIENTATION in exif:
        del exif[EXIF_ORIENTATION]
        turned.info["exif"] = exif.tobytes()
    return turned


def upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """``(width, height)`` of an image of stored ``size`` once turned upright (5..8 swap the sides)."""
    return (size[1], size[0]) if int(orientation) in (5, 6, 7, 8) else (size[0], size[1])


def read_image(path: PathLike) -> tuple[Image.Image, int]:
    """Decode an image file: its stored pixels as 8-bit RGB (see :func:`to_rgb`) and its EXIF
    orientation (1 when absent). :func:`open_image` is the usual entry point.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an image PIL can decode (corrupt, truncated, another
            format), or its pixels cannot be converted (see :func:`to_rgb`); the message
            names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later in a transform
            return to_rgb(image), exif_orientation(image)
    except UnidentifiedImageError as exc:
        raise ValueError(f"cannot read image {path}: not an image file PIL can identify") from exc
    except ValueError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    except (OSError, SyntaxError) as exc:  # PIL raises SyntaxError for some malformed headers
        raise ValueError(f"cannot read image {path}: corrupt or truncated ({exc})") from exc


def open_image(path: PathLike, *, exif_transpose: bool = True) -> Image.Image:
    """Read an image file as 8-bit RGB, upright as its EXIF orientation says.

    ``exif_transpose=False`` keeps the stored pixels (what pycocotools and torchvision's
    ``CocoDetection`` read). Raises what :func:`read_image` raises.
    """
    image, orientation = read_image(path)
    return upright(image, orientation) if exif_transpose else image
