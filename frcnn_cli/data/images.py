"""Image decoding that every command shares: one RGB uint8 array, whatever the file holds.

Photos carry an EXIF orientation that viewers honour, so boxes drawn on them are in the
rotated frame: :func:`read_image` and :func:`image_size` apply it too. Grayscale, palette,
RGBA, CMYK and 16-bit files become 8-bit RGB. A missing, truncated or corrupt file raises a
DataError naming it instead of a decoder's traceback.

Large images (orthomosaics, satellite scenes, slide scans) are read up to
:data:`MAX_PIXELS` pixels instead of Pillow's decompression-bomb limit (about 179 million);
larger ones are refused before any pixel is decoded, naming the cap. Odd files:

- 16-bit samples keep their high byte, ``v // 256``, gray and colour alike (Pillow decodes
  16-bit colour so), mapping the full range 0..65535 to 0..255. Data that uses fewer bits
  (12-bit microscopy or 11-bit satellite counts stored in 16) comes out dark: stretch it to
  8 bits before training, and the same way before prediction.
- A TIFF with bands beyond its colour ones that are not declared alpha (an RGB + near
  infrared scene, say) is read as its first three bands, with a warning.
- Files Pillow cannot decode at all (TIFFs of five or more 16-bit bands, float samples) are
  refused with one line naming their bands and sample type.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from frcnn_cli.errors import DataError

log = logging.getLogger("frcnn")

# The most pixels an image may have to be decoded: 2^30, e.g. 32768 x 32768, 3 GiB as RGB.
# Pillow's own limit (its decompression-bomb guard) refuses ~179 million, which an aerial
# orthomosaic passes; the cap keeps the guard's purpose for files that claim absurd sizes.
MAX_PIXELS = 2**30

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm",
                  ".pgm")

# EXIF orientations 5..8 rotate by 90 degrees: width and height swap.
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError,
                  Image.DecompressionBombError)

# TIFF tags read to explain a file Pillow cannot decode.
_TIFF_BITS, _TIFF_SAMPLES, _TIFF_SAMPLE_FORMAT = 258, 277, 339
_SAMPLE_KINDS = {1: "unsigned", 2: "signed", 3: "float"}

# Pillow's limit is a module global; it is lifted only while this module opens a file.
_PIL_LIMIT_LOCK = threading.Lock()
_warned_bands = False


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


def read_image(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode an image file to a uint8 ``[H, W, 3]`` RGB array, EXIF orientation applied.

    Raises DataError naming the file when it is missing, truncated or not an image, or has
    more than ``max_pixels`` pixels (None: no cap).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image not found: {p}")
    try:
        with warnings.catch_warnings():
            # Pillow warns about odd EXIF blocks or palette transparency; the pixels are fine.
            warnings.simplefilter("ignore")
            with open_image(p, max_pixels) as im:
                im.load()
                _warn_dropped_bands(im, p)
                ImageOps.exif_transpose(im, in_place=True)  # no copy of a large photo
                return to_rgb(im)
    except _DECODE_ERRORS as e:
        raise DataError(f"cannot decode image {p}: {_reason(e, p)}") from None


def open_image(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Open an image lazily (header read, pixels not decoded) with ``max_pixels`` as the
    limit instead of Pillow's; use it as a context manager.

    Raises DataError naming the file and the cap when the image has more pixels, and lets
    Pillow's own errors through (:func:`read_image` turns those into DataError).
    """
    p = Path(path)
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(p)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        im.close()
        raise DataError(f"image {p} has {width} x {height} = {width * height:,} pixels, more "
                        f"than the cap of {max_pixels:,}; raise it with --max-pixels where a "
                        "command has it, or cut the image into smaller files")
    return im


def _warn_dropped_bands(im: Image.Image, path: Path) -> None:
    """Pillow decodes a TIFF's undeclared extra bands (RGB + near infrared, say) as RGB,
    silently dropping them: say so, once per process (a dataset has many such files)."""
    global _warned_bands
    tags = getattr(im, "tag_v2", None)
    if _warned_bands or tags is None:
        return
    samples = int(tags.get(_TIFF_SAMPLES, 1))
    if samples > len(im.getbands()):
        _warned_bands = True
        log.warning("%s has %d bands; its first three are read as RGB and the rest ignored "
                    "(further files like it are not reported)", path, samples)


def to_rgb(im: Image.Image) -> np.ndarray:
    """A decoded PIL image as uint8 ``[H, W, 3]`` RGB.

    16-bit images keep their high byte (``v // 256``), as Pillow decodes 16-bit colour.
    32-bit integer images say nothing of the range their values use, so it is read from the
    values: 0..255 is taken as 8-bit data, as it is; 0..65535 as 16-bit (``v / 257``); larger
    values are scaled by the image's maximum. Float images in 0..1 are scaled by 255; alpha is
    dropped.
    """
    if im.mode.startswith("I;16"):
        gray = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = float(np.nanmax(arr)) if arr.size else 0.0
        if im.mode == "F" and top <= 1.0:
            arr = arr * 255.0
        elif im.mode == "I" and 255 < top <= 65535:
            arr = arr / 257.0
        elif im.mode == "I" and top > 65535:
            arr = arr * (255.0 / top)
        gray = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8)  # a writable copy


