"""Image decoding that every command shares: one RGB uint8 array, whatever the file holds.

Photos carry an EXIF orientation that viewers honour, so boxes drawn on them are in the
rotated frame: :func:`read_image` and :func:`image_size` apply it too. Grayscale, palette,
RGBA, CMYK and 16-bit files become 8-bit RGB. A missing, truncated or corrupt file raises a
DataError naming it instead of a decoder's traceback.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from frcnn_cli.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm",
                  ".pgm")

# EXIF orientations 5..8 rotate by 90 degrees: width and height swap.
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError,
                  Image.DecompressionBombError)


def opencv():
    """The ``cv2`` module, single-threaded in this process.

    OpenCV's own thread pool does not survive ``fork``: a DataLoader worker (or a process
    pool) forked after the parent resized an image with it hangs for ever in its first cv2
    call. Our parallelism is processes and threads of our own, so cv2 gets none.
    """
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    return cv2


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the name ends like a picture the decoder reads."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to a uint8 ``[H, W, 3]`` RGB array, EXIF orientation applied.

    Raises DataError naming the file when it is missing, truncated or not an image.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image not found: {p}")
    try:
        with warnings.catch_warnings():
            # Pillow warns about odd EXIF blocks or palette transparency; the pixels are fine.
            warnings.simplefilter("ignore")
            with Image.open(p) as im:
                im.load()
                ImageOps.exif_transpose(im, in_place=True)  # no copy of a large photo
                return to_rgb(im)
    except _DECODE_ERRORS as e:
        raise DataError(f"cannot decode image {p}: {_reason(e, p)}") from None


def to_rgb(im: Image.Image) -> np.ndarray:
    """A decoded PIL image as uint8 ``[H, W, 3]`` RGB.

    16-bit and 32-bit integer images are scaled from their full range (0..65535) to 0..255;
    float images in 0..1 are scaled by 255; alpha is dropped.
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        elif im.mode != "F":
            arr = arr / 257.0
        gray = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8)  # a writable copy


def image_size(path: str | os.PathLike, decode: bool = False) -> tuple[int, int]:
    """``(width, height)`` as :func:`read_image` would return it, from the header only, or
    after decoding the pixels too with ``decode=True`` (which finds truncated files).

    Raises DataError naming the file when it is missing, not an image or (with ``decode``)
    truncated or corrupt.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image not found: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(p) as im:
                width, height = im.size
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                if decode:
                    im.load()
    except _DECODE_ERRORS as e:
        what = "decode image" if decode else "read image header"
        raise DataError(f"cannot {what} {p}: {_reason(e, p)}") from None
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return int(width), int(height)


def _reason(e: BaseException, path: Path) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    # Pillow names the path itself; keep the message short and name the file once.
    text = text.replace(f" '{path}'", "").replace(f" {str(path)!r}", "")
    return text.replace("cannot identify image file", "not an image file").split(" '/")[0]
