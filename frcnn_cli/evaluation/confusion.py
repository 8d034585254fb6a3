"""The confusion matrix at an operating point, and each class's precision, recall and F1.

At a score threshold T (the one a user deploys at), the detections scoring at least T are
matched to the objects of their image greedily by falling score, whatever the classes: each
takes the free object of highest IoU >= 0.5 (:mod:`frcnn_cli.evaluation.greedy`). The
``(K + 1, K + 1)`` matrix counts, rows ground truth and columns detections, background last:

- a match at ``[object's class][detection's class]`` (off the diagonal: a confusion);
- a detection that took no object at ``[background][its class]``;
- an object no detection took at ``[its class][background]``.

Difficult and crowd objects count nowhere: they are not matched first, and a detection left
without an object that has IoU >= 0.5 with one of them is dropped (Ultralytics' and
MMDetection's matrices match across classes in the same way, without that rule).

Per class c at T, from the matrix: precision = ``M[c, c]`` / detections of c (column sum),
recall = ``M[c, c]`` / objects of c (row sum), F1 = 2 ``M[c, c]`` / (detections + objects);
None where the denominator is 0. The best F1 of each class is sought over every threshold
with same-class matching, as in its AP (:mod:`frcnn_cli.evaluation.tide`): the threshold of
best F1 is the score of the detection where it peaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from frcnn_cli.evaluation.greedy import greedy_match, grouped, pair_iou
from frcnn_cli.evaluation.tide import FG_IOU, IGNORED, TP, Outcomes


@dataclass
class Confusion:
    """``matrix``: ``(K + 1, K + 1)`` int, rows ground truth, columns detections, background
    last, at ``score_thresh``; ``names``: the K class names. ``best_f1``, ``best_f1_thresh``:
    ``(K,)``, each class's best F1 over all thresholds and the threshold giving it (NaN for a
    class that no threshold gives a true positive)."""

    names: list[str]
    matrix: np.ndarray
    score_thresh: float
    best_f1: np.ndarray
    best_f1_thresh: np.ndarray

    def per_class(self) -> dict[str, dict[str, Any]]:
        """``{name: {objects, detections, precision, recall, f1, best_f1, best_f1_thresh}}``
        at ``score_thresh`` (None where undefined)."""
        k = len(self.names)
        hits = np.diag(self.matrix)[:k]
        detections, objects = self.matrix.sum(axis=0)[:k], self.matrix.sum(axis=1)[:k]
        out = {}
        for c, name in enumerate(self.names):
            out[name] = {
                "objects": int(objects[c]), "detections": int(detections[c]),
                "precision": _ratio(hits[c], detections[c]),
                "recall": _ratio(hits[c], objects[c]),
                "f1": _ratio(2 * hits[c], detections[c] + objects[c]),
                "best_f1": _number(self.best_f1[c]),
                "best_f1_thresh": _number(self.best_f1_thresh[c])}
        return out

    def rows(self) -> tuple[list[str], list[list[Any]]]:
        """The matrix as a table: the header (``truth \\ detection``, the classes,
        ``background``) and one row per ground-truth class, its name first."""
        labels = [*self.names, "background"]
        return (["truth \\ detection", *labels],
                [[name, *(int(v) for v in row)]
                 for name, row in zip(labels, self.matrix, strict=True)])

    def to_dict(self) -> dict[str, Any]:
        """The content of ``confusion.json``."""
        return {"score_thresh": self.score_thresh, "iou_thresh": FG_IOU,
                "classes": [*self.names, "background"], "matrix": self.matrix.tolist(),
                "per_class": self.per_class()}


def confusion(out: Outcomes, names: list[str], score_thresh: float) -> Confusion:
    """The matrix of ``out``'s detections scoring at least ``score_thresh`` and each class's
    best F1 (see the module docstring); ``names``: the K class names in label order."""
    best, thresh = best_f1(out, len(names))
    return Confusion(list(names), confusion_matrix(out, len(names), score_thresh),
                     float(score_thresh), best, thresh)


def confusion_matrix(out: Outcomes, num_classes: int, score_thresh: float) -> np.ndarray:
    """``(K + 1, K + 1)`` counts at ``score_thresh``, rows ground truth, columns detections,
    background (index K) last."""
    dets, gt = out.dets, out.gt
    confident = np.flatnonzero(dets.scores >= score_thresh)
    truth, found = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for d, g in zip(grouped(dets.images[confident], out.num_images, dets.scores[confident]),
                    grouped(gt.images, out.num_images), strict=True):
        d = confident[d]
        counted, ignored = g[~gt.ignore[g]], g[gt.ignore[g]]
        iou = pair_iou(dets.boxes[d], gt.boxes[counted])
        match = greedy_match(iou, np.ones(iou.shape, dtype=bool), FG_IOU)
        hit = match >= 0
        dropped = ~hit & (pair_iou(dets.boxes[d], gt.boxes[ignored]) >= FG_IOU).any(axis=1)
        alone = ~hit & ~dropped
        unfound = np.ones(len(counted), dtype=bool)
        unfound[match[hit]] = False
        truth += [gt.classes[counted[match[hit]]], np.full(alone.sum(), num_classes),
                  gt.classes[counted[unfound]]]
        found += [dets.classes[d[hit]], dets.classes[d[alone]],
                  np.full(unfound.sum(), num_classes)]
    size = num_classes + 1
    cells = np.concatenate(truth) * size + np.concatenate(found)
    return np.bincount(cells, minlength=size * size).reshape(size, size)


def best_f1(out: Outcomes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class's best F1 over all score thresholds, same-class matching (``out``'s), and
    the threshold giving it: ``(K,)`` and ``(K,)``, NaN threshold (and F1 0) for a class
    that no threshold gives a true positive. A threshold keeps every detection scoring at
    least it, so the F1 is read only where the score falls (ties go together)."""
    scored = out.det_type != IGNORED
    classes, scores = out.dets.classes[scored], out.dets.scores[scored]
    hits = out.det_type[scored] == TP
    objects = np.bincount(out.gt.classes[~out.gt.ignore], minlength=num_classes)
    f1, thresh = np.zeros(num_classes), np.full(num_classes, np.nan)
    for c, idx in enumerate(grouped(classes, num_classes, scores)):
        if len(idx) == 0:
            continue
        ranked = scores[idx]
        curve = 2 * np.cumsum(hits[idx]) / (np.arange(1, len(idx) + 1) + objects[c])
        curve[:-1][ranked[1:] == ranked[:-1]] = -1.0  # no threshold splits equal scores
        best = int(curve.argmax())  # the first peak: the highest threshold giving it
        if curve[best] > 0:
            f1[c], thresh[c] = curve[best], ranked[best]
    return f1, thresh


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _number(v: float) -> float | None:
    return None if np.isnan(v) else float(v)
