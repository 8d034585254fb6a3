"""Drawing detections on an image: a box, the class name and the score, one colour per class.

Colours are a fixed palette of strong, distinct hues (class k always gets colour k), and the
label text is black or white, whichever reads better on its colour. Line width and font size
grow with the image so labels stay legible on photos and on tiny synthetic images alike.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Kelly's / Tableau-like distinct colours, ordered so neighbouring labels differ strongly.
PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 225, 25), (128, 0, 0), (170, 255, 195),
    (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128), (255, 255, 255),
]


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
    image = Image.fromarray(pixels).convert("RGB")
    h, w = pixels.shape[:2]
    side = min(h, w)
    width = max(2, round(side / 250))
    font = _font(max(10, min(32, round(side / 40))))
    draw = ImageDraw.Draw(image)
    for i in np.argsort(np.asarray(scores).reshape(-1), kind="stable"):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        colour = class_colour(labels[i])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"{classes[int(labels[i]) - 1]['name']} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = max(1, width)
        # above the box when there is room, else inside its top edge
        ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1
        tx = min(max(0.0, x1), max(0.0, w - tw - 2 * pad))
        draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad], fill=colour)
        draw.text((tx + pad - left, ty + pad - top), text, fill=text_colour(colour), font=font)
    return image
