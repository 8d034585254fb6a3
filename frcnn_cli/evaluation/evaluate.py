"""Score detections against a dataset: one entry point for the VOC07, VOC and COCO metrics.

    ann = load_annotations("demo/val.json")
    result = evaluate_detections(ann, load_detections("dets.json"), metric="voc07")
    result.mAP, result.per_class["circle"]

Classes without an object that counts (for VOC: not difficult, not crowd) have AP None and are
left out of the mean. Objects whose box no detection can match (not finite, no area, wholly
outside the image) count in no metric: they are left out with a warning, as training leaves
them out (:func:`frcnn_cli.data.usable.without_unusable`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.data.usable import nothing_to_score, without_unusable
from frcnn_cli.errors import InputError
from frcnn_cli.evaluation import coco, voc
from frcnn_cli.evaluation.detections import detection_arrays, ground_truth_arrays

log = logging.getLogger("frcnn")

METRICS = ("voc07", "voc", "coco")

METRIC_TITLES = {
    "voc07": "VOC2007 11-point AP at IoU 0.5",
    "voc": "VOC area AP at IoU 0.5",
    "coco": "COCO AP at IoU 0.50:0.95",
}


@dataclass
class PRCurve:
    """One class's precision-recall curve: ``recall``, ``precision`` ``(P,)``."""

    recall: np.ndarray
    precision: np.ndarray


@dataclass
class EvalResult:
    """Scores of one detection set.

    ``per_class`` maps class name to AP (None: no object of the class); ``mAP`` is the mean
    over the classes that have objects. ``summary`` holds COCO's AP50, AP75, APs, APm, APl and
    AR numbers (empty for VOC). ``objects`` and ``detections`` count per class what was scored
    (for VOC, objects that count). ``curves`` maps class name to its precision-recall curve
    (for COCO, at IoU 0.5).
    """

    metric: str
    mAP: float
    per_class: dict[str, float | None]
    summary: dict[str, float | None] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)
    detections: dict[str, int] = field(default_factory=dict)
    curves: dict[str, PRCurve] = field(default_factory=dict)
    num_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        """``{"metric", "mAP", "per_class": {name: AP or null}}``, plus for coco ``AP50``,
        ``AP75``, ``APs``, ``APm``, ``APl`` and the AR numbers."""
        out: dict[str, Any] = {"metric": self.metric, "mAP": self.mAP,
                               "per_class": dict(self.per_class)}
        out.update({k: v for k, v in self.summary.items() if k != "AP"})
        return out


def evaluate_detections(ann: Annotations, detections: list[dict[str, Any]],
                        metric: str = "voc07", source: str = "detections",
                        max_dets: int | None = None) -> EvalResult:
    """Score COCO-results ``detections`` against ``ann`` with ``metric`` (voc07, voc, coco).

    ``max_dets``: the COCO metric's cap on the detections scored per image and class
    (pycocotools' ``maxDets``; None: its default, :data:`coco.MAX_DETS`). The VOC metrics
    score every detection and take no cap.

    Raises DataError for a malformed detection, an image id or category id the dataset does
    not have, or a dataset with no object to score against; InputError for an unknown metric
    or a cap that is not a positive integer or is given to a VOC metric.
    """
    if metric not in METRICS:
        raise InputError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    if max_dets is not None and metric != "coco":
        raise InputError(f"a cap on the detections per image (max_dets {max_dets}) is the coco "
                         f"metric's; {metric} scores every detection")
    if max_dets is not None and (isinstance(max_dets, bool)
                                 or not isinstance(max_dets, (int, np.integer))
                                 or max_dets < 1):
        raise InputError(f"max_dets must be a positive integer, got {max_dets!r}")
    ann = without_unusable(ann)
    dets = detection_arrays(ann, detections, source)
    gt = ground_truth_arrays(ann)
    names = class_names(ann)
    num_classes = len(names)
    det_counts = np.bincount(dets.classes, minlength=num_classes)

    def by_name(values) -> dict[str, Any]:
        return dict(zip(names, values, strict=True))

    if metric == "coco":
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in ann.annotations], dtype=bool)
        if crowd.all():  # also true when there is no object at all
            raise nothing_to_score(ann)
        cap = coco.MAX_DETS if max_dets is None else max_dets
        most = max(Counter(d["image_id"] for d in detections).values(), default=0)
        if most > cap:
            log.warning("pycocotools scores the best %d detections of an image (its maxDets: "
                        "--max-dets) and an image here has %d; --metric voc scores them all",
                        cap, most)
        res = coco.evaluate_coco(ann, detections, cap)
        curves = {name: PRCurve(res.recall_points, np.clip(res.precision_50[k], 0, None))
                  for k, name in enumerate(names) if res.per_class[k] is not None}
        return EvalResult(
            metric, float(res.stats["AP"] or 0.0), by_name(res.per_class),
            summary=dict(res.stats),
            objects=by_name(np.bincount(gt.classes[~crowd], minlength=num_classes).tolist()),
            detections=by_name(det_counts.tolist()), curves=curves,
            num_images=len(ann.images))

    per_class = voc.evaluate_voc(
        gt.images, gt.classes, gt.boxes, gt.ignore, dets.images, dets.classes, dets.boxes,
        dets.scores, num_classes, use_07_metric=(metric == "voc07"))
    scored = [c.ap for c in per_class if c.ap is not None]
    if not scored:
        raise nothing_to_score(ann)
    return EvalResult(
        metric, float(np.mean(scored)), by_name([c.ap for c in per_class]),
        objects=by_name([c.num_positives for c in per_class]),
        detections=by_name(det_counts.tolist()),
        curves={n: PRCurve(c.recall, c.precision)
                for n, c in zip(names, per_class, strict=True) if c.ap is not None},
        num_images=len(ann.images))


def class_names(ann: Annotations) -> list[str]:
    """Class names in label order; a name two categories share gets its id appended so that
    per-class results keep both."""
    names = [c["name"] for c in ann.classes]
    return [f"{n} (id {c['id']})" if names.count(n) > 1 else n
            for n, c in zip(names, ann.classes, strict=True)]
