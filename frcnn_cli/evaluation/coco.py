"""COCO box AP through pycocotools, so the numbers are pycocotools' own.

What this adds around ``COCOeval``: the dataset is handed over from memory (copies, because
COCOeval writes into the annotation dicts), pycocotools' printing is kept off the terminal,
an empty detection list gives zeros instead of pycocotools' IndexError, and per-class AP and
precision-recall curves are read out of the accumulated arrays.

Difficult objects are ordinary objects here: COCOeval only knows ``iscrowd``.

pycocotools scores the best ``max_dets`` detections of each image and class (``maxDets``, 100
by default); a larger cap counts more of a crowded image's objects, detectron2's
``max_dets_per_image``. The recall numbers are named after the caps: AR1, AR10 and AR100 by
default, AR1, AR10 and AR300 with a cap of 300.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from frcnn_cli.data.annotations import Annotations

# pycocotools' default cap on the detections scored per image and class (maxDets[-1]).
MAX_DETS = 100


@dataclass
class CocoResult:
    """``stats``: the 12 summary numbers by name (:func:`stat_names`; None where pycocotools
    gives -1: no object in that size range). ``per_class``: AP@[.5:.95] per class in label
    order (None for a class without objects). ``recall_points``: ``(101,)``;
    ``precision_50``: ``(K, 101)`` precision at IoU 0.5 for every class (all sizes,
    ``max_dets`` detections), -1 for a class without objects."""

    stats: dict[str, float | None]
    per_class: list[float | None]
    recall_points: np.ndarray
    precision_50: np.ndarray


def max_dets_list(max_dets: int) -> list[int]:
    """COCOeval's ``params.maxDets`` for a cap: ``[1, 10, max_dets]``, the first two no larger
    than the cap (``summarize`` reads exactly three)."""
    return [1, min(10, max_dets), max_dets]


def stat_names(max_dets: int = MAX_DETS) -> tuple[str, ...]:
    """The names of COCOeval.stats, in its order, the recall ones after the caps: ``AP``,
    ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``, ``AR10``, ``AR100``, ``ARs``,
    ``ARm``, ``ARl`` for the default cap."""
    caps = max_dets_list(max_dets)
    return ("AP", "AP50", "AP75", "APs", "APm", "APl",
            *(f"AR{m}" for m in caps), "ARs", "ARm", "ARl")


def evaluate_coco(ann: Annotations, detections: list[dict[str, Any]],
                  max_dets: int = MAX_DETS) -> CocoResult:
    """COCO bbox evaluation of ``detections`` (COCO results, checked against ``ann`` already:
    see :func:`frcnn_cli.evaluation.detections.detection_arrays`), scoring the best
    ``max_dets`` (>= 1) of each image and class."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = {
            "images": [dict(im) for im in ann.images],
            # fresh ids: pycocotools keeps one object per id, and a set may repeat one
            "annotations": [{**a, "id": i} for i, a in enumerate(ann.annotations, start=1)],
            "categories": [dict(c) for c in ann.categories],
        }
        gt.createIndex()
        results = [{"image_id": d["image_id"], "category_id": d["category_id"],
                    "bbox": [float(v) for v in d["bbox"]], "score": float(d["score"])}
                   for d in detections]
        dt = gt.loadRes(results) if results else _empty_results(gt)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.maxDets = max_dets_list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [IoU T, recall R, class K, area A, max dets M]
    # summarize reads its first number (AP) at 100 detections whatever the caps (a default
    # argument of pycocotools' own): read it at the cap, as detectron2's COCOevalMaxDets does
    at_cap = precision[:, :, :, 0, -1]
    ev.stats[0] = at_cap[at_cap > -1].mean() if (at_cap > -1).any() else -1.0

    stats = {name: (float(v) if v > -1 else None)
             for name, v in zip(stat_names(max_dets), ev.stats, strict=True)}
    k_of = {cat_id: k for k, cat_id in enumerate(ev.params.catIds)}
    per_class: list[float | None] = []
    curves = []
    for c in ann.classes:
        p = precision[:, :, k_of[c["id"]], 0, -1]
        valid = p[p > -1]
        per_class.append(float(valid.mean()) if valid.size else None)
        curves.append(p[0])
    return CocoResult(stats, per_class, np.asarray(ev.params.recThrs),
                      np.array(curves).reshape(len(ann.classes), -1))


def _empty_results(gt: Any) -> Any:
    """A results object with no detections: ``COCO.loadRes([])`` fails on ``anns[0]``, but
    COCOeval itself scores an empty set fine (every precision 0)."""
    from pycocotools.coco import COCO

    res = COCO()
    res.dataset = {"images": list(gt.dataset["images"]), "annotations": [],
                   "categories": list(gt.dataset["categories"])}
    res.createIndex()
    return res
