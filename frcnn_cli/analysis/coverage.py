"""Anchor coverage: how well a set of anchors fits a dataset's objects, and what would fit better.

Each object, resized as the recipe resizes its image, gets its best IoU with the anchors the
RPN would see for that image in training (the anchor grid of the image, anchors crossing the
border left out when the recipe ignores them). Objects at IoU >= ``rpn.fg_iou_thresh`` (0.7)
are positives by the threshold rule; from ``rpn.bg_iou_thresh`` (0.3) up to it they learn
only through the best-anchor rule (one anchor each); below it the RPN barely sees them.
Shares are reported per class and per COCO size bucket (:mod:`frcnn_cli.analysis.objects`: on
the objects' areas in the original pixels, as COCO's APs, APm and APl; the matching itself is
in resized pixels).

Anchors sit every ``stride`` pixels, so an object only a few strides across is matched
closely by none, whatever their sizes: its centre can lie half a stride from the nearest
anchor's, a large share of its side. When the objects are small for the stride
(:data:`SMALL_FOR_STRIDE`), :func:`scale_advice` also tries larger inputs (``input.min_size``
and ``input.max_size`` times :data:`INPUT_SCALES`), each with the recipe's anchors and the
best anchor set fitted at that scale, with its cost in pixels per image.

    recipe = with_anchors(recipe, scales=[4, 8, 16])       # or the recipe's own anchors
    report, suggestions = anchor_coverage(open_dataset("train.json", "anchors"), recipe)

which is, step by step:

    objects = ObjectSet.from_annotations(open_dataset("train.json", "anchors"), recipe)
    report = coverage(objects, recipe.anchors.scales, recipe.anchors.ratios, recipe)
    suggestions = suggest_anchors(objects, recipe)
    advice = scale_advice(open_dataset("train.json", "anchors"), recipe)  # small objects
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_iou

from frcnn_cli.analysis.objects import ObjectSet, size_buckets
from frcnn_cli.config import Recipe
from frcnn_cli.geometry import resized_shape
from frcnn_cli.model.anchors import (
    AnchorGenerator,
    inside_image,
    level_anchor_sizes,
    original_anchors,
)
from frcnn_cli.model.backbones import level_strides

# Objects whose median side after the resize is under this many strides are small for the
# stride. A square object of side s with an anchor of its own size offset by d in x and y has
# IoU (s - d)^2 / (2 s^2 - (s - d)^2); anchors every stride px leave d up to stride / 2, so at
# s = 4 strides the farthest objects reach about IoU 0.6 (under the RPN's 0.7), at 2 strides
# about 0.4, while at 6 strides every object can reach 0.72.
SMALL_FOR_STRIDE = 4.0
# Input scales tried for small objects: input.min_size and input.max_size times these.
INPUT_SCALES = (1.5, 2.0, 3.0)
# A larger input is advised when it puts at least this much more of the objects at IoU >=
# rpn.fg_iou_thresh than the best the recipe's input reaches; among the inputs that do, the
# smallest within ADVICE_SLACK of the best one, as pixels cost time and memory.
SCALE_GAIN = 0.10
ADVICE_SLACK = 0.05


def with_anchors(recipe: Recipe, stride: int | None = None, base_size: int | None = None,
                 scales: list[float] | None = None, ratios: list[float] | None = None
                 ) -> Recipe:
    """``recipe`` with these anchor settings (None: the recipe's). A new stride brings the
    base size along unless one is given: the original's base anchor is one stride square."""
    changes: dict = {}
    if stride is not None:
        changes["stride"] = changes["base_size"] = stride
    if base_size is not None:
        changes["base_size"] = base_size
    if scales is not None:
        changes["scales"] = list(scales)
    if ratios is not None:
        changes["ratios"] = list(ratios)
    if not changes:
        return recipe
    return recipe.model_copy(update={"anchors": recipe.anchors.model_copy(update=changes)})


def anchor_levels(recipe: Recipe) -> list[dict]:
    """The levels the recipe's anchors sit on: ``[{"name", "stride", "sizes"}]`` (one entry,
    named "map", for a single-map backbone; sizes in pixels)."""
    strides, names = level_strides(recipe)
    sizes = level_anchor_sizes(recipe, None if strides is None else len(strides))
    strides = strides or [recipe.anchors.stride]
    return [{"name": n, "stride": s, "sizes": z} for n, s, z in zip(names, strides, sizes,
                                                                   strict=True)]


def image_anchors(recipe: Recipe, height: int, width: int) -> tuple[Tensor, Tensor]:
    """The anchors [A, 4] the model lays over a resized ``height`` x ``width`` image, and the
    level [A] of each (index into :func:`anchor_levels`)."""
    strides, _ = level_strides(recipe)
    anchors = AnchorGenerator.from_recipe(recipe, strides)
    d = recipe.input.size_divisible
    padded = (math.ceil(height / d) * d, math.ceil(width / d) * d)  # as the transform pads
    maps = [(math.ceil(padded[0] / s), math.ceil(padded[1] / s)) for s in anchors.strides]
    boxes = anchors.grid(maps, torch.tensor(padded))
    counts = torch.tensor([h * w * anchors.num_anchors for h, w in maps])
    return boxes, torch.repeat_interleave(torch.arange(len(maps)), counts)


def best_anchors(objects: ObjectSet, scales: list[float], ratios: list[float],
                 recipe: Recipe) -> tuple[Tensor, Tensor]:
    """[N] best IoU of each object with its image's training anchors, and [N] the level of
    that anchor (0 without anchors). ``scales`` (single map) and ``ratios`` replace the
    recipe's."""
    recipe = with_anchors(recipe, scales=scales, ratios=ratios)
    border = recipe.rpn.allowed_border
    best = torch.zeros(len(objects.boxes))
    level = torch.zeros(len(objects.boxes), dtype=torch.int64)
    for h, w in torch.unique(objects.image_sizes, dim=0).tolist():
        anchors, levels = image_anchors(recipe, h, w)
        inside = inside_image(anchors, h, w, border)
        anchors, levels = anchors[inside], levels[inside]
        if len(anchors) == 0:
            continue
        index = torch.nonzero((objects.image_sizes == torch.tensor([h, w])).all(dim=1))[:, 0]
        for chunk in index.split(2048):  # never one huge IoU matrix
            best[chunk], which = box_iou(objects.boxes[chunk], anchors).max(dim=1)
            level[chunk] = levels[which]
    return best, level


def best_anchor_iou(objects: ObjectSet, scales: list[float], ratios: list[float],
                    recipe: Recipe) -> Tensor:
    """[N] best IoU of each object with its image's training anchors."""
    return best_anchors(objects, scales, ratios, recipe)[0]


def shares(best: Tensor, positive: float, negative: float) -> dict[str, float | int]:
    """Object count and the share of best IoUs >= ``positive`` (the RPN's fg_iou_thresh), in
    [``negative``, ``positive``) (from its bg_iou_thresh up), below ``negative``."""
    n = len(best)
    if n == 0:
        return {"objects": 0, "positive": None, "best_only": None, "missed": None}
    return {"objects": n, "positive": float((best >= positive).float().mean()),
            "best_only": float(((best >= negative) & (best < positive)).float().mean()),
            "missed": float((best < negative).float().mean())}


def coverage(objects: ObjectSet, scales: list[float], ratios: list[float],
             recipe: Recipe) -> dict:
    """``{"all": shares, "per_class": {name: shares}, "per_size": {bucket: shares},
    "per_class_size": {name: {bucket: shares}}, "per_level": {level: shares}}`` for these
    anchors, with the thresholds used (``fg_iou_thresh``, ``bg_iou_thresh``: the recipe's RPN
    ones). ``per_level`` counts each object on the level of
    its best anchor (the level whose RPN outputs learn it) and names the level's ``stride``
    and anchor ``sizes``."""
    best, level = best_anchors(objects, scales, ratios, recipe)
    fg, bg = recipe.rpn.fg_iou_thresh, recipe.rpn.bg_iou_thresh
    buckets = size_buckets(objects.original_areas)
    per_class, per_class_size = {}, {}
    for label, name in enumerate(objects.class_names, start=1):
        of_class = objects.labels == label
        per_class[name] = shares(best[of_class], fg, bg)
        per_class_size[name] = {b: shares(best[of_class & m], fg, bg)
                                for b, m in buckets.items()}
    return {"fg_iou_thresh": fg, "bg_iou_thresh": bg,
            "all": shares(best, fg, bg), "per_class": per_class,
            "per_size": {b: shares(best[m], fg, bg) for b, m in buckets.items()},
            "per_class_size": per_class_size,
            "per_level": {lv["name"]: {**lv, **shares(best[level == i], fg, bg)}
                          for i, lv in enumerate(anchor_levels(recipe))}}


def anchor_coverage(ann, recipe: Recipe) -> tuple[dict, list[dict]]:
    """:func:`coverage` of the recipe's anchors on the objects of ``ann`` (an
    :class:`~frcnn_cli.data.annotations.Annotations`), and :func:`suggest_anchors`."""
    objects = ObjectSet.from_annotations(ann, recipe)
    a = recipe.anchors
    return coverage(objects, a.scales, a.ratios, recipe), suggest_anchors(objects, recipe)


def _nice(x: float) -> float:
    """Two significant digits: 2.37 -> 2.4, 11.6 -> 12."""
    if x <= 0:
        return x
    digits = 1 - int(math.floor(math.log10(x)))
    return round(x, digits)


def _quantiles(values: Tensor, n: int) -> list[float]:
    qs = torch.tensor([(i + 0.5) / n for i in range(n)])
    return torch.quantile(values, qs).tolist()


def suggest_anchors(objects: ObjectSet, recipe: Recipe, max_objects: int = 5000) -> list[dict]:
    """Anchor sets fitted to the objects, each with its share of positives (IoU >=
    ``rpn.fg_iou_thresh``); only those that beat the recipe's anchors, best first.

    Candidates: scales and ratios at the quantiles of the objects' sizes and aspect ratios
    (as many as the recipe has), the recipe's anchors plus one scale or one ratio for the
    objects they cover worst, and square anchors spaced by sqrt(2) over the size range.
    Single-map anchors of the paper's style only (scales times the base size); none for
    others.
    """
    if not original_anchors(recipe):
        return []
    a = recipe.anchors
    sub = objects
    if len(objects.labels) > max_objects:  # a fixed, spread-out sample of a large set
        sub = objects.subset(torch.linspace(0, len(objects.labels) - 1, max_objects).long())
    boxes = sub.boxes
    if len(boxes) == 0:
        return []
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.sqrt(w * h) / a.base_size
    aspect = h / w
    positive = recipe.rpn.fg_iou_thresh
    best = best_anchor_iou(sub, a.scales, a.ratios, recipe)
    poor = best < positive
    current = float((best >= positive).float().mean())

    candidates: list[tuple[str, list[float], list[float]]] = []
    n_s, n_r = max(len(a.scales), 3), len(a.ratios)
    fit_scales = sorted({_nice(v) for v in _quantiles(side, n_s)})
    fit_ratios = sorted({_nice(v) for v in _quantiles(aspect, n_r)})
    candidates.append(("fitted to object sizes and shapes", fit_scales, fit_ratios))
    lo, hi = torch.quantile(side, 0.02).item(), torch.quantile(side, 0.98).item()
    n = max(1, math.ceil(math.log(hi / lo) / math.log(math.sqrt(2))) + 1)
    ladder = sorted({_nice(lo * math.sqrt(2) ** i) for i in range(n)})
    candidates.append(("square anchors every sqrt(2) in size", ladder, [1.0]))
    if poor.any():
        extra_scale = _nice(float(side[poor].median()))
        if extra_scale not in a.scales:
            candidates.append(("one more scale for the worst-covered objects",
                               sorted([*a.scales, extra_scale]), list(a.ratios)))
        extra_ratio = _nice(float(aspect[poor].median()))
        if extra_ratio not in a.ratios:
            candidates.append(("one more ratio for the worst-covered objects",
                               list(a.scales), sorted([*a.ratios, extra_ratio])))

    out = []
    for why, scales, ratios in candidates:
        got = float((best_anchor_iou(sub, scales, ratios, recipe) >= positive).float().mean())
        if got > current:
            out.append({"scales": scales, "ratios": ratios, "anchors_per_place":
                        len(scales) * len(ratios), "positive": got, "why": why})
    return sorted(out, key=lambda s: -s["positive"])


def with_input_scale(recipe: Recipe, factor: float) -> Recipe:
    """``recipe`` with ``input.min_size`` and ``input.max_size`` times ``factor`` (rounded)."""
    inp = recipe.input
    update = {"min_size": round(inp.min_size * factor), "max_size": round(inp.max_size * factor)}
    return recipe.model_copy(update={"input": inp.model_copy(update=update)})


def pixels_per_image(ann, recipe: Recipe) -> float:
    """Mean pixels of the images of ``ann`` after the recipe's resize."""
    sizes = [resized_shape(int(im["height"]), int(im["width"]), recipe.input.min_size,
                           recipe.input.max_size) for im in ann.images]
    return sum(h * w for h, w in sizes) / max(len(sizes), 1)


def scale_advice(ann, recipe: Recipe) -> dict:
    """Whether the objects of ``ann`` are small for the stride and, if so, what larger inputs
    give (see the module doc).

    Returns ``{"stride", "median_side" (px after the resize), "small", "scales": [...],
    "advice"}``. Each of ``scales`` (the recipe's input first, then :data:`INPUT_SCALES`; empty
    when the objects are not small) is ``{"factor", "min_size", "max_size", "pixels" (mean per
    image), "cost" (pixels relative to the recipe's), "positive" (share at IoU >=
    rpn.fg_iou_thresh with the recipe's anchors), "best"}``, ``best`` the best anchor set at
    that input (``{"scales", "ratios", "positive"}``, the recipe's own when no suggestion
    beats it). ``advice`` is the chosen entry of ``scales`` (see :data:`SCALE_GAIN`), or None.
    """
    objects = ObjectSet.from_annotations(ann, recipe)
    stride = recipe.anchors.stride
    sides = objects.areas.sqrt()
    median = float(sides.median()) if len(sides) else 0.0
    small = 0 < median < SMALL_FOR_STRIDE * stride
    result = {"stride": stride, "median_side": median, "small": small, "scales": [],
              "advice": None}
    if not small:
        return result
    base_pixels = pixels_per_image(ann, recipe)
    fg = recipe.rpn.fg_iou_thresh
    a = recipe.anchors
    for factor in (1.0, *INPUT_SCALES):
        scaled = with_input_scale(recipe, factor)
        objs = ObjectSet.from_annotations(ann, scaled)
        positive = float((best_anchor_iou(objs, a.scales, a.ratios, scaled) >= fg)
                         .float().mean())
        best = {"scales": list(a.scales), "ratios": list(a.ratios), "positive": positive}
        suggestions = suggest_anchors(objs, scaled)
        if suggestions and suggestions[0]["positive"] > positive:
            best = {k: suggestions[0][k] for k in ("scales", "ratios", "positive")}
        pixels = pixels_per_image(ann, scaled)
        result["scales"].append({
            "factor": factor, "min_size": scaled.input.min_size,
            "max_size": scaled.input.max_size, "pixels": pixels,
            "cost": pixels / base_pixels if base_pixels else None, "positive": positive,
            "best": best})
    now, *larger = result["scales"]
    top = max(s["best"]["positive"] for s in larger)
    good = [s for s in larger if s["best"]["positive"] >= now["best"]["positive"] + SCALE_GAIN
            and s["best"]["positive"] >= top - ADVICE_SLACK]
    result["advice"] = good[0] if good else None
    return result
