"""Splitting a dataset into training and validation parts, every class on both sides.

The split is a function of the seed: images are shuffled by it, then the validation side is
filled in three passes. First, rarest class first, one image of each class that has at
least two images (so the class can appear on both sides); then images in shuffled order whose
move leaves every class they hold still present on the training side; then, only if the
requested size is not reached yet, any images. Each side keeps the source's image order.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.errors import InputError


def split_annotations(ann: Annotations, val_fraction: float, seed: int
                      ) -> tuple[Annotations, Annotations]:
    """``(train, val)`` with ``round(val_fraction * N)`` validation images (at least one on
    each side when there are two or more images)."""
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    n = len(ann.images)
    if n < 2:
        raise InputError(f"cannot split {n} image(s); a split needs at least 2")
    n_val = min(max(round(val_fraction * n), 1), n - 1)

    ids = [im["id"] for im in ann.images]
    classes_of = {i: {a["category_id"] for a in ann.objects(i)} for i in ids}
    order = [ids[k] for k in np.random.default_rng(seed).permutation(n)]
    images_with: Counter[Any] = Counter(c for i in ids for c in classes_of[i])
    on_train = Counter(images_with)  # images holding each class still on the training side
    val: set[Any] = set()

    def movable(i: Any) -> bool:
        return all(on_train[c] >= 2 for c in classes_of[i] if images_with[c] >= 2)

    def move(i: Any) -> None:
        val.add(i)
        for c in classes_of[i]:
            on_train[c] -= 1

    in_val = Counter()
    for c in sorted(images_with, key=lambda c: (images_with[c], str(c))):
        if len(val) >= n_val or images_with[c] < 2 or in_val[c]:
            continue
        for i in order:
            if i not in val and c in classes_of[i] and movable(i):
                move(i)
                in_val.update(classes_of[i])
                break
    for strict in (True, False):
        for i in order:
            if len(val) >= n_val:
                break
            if i not in val and (movable(i) or not strict):
                move(i)
    train_ids = [i for i in ids if i not in val]
    val_ids = [i for i in ids if i in val]
    return ann.subset(train_ids), ann.subset(val_ids)


def class_counts(ann: Annotations) -> dict[Any, tuple[int, int]]:
    """``{category_id: (objects, images)}`` over every category of ``ann``."""
    objects, images = Counter(), Counter()
    for im in ann.images:
        cats = [a["category_id"] for a in ann.objects(im["id"])]
        objects.update(cats)
        images.update(set(cats))
    return {c["id"]: (objects[c["id"]], images[c["id"]]) for c in ann.classes}
