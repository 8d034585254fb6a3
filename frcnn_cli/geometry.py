"""The one resize rule shared by the data loader, the model and the statistics.

The paper rescales an image so that its shorter side is ``min_size`` (600) unless the longer
side would then exceed ``max_size`` (1000). The rule is idempotent: an image already resized
by it gets scale 1, so the loader may resize in its workers and the model leaves it alone.
"""

from __future__ import annotations


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Factor that brings the shorter side to ``min_size`` with the longer side at most
    ``max_size``."""
    short, long = min(height, width), max(height, width)
    return min(min_size / short, max_size / long)


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """``(height, width)`` after :func:`resize_scale`, rounded to whole pixels."""
    s = resize_scale(height, width, min_size, max_size)
    return max(1, round(height * s)), max(1, round(width * s))


def is_resized(height: int, width: int, min_size: int, max_size: int) -> bool:
    """True when an image of this shape is already at the rule's size (within rounding)."""
    return resized_shape(height, width, min_size, max_size) == (height, width)
