"""Drawing detections on an image (a box, the class name and the score, one colour per class)
and writing the drawing, tagged as frcnn's (:func:`save_image`).

Colours are a fixed palette of strong, distinct hues (class k always gets colour k), and the
label text is black or white, whichever reads better on its colour. Line width and font size
grow with the image so labels stay legible on photos and on tiny synthetic images alike.
The error analysis colours boxes by what they are instead (:data:`ERROR_COLOURS`), through
the same :func:`draw_boxes`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from frcnn_cli.files import atomic_open
from frcnn_cli.outputs import DRAWING_SOFTWARE, drawing_metadata

# Suffixes written back in their own format; anything else becomes PNG.
# (BMP holds no tag saying frcnn drew it, so a second run could not replace it: PNG too.)
WRITABLE = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF",
             ".webp": "WEBP"}

# Kelly's / Tableau-like distinct colours, ordered so neighbouring labels differ strongly.
PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 225, 25), (128, 0, 0), (170, 255, 195),
    (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128), (255, 255, 255),
]

# What a box is in the error analysis's drawings: a detection by its TIDE type
# (frcnn_cli.evaluation.tide), an object found, missed or ignored (difficult, crowd).
ERROR_COLOURS = {
    "tp": (60, 180, 75), "cls": (230, 25, 75), "loc": (245, 130, 48), "both": (145, 30, 180),
    "dupe": (255, 225, 25), "bkg": (0, 130, 200), "missed": (240, 50, 230),
    "object": (170, 255, 195), "ignored": (128, 128, 128),
}


def class_colour(label: int) -> tuple[int, int, int]:
    """Colour of label 1..K (label 1 gets the palette's first colour)."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (perceived luminance, ITU-R BT.601)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def draw_detections(pixels: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                    scores: np.ndarray, classes: list[dict[str, Any]]) -> Image.Image:
    """A copy of ``pixels`` (uint8 ``[H, W, 3]`` RGB) with detections drawn on it.

    ``boxes``: ``(N, 4)`` x1 y1 x2 y2 in the image's pixels; ``labels``: ``(N,)`` in 1..K
    (``classes[label - 1]["name"]`` is written); ``scores``: ``(N,)``. Lower scores are drawn
    first so the most confident labels end up on top.
    """
    order = np.argsort(np.asarray(scores).reshape(-1), kind="stable")
    return draw_boxes(pixels, np.asarray(boxes)[order],
                      [class_colour(labels[i]) for i in order],
                      [f"{classes[int(labels[i]) - 1]['name']} {float(scores[i]):.2f}"
                       for i in order])


def draw_boxes(pixels: np.ndarray, boxes: np.ndarray, colours: list[tuple[int, int, int]],
               texts: list[str | None], thin: np.ndarray | None = None) -> Image.Image:
    """A copy of ``pixels`` (uint8 ``[H, W, 3]`` RGB) with boxes drawn in the given order
    (the last on top).

    ``boxes``: ``(N, 4)`` x1 y1 x2 y2 in the image's pixels; ``colours``: N RGB triples;
    ``texts``: N labels, written on the box's colour above it (None: no label); ``thin``:
    ``(N,)`` bool, boxes drawn with half the line width.
    """
    image = Image.fromarray(pixels).convert("RGB")
    h, w = pixels.shape[:2]
    side = min(h, w)
    width = max(2, round(side / 250))
    font = _font(max(10, min(32, round(side / 40))))
    draw = ImageDraw.Draw(image)
    thin = np.zeros(len(colours), dtype=bool) if thin is None else np.asarray(thin)
    for box, colour, text, narrow in zip(boxes, colours, texts, thin, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour,
                       width=max(1, width // 2) if narrow else width)
        if not text:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = max(1, width)
        # above the box when there is room, else inside its top edge
        ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1
        tx = min(max(0.0, x1), max(0.0, w - tw - 2 * pad))
        draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad], fill=colour)
        draw.text((tx + pad - left, ty + pad - top), text, fill=text_colour(colour), font=font)
    return image


def save_image(image, path: Path, software: str = DRAWING_SOFTWARE) -> Path:
    """Write a PIL image atomically in the format its suffix names (JPEG at quality 95),
    tagged as drawn by ``software`` (predict's by default)."""
    fmt = WRITABLE.get(path.suffix.lower(), "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:  # tagged: a later run may replace it, and nothing else
        image.save(f, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}),
                   **drawing_metadata(fmt, software))
    return path
