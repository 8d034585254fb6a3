"""Where the missing AP goes: TIDE's error types (Bolya, Foley, Hays, Hoffman, "TIDE: A
General Toolbox for Identifying Object Detection Errors", ECCV 2020).

Detections are matched to the objects of their class greedily by falling score at IoU >=
t_f = 0.5 (:mod:`frcnn_cli.evaluation.greedy`); a matched detection is a true positive. Every
other detection gets one error type, tested in this order (the paper's Section 2.2, TIDE's
code), with IoU taken against the objects of its image:

1. ``loc``: its best IoU with an object of its class lies in [t_b, t_f] (t_b = 0.1): right
   class, poorly placed;
2. ``cls``: IoU >= t_f with an object of another class: right place, wrong class;
3. ``dupe``: IoU >= t_f with an object of its class that a higher-scoring detection took;
4. ``bkg``: IoU <= t_b with every object: it found background;
5. ``both``: anything else (wrong class and poorly placed).

An object no detection took and no ``cls`` or ``loc`` error points at is ``miss``.

Each type's dAP is the AP after fixing every error of that type alone, minus the AP (TIDE
fixes the types one at a time against the original, not one after the other, so the order
of the list changes nothing; negative results are set to 0, as TIDE does):

- ``cls``, ``loc``: of the errors pointing at one object that no detection took, the highest
  scoring becomes a true positive (of the object's class); the others, and those pointing at
  a taken object, are removed;
- ``dupe``, ``bkg``, ``both``: the detections are removed;
- ``miss``: the missed objects are removed from the objects to find.

``false_pos`` is the AP with every true positive scored above every false positive, minus
the AP (perfect precision at the same recall); ``false_neg`` the AP counting only the objects
that were found, minus the AP (perfect recall at the same precision); neither is clipped.

AP is TIDE's: for each class, COCO's 101-point interpolated AP at IoU 0.5 (precision made
non-increasing, sampled at recall 0, 0.01, ..., 1); the mean is over the classes with an
object or a detection, so a class with detections and no object counts as AP 0. As in TIDE
and the model's own ``detections_per_img``, only the best ``max_dets`` detections of each
image (all classes together) are looked at.

Difficult and crowd objects are ignored as frcnn's VOC evaluation ignores them: they are not
objects to find (never missed), and a detection that matches none of the counted objects but
has IoU >= t_f with an ignored object of its class is neither a true positive nor an error.
TIDE itself knows crowd regions only: it also tests a detection against them after the
matching, but by the share of the detection's area inside the region (COCO's crowd
overlap) rather than IoU, has no notion of difficult objects, and still gives an ignored
detection an error type (which can, through a ``cls`` or ``loc`` fix, turn it into a true
positive). Without difficult or crowd objects the numbers here are TIDE's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from frcnn_cli.evaluation.coco import MAX_DETS
from frcnn_cli.evaluation.detections import DetectionArrays, GroundTruthArrays
from frcnn_cli.evaluation.greedy import greedy_match, grouped, pair_iou

FG_IOU = 0.5  # t_f: IoU of a true positive with its object
BG_IOU = 0.1  # t_b: at most this IoU with every object, a detection found background
# COCO's 101 recall points, computed as TIDE does (x / 100) so that a recall of exactly
# k / 100 meets its point
RECALL_POINTS_101 = np.arange(101) / 100

ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "miss")
# what a detection is: the index into DETECTION_TYPES, or IGNORED
DETECTION_TYPES = ("tp", "cls", "loc", "both", "dupe", "bkg")
TP, CLS, LOC, BOTH, DUPE, BKG = range(len(DETECTION_TYPES))
IGNORED = -1


@dataclass
class Outcomes:
    """Every detection looked at and every object of a set, and what TIDE makes of each.

    ``dets``: the best ``max_dets`` detections of each image, in the given order;
    ``det_type``: ``(D,)`` int8, TP, CLS, LOC, BOTH, DUPE, BKG or IGNORED; ``det_object``:
    ``(D,)`` the object (index into ``gt``) a true positive took or a ``cls``/``loc`` error
    points at, else -1. ``gt``: the objects; ``taken_by``: ``(G,)`` the detection that took
    each object, or -1. Image indices of both are below ``num_images``.
    """

    dets: DetectionArrays
    det_type: np.ndarray
    det_object: np.ndarray
    gt: GroundTruthArrays
    taken_by: np.ndarray
    num_images: int

    def fixable(self) -> np.ndarray:
        """``(D,)`` bool: the ``cls`` and ``loc`` errors that fixing turns into true positives,
        the highest scoring of those pointing at each object that no detection took."""
        candidates = np.flatnonzero(np.isin(self.det_type, (CLS, LOC)))
        candidates = candidates[self.taken_by[self.det_object[candidates]] < 0]
        by_score = candidates[np.argsort(-self.dets.scores[candidates], kind="stable")]
        _, first = np.unique(self.det_object[by_score], return_index=True)
        fixable = np.zeros(len(self.det_type), dtype=bool)
        fixable[by_score[first]] = True
        return fixable

    def missed(self) -> np.ndarray:
        """``(G,)`` bool: TIDE's missed objects, counted ones that no detection took and no
        ``cls`` or ``loc`` error points at."""
        pointed = np.zeros(len(self.taken_by), dtype=bool)
        pointed[self.det_object[np.isin(self.det_type, (CLS, LOC))]] = True
        return ~self.gt.ignore & (self.taken_by < 0) & ~pointed

    def missed_at(self, score_thresh: float) -> np.ndarray:
        """``(G,)`` bool: counted objects that no detection scoring at least ``score_thresh``
        took (greedy matching by falling score: the same as matching those detections alone)."""
        taken = self.taken_by >= 0
        score = np.full(len(taken), -np.inf)
        score[taken] = self.dets.scores[self.taken_by[taken]]
        return ~self.gt.ignore & ~(score >= score_thresh)


@dataclass
class ErrorReport:
    """TIDE's numbers, fractions of 1: ``ap50``, ``dAP`` by :data:`ERROR_TYPES`,
    ``false_pos``, ``false_neg``; ``counts`` of each error type and of all false positives
    and false negatives."""

    ap50: float
    dAP: dict[str, float]
    false_pos: float
    false_neg: float
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``errors.json``."""
        return {"ap50": self.ap50, "dAP": dict(self.dAP), "false_pos": self.false_pos,
                "false_neg": self.false_neg, "counts": dict(self.counts),
                "fg_iou": FG_IOU, "bg_iou": BG_IOU}


