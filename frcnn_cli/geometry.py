"""The one resize rule, shared by the model, the data statistics and the anchor coverage.

The paper rescales an image so that its shorter side is ``min_size`` (600) unless the longer
side would then exceed ``max_size`` (1000). The model's transform resizes by it
(:mod:`frcnn_cli.model.transform`); data statistics and anchor coverage use it to see objects
as the model sees them.
"""

from __future__ import annotations


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Factor that brings the shorter side to ``min_size`` with the longer side at most
    ``max_size``."""
    short, long = min(height, width), max(height, width)
    return min(min_size / short, max_size / long)


def resized_shape(height: int, width: int, min_size: int, max_size: int,
                  floor: bool = False) -> tuple[int, int]:
    """``(height, width)`` after :func:`resize_scale`, rounded to whole pixels (``floor``:
    rounded down, as torchvision's resize by a scale factor does)."""
    s = resize_scale(height, width, min_size, max_size)
    if floor:
        return max(1, int(height * s)), max(1, int(width * s))
    return max(1, round(height * s)), max(1, round(width * s))

