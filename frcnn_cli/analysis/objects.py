"""A dataset's objects as the detector sees them, and COCO's size buckets: the one object-set
type and the one size rule of ``frcnn data stats`` and ``frcnn anchors --data``.

Sizes come in two kinds of pixels, each used for what it means:

- the *resized* pixels of the network input (the recipe's resize rule,
  :func:`frcnn_cli.geometry.resized_shape`): what the anchors must cover, so the boxes of an
  :class:`ObjectSet` and the box-size distributions are in them;
- the *original* pixels of the image file: COCO's small / medium / large buckets
  (:data:`SIZE_BUCKETS`, area below 32², below 96², above) are defined on them, as
  pycocotools' APs, APm and APl are, so every table that splits by size splits the same
  objects the same way whatever the recipe's input size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from frcnn_cli.config import Recipe
from frcnn_cli.data.usable import unusable_kind
from frcnn_cli.geometry import resize_scale, resized_shape

# COCO's size buckets: (name, lowest area, highest area) in original image pixels
SIZE_BUCKETS = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2),
                ("large", 96.0 ** 2, math.inf))


def size_bucket(area: float) -> str:
    """The bucket of one object ``area`` in original pixels."""
    return next(name for name, lo, hi in SIZE_BUCKETS if lo <= area < hi)


def size_buckets(areas: np.ndarray | Tensor) -> dict[str, np.ndarray | Tensor]:
    """``{bucket: bool mask}`` of object ``areas`` [N] in original pixels (see the module
    doc)."""
    return {name: (areas >= lo) & (areas < hi) for name, lo, hi in SIZE_BUCKETS}


@dataclass
class ObjectSet:
    """Objects as the network sees them: ``boxes`` [N, 4] x1 y1 x2 y2 in resized pixels,
    ``image_sizes`` [N, 2] (height, width of each object's resized image), ``labels`` [N] in
    1..K, ``original_areas`` [N] (w * h in the file's pixels, for :func:`size_buckets`) and
    the class names."""

    boxes: Tensor
    image_sizes: Tensor
    labels: Tensor
    original_areas: Tensor
    class_names: list[str]

    @property
    def areas(self) -> Tensor:
        """[N] areas in resized pixels."""
        return (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])

    def subset(self, index: Tensor) -> ObjectSet:
        return ObjectSet(self.boxes[index], self.image_sizes[index], self.labels[index],
                         self.original_areas[index], self.class_names)

    @classmethod
    def from_annotations(cls, ann, recipe: Recipe) -> ObjectSet:
        """The non-crowd objects of an :class:`~frcnn_cli.data.annotations.Annotations` with a
        usable box (:func:`frcnn_cli.data.usable.unusable_kind`: the rule of training and
        evaluation), resized by the recipe's rule."""
        boxes, sizes, labels, areas = [], [], [], []
        for image in ann.images:
            h, w = int(image["height"]), int(image["width"])
            s = resize_scale(h, w, recipe.input.min_size, recipe.input.max_size)
            size = resized_shape(h, w, recipe.input.min_size, recipe.input.max_size,
                                 floor=recipe.input.resize == "torchvision")
            for obj in ann.objects(image["id"]):
                if obj.get("iscrowd", 0) or unusable_kind(obj, image) is not None:
                    continue
                x, y, bw, bh = obj["bbox"]
                boxes.append([x * s, y * s, (x + bw) * s, (y + bh) * s])
                sizes.append(size)
                labels.append(ann.label_of(obj["category_id"]))
                areas.append(bw * bh)
        return cls(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                   torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2),
                   torch.tensor(labels, dtype=torch.int64),
                   torch.tensor(areas, dtype=torch.float64),
                   [c["name"] for c in ann.classes])