def find_outcomes(gt: GroundTruthArrays, dets: DetectionArrays, num_images: int,
                  max_dets: int = MAX_DETS) -> Outcomes:
    """Match and type the best ``max_dets`` detections of each image (arrays as
    :func:`frcnn_cli.evaluation.detections.detection_arrays` and ``ground_truth_arrays``
    give them, image indices below ``num_images``)."""
    best = grouped(dets.images, num_images, dets.scores)
    keep = np.sort(np.concatenate([idx[:max_dets] for idx in best] or [np.zeros(0, int)]))
    dets = DetectionArrays(dets.images[keep], dets.classes[keep], dets.boxes[keep],
                           dets.scores[keep])
    det_type = np.full(len(keep), BKG, dtype=np.int8)
    det_object = np.full(len(keep), -1, dtype=np.int64)
    taken_by = np.full(len(gt.classes), -1, dtype=np.int64)
    for d, g in zip(grouped(dets.images, num_images, dets.scores),
                    grouped(gt.images, num_images), strict=True):
        if len(d) == 0:
            continue
        types, objects, took = type_image(dets.boxes[d], dets.classes[d], gt.boxes[g],
                                          gt.classes[g], gt.ignore[g])
        det_type[d] = types
        points, taken = objects >= 0, took >= 0
        det_object[d[points]] = g[objects[points]]
        taken_by[g[taken]] = d[took[taken]]
    return Outcomes(dets, det_type, det_object, gt, taken_by, num_images)


