"""What a dataset holds, seen the way the detector will see it.

Box sizes are measured after the recipe's resize (shorter side ``input.min_size``, longer at
most ``input.max_size``), since that is what the anchors must cover; COCO's small / medium /
large split uses the original pixels, as COCO does (the one rule of
:mod:`frcnn_cli.analysis.objects`, which ``frcnn anchors --data`` splits by too).
Boxes with non-finite or non-positive sides are counted apart and left out of the
distributions (``frcnn data check`` tells where they are).

When the recipe sets ``data.repeat_threshold``, the statistics also say what repeat-factor
sampling (:mod:`frcnn_cli.data.sampler`) makes of the classes: per class its r(c), and the
images holding it in an epoch, before and after (expected numbers: the factors are rounded
stochastically), counted on the objects training uses (difficult and crowd ones left out
unless the recipe trains on them).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_cli.analysis.objects import size_bucket
from frcnn_cli.boxes import is_degenerate
from frcnn_cli.config import Recipe
from frcnn_cli.data.annotations import Annotations
from frcnn_cli.data.images import image_size
from frcnn_cli.errors import DataError
from frcnn_cli.geometry import resize_scale


@dataclass
class DatasetStats:
    """Counts and distributions of one dataset; arrays hold one value per image or box."""

    num_images: int
    num_objects: int
    min_size: int
    max_size: int
    images_without_objects: int = 0
    invalid_boxes: int = 0
    # per category in label order: {"id", "name", "objects", "images", "difficult", "crowd"}
    classes: list[dict[str, Any]] = field(default_factory=list)
    objects_per_image: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    box_sides: np.ndarray = field(default_factory=lambda: np.zeros(0))  # sqrt(w h), resized
    box_widths: np.ndarray = field(default_factory=lambda: np.zeros(0))  # resized pixels
    box_heights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # resized pixels
    aspect_ratios: np.ndarray = field(default_factory=lambda: np.zeros(0))  # h / w
    coco_sizes: dict[str, int] = field(default_factory=dict)  # small, medium, large
    repeat: dict[str, Any] | None = None  # repeat-factor sampling (see repeat_summary)

    def distributions(self) -> dict[str, dict[str, float]]:
        """Quantiles of each distribution: ``{name: {min, p5, median, p95, max, mean}}``."""
        return {
            "objects/image": quantiles(self.objects_per_image),
            "box side √(wh)": quantiles(self.box_sides),
            "box width": quantiles(self.box_widths),
            "box height": quantiles(self.box_heights),
            "aspect h/w": quantiles(self.aspect_ratios),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no per-box arrays)."""
        out = {"images": self.num_images, "objects": self.num_objects,
               "images_without_objects": self.images_without_objects,
               "invalid_boxes": self.invalid_boxes,
               "resize": {"min_size": self.min_size, "max_size": self.max_size},
               "classes": self.classes, "coco_sizes": self.coco_sizes,
               "distributions": self.distributions()}
        if self.repeat is not None:
            out["repeat_factors"] = self.repeat
        return out


def quantiles(values: np.ndarray) -> dict[str, float]:
    """min, 5th percentile, median, 95th percentile, max and mean (NaN when empty)."""
    if len(values) == 0:
        return {k: math.nan for k in ("min", "p5", "median", "p95", "max", "mean")}
    v = np.asarray(values, np.float64)
    p5, med, p95 = np.percentile(v, [5, 50, 95])
    return {"min": float(v.min()), "p5": float(p5), "median": float(med), "p95": float(p95),
            "max": float(v.max()), "mean": float(v.mean())}


def dataset_stats(ann: Annotations, recipe: Recipe | None = None) -> DatasetStats:
    """Statistics of ``ann`` with box sizes after ``recipe``'s resize (None: the paper's)."""
    recipe = recipe or Recipe()
    min_size, max_size = recipe.input.min_size, recipe.input.max_size
    stats = DatasetStats(len(ann.images), len(ann.annotations), min_size, max_size)
    per_image = np.array([len(ann.objects(im["id"])) for im in ann.images], np.int64)
    stats.objects_per_image = per_image
    stats.images_without_objects = int((per_image == 0).sum())

    objects, images, difficult, crowd = Counter(), Counter(), Counter(), Counter()
    sides, widths, heights, aspects = [], [], [], []
    coco = Counter({"small": 0, "medium": 0, "large": 0})
    for im in ann.images:
        scale = _scale(ann, im, min_size, max_size)
        seen = set()
        for a in ann.objects(im["id"]):
            cat = a["category_id"]
            objects[cat] += 1
            seen.add(cat)
            difficult[cat] += bool(a.get("difficult", 0))
            crowd[cat] += bool(a.get("iscrowd", 0))
            _, _, w, h = a["bbox"]
            if is_degenerate(a["bbox"]):
                stats.invalid_boxes += 1
                continue
            area = w * h
            coco[size_bucket(area)] += 1
            if scale is not None:
                sides.append(math.sqrt(area) * scale)
                widths.append(w * scale)
                heights.append(h * scale)
            aspects.append(h / w)
        images.update(seen)
    stats.classes = [{"id": c["id"], "name": c["name"], "objects": objects[c["id"]],
                      "images": images[c["id"]], "difficult": difficult[c["id"]],
                      "crowd": crowd[c["id"]]} for c in ann.classes]
    stats.box_sides = np.array(sides)
    stats.box_widths = np.array(widths)
    stats.box_heights = np.array(heights)
    stats.aspect_ratios = np.array(aspects)
    stats.coco_sizes = dict(coco)
    if recipe.data.repeat_threshold is not None:
        stats.repeat = repeat_summary(ann, recipe)
    return stats


