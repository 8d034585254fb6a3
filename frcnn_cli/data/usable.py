"""What of a dataset training and testing can use, checked before they start.

- :func:`training_objects`: the objects training learns from (not left out as difficult or
  crowd, with a usable box); a training set without one is refused
  (:func:`refuse_nothing_to_learn`) instead of training on nothing and exiting 0.
- :func:`check_size`: an image file must be the size its record states, or its boxes belong
  to another picture of it (training cut them to the file, evaluation scored detections in
  the file's pixels against them); :class:`SizeMismatch` names the image and both sizes. The
  loader checks every image it decodes; :func:`check_sizes` checks them all from the headers
  before training starts.
"""

from __future__ import annotations

import os
from typing import Any

from frcnn_cli.boxes import PARTLY_OUTSIDE, box_problem
from frcnn_cli.config import Recipe
from frcnn_cli.data.annotations import Annotations
from frcnn_cli.errors import DataError


class SizeMismatch(DataError):
    """An image file whose size is not the one its record states."""


def check_training_sets(train: Annotations, val: Annotations | None, recipe: Recipe) -> None:
    """A training run's sets, before its folder is made: something to learn, right sizes."""
    refuse_nothing_to_learn(train, recipe)
    for ann in (train, val):
        if ann is not None:
            check_sizes(ann)


def check_size(annotations: Annotations, record: dict[str, Any], width: int, height: int
               ) -> None:
    """SizeMismatch unless an image file of ``width`` x ``height`` pixels is the size its
    ``record`` states (when it states one). The boxes are in the pixels of the stated size: a
    file of another size would have them cut to it in training, and detections scored
    against them in evaluation, without a word."""
    stated = (record.get("width"), record.get("height"))
    if stated[0] and stated[1] and (width, height) != stated:
        path = annotations.image_path(record)
        turned = " (EXIF orientation turns it)" if (height, width) == stated else ""
        raise SizeMismatch(f"image {record['id']} ({path}) is {width}x{height} pixels but the "
                           f"JSON says {stated[0]}x{stated[1]}{turned}; its boxes would not fit "
                           "it. 'frcnn data check --fix OUT.json' sets the sizes from the "
                           "files, once the boxes are known to be in them")


def check_sizes(annotations: Annotations, workers: int | None = None) -> None:
    """:func:`check_size` of every image from its file's header (cheap: no pixel is decoded),
    so that training refuses a wrong size before it starts. Missing or unreadable files are
    left to the loader, which skips them with a warning."""
    from concurrent.futures import ThreadPoolExecutor

    from frcnn_cli.data.images import image_size

    def probe(record: dict[str, Any]) -> tuple[int, int] | None:
        try:
            return image_size(annotations.image_path(record))
        except DataError:
            return None

    records = [im for im in annotations.images if im.get("width") and im.get("height")]
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        for record, size in zip(records, pool.map(probe, records), strict=True):
            if size is not None:
                check_size(annotations, record, *size)


def training_objects(annotations: Annotations, recipe: Recipe) -> int:
    """How many objects training learns from: those not left out as difficult or crowd
    (``recipe.data``) whose box is usable (finite, with area, not wholly outside its image as
    the JSON states its size). An unknown category counts: the loader refuses it by name."""
    data, count = recipe.data, 0
    for im in annotations.images:
        extent = (float(im["width"]), float(im["height"])) \
            if im.get("width") and im.get("height") else None
        for a in annotations.objects(im["id"]):
            if (a.get("difficult", 0) and not data.use_difficult) \
                    or (a.get("iscrowd", 0) and not data.use_crowd):
                continue
            problem = box_problem(a["bbox"], extent)
            count += problem is None or problem[0] == PARTLY_OUTSIDE
    return count


def refuse_nothing_to_learn(ann: Annotations, recipe: Recipe) -> None:
    """A training set without one object training can use trains nothing: say so, before the
    run folder is made."""
    if not ann.images:
        raise DataError(f"the training set has no images ({ann.path}); training needs at least "
                        "one image with an object")
    if training_objects(ann, recipe):
        return
    n = len(ann.annotations)
    why = "no annotations" if not n else (
        f"its {n} annotation(s) are all difficult, crowd or unusable boxes (see frcnn data "
        "check; data.use_difficult and data.use_crowd keep the first two)")
    raise DataError(f"training set {ann.path or ''} has no object to learn from "
                    f"({len(ann.images)} images, {why}); training needs at least one")