def type_image(det_boxes: np.ndarray, det_classes: np.ndarray, gt_boxes: np.ndarray,
               gt_classes: np.ndarray, gt_ignore: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: detections ``(D, 4)`` xywh and ``(D,)`` classes, by falling score; objects
    ``(G, 4)``, ``(G,)``, ``gt_ignore`` ``(G,)`` bool. Returns the detections' types ``(D,)``,
    the object each took or points at ``(D,)`` (-1: none) and the detection that took each
    object ``(G,)`` (-1: none)."""
    iou = pair_iou(det_boxes, gt_boxes)
    same = det_classes[:, None] == gt_classes[None, :]
    counted = ~gt_ignore
    match = greedy_match(iou, same & counted[None, :], FG_IOU)
    matched = match >= 0
    took = np.full(len(gt_classes), -1, dtype=np.int64)
    took[match[matched]] = np.flatnonzero(matched)
    on_ignored = ~matched & (same & gt_ignore[None, :] & (iou >= FG_IOU)).any(axis=1)
    if not counted.any():  # nothing to find here: every other detection found background
        return np.where(matched | on_ignored, IGNORED, BKG).astype(np.int8), match, took

    # TIDE's tests look at counted objects only; a pair left out has IoU 0, as in TIDE
    iou = np.where(counted[None, :], iou, 0.0)
    same_iou = np.where(same, iou, 0.0)
    other_iou = np.where(same, 0.0, iou)
    rows = np.arange(len(det_boxes))
    loc_object, cls_object = same_iou.argmax(axis=1), other_iou.argmax(axis=1)
    loc_iou, cls_iou = same_iou[rows, loc_object], other_iou[rows, cls_object]
    dupe_iou = np.where(took[None, :] >= 0, same_iou, 0.0).max(axis=1)
    tests = [matched, on_ignored, (loc_iou >= BG_IOU) & (loc_iou <= FG_IOU),
             cls_iou >= FG_IOU, dupe_iou >= FG_IOU, iou.max(axis=1) <= BG_IOU]
    types = np.select(tests, [TP, IGNORED, LOC, CLS, DUPE, BKG], BOTH).astype(np.int8)
    objects = np.select([matched, types == LOC, types == CLS], [match, loc_object, cls_object],
                        -1)
    return types, objects, took


def class_ap(scores: np.ndarray, hits: np.ndarray, num_objects: int) -> float:
    """101-point interpolated AP of one class: ``scores``, ``hits`` (true positive or not)
    ``(N,)`` of its detections, ``num_objects`` to find (AP 0 when there is none)."""
    if num_objects <= 0 or len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    found = np.cumsum(hits[order], dtype=np.float64)
    precision = found / np.arange(1, len(order) + 1)
    recall = found / num_objects
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, RECALL_POINTS_101, side="left")
    sampled = np.where(at < len(order), envelope[np.minimum(at, len(order) - 1)], 0.0)
    return float(sampled.mean())


def mean_ap(classes: np.ndarray, scores: np.ndarray, hits: np.ndarray,
            num_objects: np.ndarray) -> float:
    """TIDE's mAP: the mean :func:`class_ap` over the classes with an object or a detection.
    ``classes``, ``scores``, ``hits``: ``(N,)`` per detection; ``num_objects``: ``(K,)``."""
    aps = [class_ap(scores[idx], hits[idx], int(num_objects[c]))
           for c, idx in enumerate(grouped(classes, len(num_objects)))
           if len(idx) or num_objects[c] > 0]
    return float(np.mean(aps)) if aps else 0.0


def tide_errors(out: Outcomes, num_classes: int) -> ErrorReport:
    """TIDE's dAP of each error type, and of all false positives and negatives (see the
    module docstring)."""
    kind, classes, scores = out.det_type, out.dets.classes, out.dets.scores
    scored, hits = kind != IGNORED, kind == TP
    counted = ~out.gt.ignore
    objects = np.bincount(out.gt.classes[counted], minlength=num_classes)

    def ap(keep=scored, classes=classes, scores=scores, hits=hits, objects=objects) -> float:
        return mean_ap(classes[keep], scores[keep], hits[keep], objects)

    base = ap()
    fixable, missed = out.fixable(), out.missed()
    true_class = classes.copy()  # a fixed classification error takes its object's class
    true_class[kind == CLS] = out.gt.classes[out.det_object[kind == CLS]]
    fixed = {
        "cls": ap(scored & ((kind != CLS) | fixable), classes=true_class,
                  hits=hits | ((kind == CLS) & fixable)),
        "loc": ap(scored & ((kind != LOC) | fixable), hits=hits | ((kind == LOC) & fixable)),
        "both": ap(scored & (kind != BOTH)),
        "dupe": ap(scored & (kind != DUPE)),
        "bkg": ap(scored & (kind != BKG)),
        "miss": ap(objects=objects - np.bincount(out.gt.classes[missed],
                                                 minlength=num_classes)),
    }
    unfound = counted & (out.taken_by < 0)
    counts = {name: int((kind == DETECTION_TYPES.index(name)).sum())
              for name in ERROR_TYPES[:-1]}
    counts.update(miss=int(missed.sum()), false_pos=int((scored & ~hits).sum()),
                  false_neg=int(unfound.sum()))
    return ErrorReport(
        ap50=base, dAP={name: max(fixed[name] - base, 0.0) for name in ERROR_TYPES},
        false_pos=ap(scores=hits.astype(np.float64)) - base,
        false_neg=ap(objects=np.bincount(out.gt.classes[counted & ~unfound],
                                         minlength=num_classes)) - base,
        counts=counts)
