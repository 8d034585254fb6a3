"""What a box is: the one validator every reader of boxes uses.

A box in a dataset or a detections file is ``[x, y, w, h]``, four real numbers (JSON ints or
floats; never strings or booleans) in continuous pixels. :func:`require_xywh` refuses
anything else, naming the entry; :func:`box_problem` says what is wrong with the values of a
well-formed box (the kinds ``frcnn data check`` reports, and that training, evaluation and
the anchor coverage leave out). Proposals are ``x1 y1 x2 y2`` tensors:
:func:`bad_xyxy_rows` finds the rows that are not finite or have negative sides.
:func:`clip_boxes` clips ``x1 y1 x2 y2`` boxes to their image, numpy arrays (the data loader)
and tensors (the model) alike.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from frcnn_cli.errors import DataError

if TYPE_CHECKING:
    import torch

MIN_SIDE = 1.0  # pixels: a box narrower or lower is not an object to learn
_SLACK = 1e-3  # pixels a box may poke out of its image (float rounding)

# The kinds of box_problem, in the words data check uses.
DEGENERATE = "degenerate box"
OUTSIDE = "box outside image"
PARTLY_OUTSIDE = "box partly outside image"
TINY = "tiny box"
# ... and counted in messages
PLURAL = {DEGENERATE: "degenerate boxes", OUTSIDE: "boxes outside their image",
          TINY: "boxes under a pixel"}


def is_number(value: Any) -> bool:
    """A JSON number: int or float, not a bool (``True`` is an int to Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_xywh(box: Any, where: str) -> list[float]:
    """``box`` if it is a list of four numbers, else DataError naming ``where``."""
    if not isinstance(box, list) or len(box) != 4 or not all(is_number(v) for v in box):
        raise DataError(f"{where}: 'bbox' must be [x, y, w, h] numbers, got {box!r}")
    return box


def box_problem(bbox: list[float], extent: tuple[float, float] | None = None
                ) -> tuple[str, str] | None:
    """The kind and description of what is wrong with one ``[x, y, w, h]`` box in an image of
    ``extent = (width, height)`` (None: unknown), or None when it is fine."""
    kind = box_kind(bbox, extent)
    if kind is None:
        return None
    shown = "[" + ", ".join(f"{v:g}" for v in bbox) + "]"  # only for a box with a problem
    if kind == DEGENERATE:
        why = "is not finite" if not all(math.isfinite(v) for v in bbox) else \
            "has a zero or negative side"
        return kind, f"box {shown} {why}"
    if kind == TINY:
        return kind, f"box {shown} is under a pixel wide or high"
    width, height = extent
    where = "lies outside" if kind == OUTSIDE else "reaches outside"
    return kind, f"box {shown} {where} the {width:g}x{height:g} image"


def box_kind(bbox: list[float], extent: tuple[float, float] | None = None) -> str | None:
    """The kind of :func:`box_problem`, first found first, without its description."""
    x, y, w, h = bbox
    if not all(math.isfinite(v) for v in bbox) or w <= 0 or h <= 0:
        return DEGENERATE
    if extent is not None:
        width, height = extent
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            return OUTSIDE
        if x < -_SLACK or y < -_SLACK or x + w > width + _SLACK or y + h > height + _SLACK:
            return PARTLY_OUTSIDE
    if w < MIN_SIDE or h < MIN_SIDE:
        return TINY
    return None


def is_degenerate(bbox: list[float]) -> bool:
    """Not finite, or without area: no detection can ever match it."""
    return box_kind(bbox) == DEGENERATE


def bad_xyxy_rows(boxes: torch.Tensor) -> torch.Tensor:
    """Bool ``[N]``: rows of ``[N, 4]`` x1 y1 x2 y2 boxes that are not finite or have
    x2 < x1 or y2 < y1."""
    boxes = boxes.reshape(-1, 4)
    return (~boxes.isfinite().all(dim=1) | (boxes[:, 2] < boxes[:, 0])
            | (boxes[:, 3] < boxes[:, 1]))


def clip_boxes(boxes, height, width):
    """``boxes`` ``[..., 4]`` x1 y1 x2 y2 clipped to the image ``[0, width] x [0, height]``.

    A numpy array with numbers for the size, or a tensor with numbers or tensors that
    broadcast to ``boxes[..., 0]`` (a size per image of a batch: ``[B, 1]`` for ``[B, N, 4]``).
    Returns a new array or tensor; exact (a clamp), and traceable for export.
    """
    if isinstance(boxes, np.ndarray):
        out = boxes.copy()
        out[..., 0::2] = np.clip(out[..., 0::2], 0, width)
        out[..., 1::2] = np.clip(out[..., 1::2], 0, height)
        return out
    import torch  # loaded already when boxes are a tensor; data commands need none

    h = torch.as_tensor(height, dtype=boxes.dtype, device=boxes.device)
    w = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)
    zero = torch.zeros_like(w)
    return torch.stack([boxes[..., 0].clamp(zero, w), boxes[..., 1].clamp(zero, h),
                        boxes[..., 2].clamp(zero, w), boxes[..., 3].clamp(zero, h)], dim=-1)