def repeat_summary(ann: Annotations, recipe: Recipe) -> dict[str, Any]:
    """What ``recipe.data.repeat_threshold`` t makes of each class of ``ann``'s training:
    ``{"threshold": t, "images_per_epoch": {"before", "after"}, "classes": [{"id", "name",
    "repeat": r(c), "images": {"before", "after"}, "frequency": {"before", "after"}}]}``, a
    class's images being those holding it per epoch (``after``: expected, sum of their
    repeat factors) and its frequency their fraction of the epoch's images."""
    from frcnn_cli.data.dataset import DetectionDataset
    from frcnn_cli.data.sampler import class_repeat_factors, repeat_factors

    threshold = recipe.data.repeat_threshold
    labels = DetectionDataset(ann, recipe, train=True).image_labels
    per_class = class_repeat_factors(labels, ann.num_classes, threshold)
    per_image = repeat_factors(labels, ann.num_classes, threshold)
    holds = np.zeros((len(labels), ann.num_classes + 1), bool)  # [N, K + 1]: image i has c
    for i, image_labels in enumerate(labels):
        holds[i, image_labels] = True
    images, expected = holds.sum(axis=0), per_image @ holds  # [K + 1] each
    before, after = len(labels), float(per_image.sum())
    classes = [{"id": category["id"], "name": category["name"],
                "repeat": float(per_class[label]),
                "images": {"before": int(images[label]), "after": float(expected[label])},
                "frequency": {"before": int(images[label]) / max(before, 1),
                              "after": float(expected[label]) / after if after else 0.0}}
               for label, category in enumerate(ann.classes, start=1)]
    return {"threshold": threshold, "images_per_epoch": {"before": before, "after": after},
            "classes": classes}


def _scale(ann: Annotations, im: dict[str, Any], min_size: int, max_size: int
           ) -> float | None:
    w, h = im.get("width"), im.get("height")
    if not w or not h:
        try:
            w, h = image_size(ann.image_path(im))
        except DataError:
            return None
    return resize_scale(h, w, min_size, max_size)


PLOT_FILES = ("classes.png", "objects_per_image.png", "box_sizes.png", "aspect_ratios.png")


def plot_stats(stats: DatasetStats, folder: str | os.PathLike) -> list[Path]:
    """Write histograms as PNG files (:data:`PLOT_FILES`) into ``folder``; returns their
    paths. A file there that is not an earlier plot is refused (InputError)."""
    import matplotlib

    from frcnn_cli.files import prepare_output_dir
    from frcnn_cli.outputs import PLOT, PLOT_SOFTWARE

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    folder = prepare_output_dir(folder, writes=[(name, PLOT) for name in PLOT_FILES])
    written = []

    def save(fig: Any, name: str) -> None:
        path = folder / name
        fig.tight_layout()
        fig.savefig(path, dpi=100, metadata={"Software": PLOT_SOFTWARE})
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(stats.classes) + 2), 4))
    ax.bar([c["name"] for c in stats.classes], [c["objects"] for c in stats.classes])
    ax.set_ylabel("objects")
    ax.set_title("objects per class")
    ax.tick_params(axis="x", rotation=60)
    save(fig, "classes.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    top = int(stats.objects_per_image.max()) if len(stats.objects_per_image) else 0
    ax.hist(stats.objects_per_image, bins=np.arange(top + 2) - 0.5)
    ax.set_xlabel("objects in the image")
    ax.set_ylabel("images")
    ax.set_title("objects per image")
    save(fig, "objects_per_image.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    if len(stats.box_sides):
        lo, hi = max(stats.box_sides.min(), 1.0), max(stats.box_sides.max(), 2.0)
        ax.hist(stats.box_sides, bins=np.geomspace(lo, hi * 1.01, 40))
        ax.set_xscale("log")
        # plain pixel numbers on the log axis, not powers of ten
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"sqrt(w h) in pixels after resize ({stats.min_size}/{stats.max_size})")
    ax.set_ylabel("boxes")
    ax.set_title("box sizes")
    save(fig, "box_sizes.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    if len(stats.aspect_ratios):
        ax.hist(np.log2(stats.aspect_ratios), bins=40)
    ax.set_xlabel("log2(h / w)")
    ax.set_ylabel("boxes")
    ax.set_title("box aspect ratios")
    save(fig, "aspect_ratios.png")
    return written