def image_size(path: str | os.PathLike, decode: bool = False,
               max_pixels: int | None = MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` as :func:`read_image` would return it, from the header only, or
    after decoding the pixels too with ``decode=True`` (which finds truncated files).

    Raises DataError naming the file when it is missing, not an image or (with ``decode``)
    truncated, corrupt or larger than ``max_pixels``. The header alone is read whatever its
    size: it costs no memory.
    """
    width, height, _ = image_header(path, decode, max_pixels)
    return width, height


def read_headers(paths: Sequence[str | os.PathLike], decode: bool = False,
                 workers: int | None = None, each: Callable[[], Any] | None = None
                 ) -> list[tuple[int, int, int] | DataError]:
    """:func:`image_header` of every file, in order, or the DataError that says why it cannot
    be read; read by ``workers`` threads (default up to 8: decoders release the GIL, so
    threads keep every core busy without copying anything). ``each`` is called once per file
    read (a progress bar's advance)."""
    def header(path: str | os.PathLike) -> tuple[int, int, int] | DataError:
        try:
            return image_header(path, decode=decode)
        except DataError as e:
            return e

    found = []
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        for result in pool.map(header, paths):
            found.append(result)
            if each is not None:
                each()
    return found


def image_header(path: str | os.PathLike, decode: bool = False,
                 max_pixels: int | None = MAX_PIXELS) -> tuple[int, int, int]:
    """:func:`image_size` and the file's EXIF orientation (1: none; 2..8 as EXIF numbers
    them, see :func:`orient_boxes`)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image not found: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_image(p, max_pixels if decode else None) as im:
                width, height = im.size
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                if decode:
                    im.load()
    except _DECODE_ERRORS as e:
        what = "decode image" if decode else "read image header"
        raise DataError(f"cannot {what} {p}: {_reason(e, p)}") from None
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return int(width), int(height), int(orientation) if orientation in range(1, 9) else 1


def orient_boxes(boxes: np.ndarray, orientation: int, width: int, height: int) -> np.ndarray:
    """Boxes ``(N, 4)`` ``[x, y, w, h]`` in the pixels of a file's stored (raw) frame,
    ``width`` x ``height``, moved to the frame :func:`read_image` shows after applying the
    EXIF ``orientation``: mirrored (2, 4), turned half way (3), transposed (5, 7) or turned a
    quarter (6 clockwise, 8 anticlockwise), as Pillow's ``exif_transpose``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    w, h = float(width), float(height)
    corners = {  # orientation -> (x1', y1', x2', y2') of the two corners, in any order
        1: (x1, y1, x2, y2), 2: (w - x1, y1, w - x2, y2), 3: (w - x1, h - y1, w - x2, h - y2),
        4: (x1, h - y1, x2, h - y2), 5: (y1, x1, y2, x2), 6: (h - y1, x1, h - y2, x2),
        7: (h - y1, w - x1, h - y2, w - x2), 8: (y1, w - x1, y2, w - x2),
    }[orientation if orientation in range(1, 9) else 1]
    ax, ay, bx, by = corners
    left, top = np.minimum(ax, bx), np.minimum(ay, by)
    return np.stack([left, top, np.maximum(ax, bx) - left, np.maximum(ay, by) - top], axis=1)


def _reason(e: BaseException, path: Path) -> str:
    if isinstance(e, UnidentifiedImageError):
        layout = _tiff_layout(path)
        if layout is not None:
            return layout
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    # Pillow names the path itself; keep the message short and name the file once.
    text = text.replace(f" '{path}'", "").replace(f" {str(path)!r}", "")
    return text.replace("cannot identify image file", "not an image file").split(" '/")[0]


def _tiff_layout(path: Path) -> str | None:
    """Why Pillow cannot read a TIFF, from its first directory: ``"a TIFF of 5 bands of
    16-bit unsigned samples, ..."``; None for a file that is no TIFF."""
    try:
        with open(path, "rb") as f:
            header = f.read(8)
            if header[:4] not in (b"II*\x00", b"MM\x00*"):
                return None
            ifd = TiffImagePlugin.ImageFileDirectory_v2(header)
            f.seek(ifd.next)
            ifd.load(f)
    except (OSError, SyntaxError, ValueError, KeyError):
        return None
    samples = int(ifd.get(_TIFF_SAMPLES, 1))
    bits = ifd.get(_TIFF_BITS, (1,))
    bits = bits[0] if isinstance(bits, tuple) else bits
    kind = ifd.get(_TIFF_SAMPLE_FORMAT, (1,))
    kind = _SAMPLE_KINDS.get(kind[0] if isinstance(kind, tuple) else kind, "unknown")
    return (f"a TIFF of {samples} band(s) of {bits}-bit {kind} samples, which the decoder "
            "does not read; save three bands as 8-bit RGB (e.g. gdal_translate -b 1 -b 2 "
            "-b 3 -ot Byte -scale IN.tif OUT.tif)")
