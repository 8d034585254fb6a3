"""Image and box transforms of the training loader: augmentation and flip.

Boxes here are float32 ``[N, 4]`` numpy arrays, ``x1 y1 x2 y2`` in the current image's
continuous pixel coordinates (a pixel ``i`` spans ``[i, i + 1)``), so a horizontal flip is
``x' = W - x``; no +1 or -1 anywhere. The resize is the model's
(:mod:`frcnn_cli.model.transform`).

The paper's only augmentation, the horizontal flip, is done here exactly and recorded
(``target["flipped"]``); other augmentations come from albumentations as listed in the
recipe's ``augment.extra``, with boxes clipped to the image and slivers dropped.
"""

from __future__ import annotations

import difflib
import random
import warnings
from typing import Any

import numpy as np

from frcnn_cli.config import AugmentConfig
from frcnn_cli.data.images import opencv
from frcnn_cli.errors import RecipeError

# A box narrower or lower than this (pixels of the decoded image) is not an object to learn.
MIN_BOX_SIDE = 1.0


def valid_boxes(boxes: np.ndarray, min_side: float = MIN_BOX_SIDE) -> np.ndarray:
    """Boolean ``[N]``: finite boxes at least ``min_side`` wide and high."""
    finite = np.isfinite(boxes).all(axis=1)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return finite & (np.nan_to_num(w) >= min_side) & (np.nan_to_num(h) >= min_side)


def hflip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """``[N, 4]`` x1y1x2y2 boxes mirrored left to right in an image ``width`` wide."""
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an ``[H, W, C]`` image and its ``[N, 4]`` boxes left to right."""
    # a copy, not ascontiguousarray: numpy calls a one-pixel-wide view contiguous and would
    # keep its negative stride, which torch cannot take
    return image[:, ::-1].copy(), hflip_boxes(boxes, image.shape[1])


class Augmentation:
    """The recipe's ``augment.extra`` as one albumentations pipeline, seeded per sample.

    ``extra`` is a list of ``{name: ClassName, ...kwargs}``; unknown names or arguments raise
    RecipeError naming the entry. Ground-truth boxes and proposals go through it together
    (proposals carry label 0) and are clipped; slivers are dropped afterwards by the caller.
    """

    def __init__(self, extra: list[dict[str, Any]]) -> None:
        opencv()  # before albumentations, which runs cv2 in this process with workers=0
        import albumentations as A

        transforms = [_make_transform(A, i, spec) for i, spec in enumerate(extra)]
        with warnings.catch_warnings():
            # pixel-only pipelines (colour jitter) leave the boxes alone, as they should
            warnings.filterwarnings("ignore", message=".*no transform to process it")
            self.compose = A.Compose(
                transforms,
                bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels", "index"],
                                         clip=True, filter_invalid_bboxes=True),
                strict=True,
            )

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                    np.ndarray]:
        """Returns the image, the surviving boxes, their labels and their input indices."""
        seed = int(rng.integers(2**31))
        self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = self.compose(image=image, bboxes=boxes.reshape(-1, 4), labels=labels,
                           index=np.arange(len(boxes)))
        kept = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        return (out["image"], kept, np.asarray(out["labels"], np.int64).reshape(-1),
                np.asarray(out["index"], np.int64).reshape(-1))


def build_augmentation(augment: AugmentConfig) -> Augmentation | None:
    """The albumentations part of a recipe's ``augment`` section, or None when empty."""
    return Augmentation(augment.extra) if augment.extra else None


def _make_transform(A: Any, i: int, spec: dict[str, Any]) -> Any:
    where = f"augment.extra[{i}]"
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise RecipeError(f"{where} must be a mapping with 'name: TransformName'")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        names = [n for n in dir(A) if isinstance(getattr(A, n), type)
                 and issubclass(getattr(A, n), A.BasicTransform)]
        hint = difflib.get_close_matches(name, names, n=1)
        raise RecipeError(f"{where}: unknown albumentations transform '{name}'"
                          + (f"; did you mean '{hint[0]}'?" if hint else ""))
    if name == "HorizontalFlip":
        raise RecipeError(f"{where}: use augment.hflip for the horizontal flip")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            transform = cls(**kwargs)
    except (TypeError, ValueError) as e:
        lines = str(e).splitlines()
        if len(lines) >= 3 and "validation error" in lines[0]:
            # pydantic's report: "N validation errors", then the argument, then the reason
            arg = lines[1].split(".")[0]
            reason = lines[2].strip().split(" [type=")[0]
            raise RecipeError(f"{where} ({name}): bad '{arg}': {reason}") from None
        raise RecipeError(f"{where} ({name}): {lines[0] if lines else e}") from None
    for w in caught:
        # albumentations only warns about unknown arguments; a typo must not pass silently
        if "not valid for transform" in str(w.message):
            raise RecipeError(f"{where}: {w.message}")
    return transform
