"""PASCAL VOC average precision at IoU 0.5, by the devkit's rules, vectorised.

The devkit (``VOCevaldet.m``, py-faster-rcnn's ``voc_eval.py``) walks the detections of a
class by falling score; each is compared with the objects of its class in its image:

* it belongs to the object it overlaps most (the first such object on ties);
* with IoU > 0.5 to that object it is a true positive, unless the object is difficult (then it
  is ignored: neither a true nor a false positive) or an earlier detection already took it (then
  it is a duplicate, a false positive);
* otherwise it is a false positive.

Because a detection's object does not depend on what earlier detections took, the walk needs
no loop: compute every detection's best object at once, then the first detection (by score) of
each object is the true positive. Crowd objects are treated like difficult ones.

Boxes are continuous ``[x, y, w, h]``; VOC's inclusive pixel indices are converted on import
(``w = xmax - xmin + 1``), so the continuous IoU here equals the devkit's ``+1`` IoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRESH = 0.5

# 11-point AP samples precision at recall 0, 0.1, ..., 1 (VOC2007). Exact decimals: the
# np.arange(0, 1.1, 0.1) of some ports drifts to 0.30000000000000004 and so misses a recall of
# exactly 0.3 (or 0.6, 0.7).
RECALL_POINTS_11 = np.arange(11) / 10

TRUE_POSITIVE, FALSE_POSITIVE, IGNORED = 1, 0, -1


@dataclass
class ClassCurve:
    """Precision-recall of one class, one point per counted detection by falling score.

    ``recall``, ``precision``, ``scores``: ``(D,)`` float; detections that hit a difficult or
    crowd object are left out. ``ap`` is None when the class has no object that counts.
    """

    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray
    num_positives: int
    num_detections: int
    ap: float | None


def pairwise_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]``: ``(N, 4)`` x ``(N, 4)`` ``[x, y, w, h]`` -> ``(N,)``.

    Degenerate pairs (zero union) get IoU 0.
    """
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2, bx2) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(ay2, by2) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_detections(det_groups: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray,
                     gt_groups: np.ndarray, gt_boxes: np.ndarray, gt_ignore: np.ndarray,
                     iou_thresh: float = IOU_THRESH) -> np.ndarray:
    """Label each detection true positive (1), false positive (0) or ignored (-1).

    A group is one (image, class) pair: a detection is compared only with the objects of its
    group. ``det_groups``: ``(D,)`` int, ``det_boxes``: ``(D, 4)`` xywh, ``det_scores``:
    ``(D,)``; ``gt_groups``: ``(G,)`` int, ``gt_boxes``: ``(G, 4)`` xywh, ``gt_ignore``:
    ``(G,)`` bool (difficult or crowd). Objects of a group are tried in the given order, so on
    equal IoU the earlier one wins, as with the devkit's argmax. Returns ``(D,)`` int8 in the
    detections' order.
    """
    num_dets = len(det_groups)
    outcome = np.full(num_dets, FALSE_POSITIVE, dtype=np.int8)
    if num_dets == 0 or len(gt_groups) == 0:
        return outcome

    # Every (detection, object of its group) pair, laid out detection by detection.
    gt_order = np.argsort(gt_groups, kind="stable")
    sorted_groups = gt_groups[gt_order]
    start = np.searchsorted(sorted_groups, det_groups, side="left")
    counts = np.searchsorted(sorted_groups, det_groups, side="right") - start
    first_pair = np.cumsum(counts) - counts
    pair_det = np.repeat(np.arange(num_dets), counts)
    pair_gt = gt_order[start[pair_det] + np.arange(len(pair_det)) - first_pair[pair_det]]
    iou = pairwise_iou_xywh(det_boxes[pair_det], gt_boxes[pair_gt])

    # Each detection's best object: the first pair reaching its maximum IoU.
    has_gt = counts > 0
    best_iou = np.full(num_dets, -np.inf)
    if len(iou):
        best_iou[has_gt] = np.maximum.reduceat(iou, first_pair[has_gt])
    best_gt = np.full(num_dets, -1, dtype=np.int64)
    at_max = np.flatnonzero(iou == best_iou[pair_det])
    dets_at_max, first_at_max = np.unique(pair_det[at_max], return_index=True)
    best_gt[dets_at_max] = pair_gt[at_max[first_at_max]]

    hit = best_iou > iou_thresh
    ignored = hit & gt_ignore[np.where(hit, best_gt, 0)]
    counted_hit = hit & ~ignored
    # By falling score (stable on ties), the first detection of an object takes it; later
    # detections of the same object are duplicates and stay false positives.
    by_score = np.argsort(-det_scores, kind="stable")
    hits_by_score = by_score[counted_hit[by_score]]
    _, first_of_object = np.unique(best_gt[hits_by_score], return_index=True)
    outcome[hits_by_score[first_of_object]] = TRUE_POSITIVE
    outcome[ignored] = IGNORED
    return outcome


def ap_11_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 AP: mean over recall r in {0, 0.1, ..., 1} of the best precision at recall >= r
    (0 where no point reaches r). ``recall``, ``precision``: ``(D,)``."""
    total = 0.0
    for r in RECALL_POINTS_11:
        reached = precision[recall >= r]
        total += float(reached.max()) if reached.size else 0.0
    return total / len(RECALL_POINTS_11)


def ap_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ AP: area under the precision envelope (precision made non-increasing in
    recall), summed where recall changes. ``recall``, ``precision``: ``(D,)``."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def class_curve(outcome: np.ndarray, scores: np.ndarray, num_positives: int,
                use_07_metric: bool = True) -> ClassCurve:
    """Precision-recall and AP of one class from its detections' outcomes.

    ``outcome``: ``(D,)`` from :func:`match_detections`; ``scores``: ``(D,)``;
    ``num_positives``: objects of the class that count (not difficult, not crowd).
    """
    order = np.argsort(-scores, kind="stable")
    outcome, scores = outcome[order], scores[order]
    counted = outcome != IGNORED
    outcome, scores = outcome[counted], scores[counted].astype(np.float64)
    tp = np.cumsum(outcome == TRUE_POSITIVE, dtype=np.float64)
    fp = np.cumsum(outcome == FALSE_POSITIVE, dtype=np.float64)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if num_positives == 0:
        return ClassCurve(np.zeros_like(tp), precision, scores, 0, len(scores), None)
    recall = tp / num_positives
    ap = ap_11_point(recall, precision) if use_07_metric else ap_area(recall, precision)
    return ClassCurve(recall, precision, scores, num_positives, len(scores), ap)


def evaluate_voc(gt_images: np.ndarray, gt_classes: np.ndarray, gt_boxes: np.ndarray,
                 gt_ignore: np.ndarray, det_images: np.ndarray, det_classes: np.ndarray,
                 det_boxes: np.ndarray, det_scores: np.ndarray, num_classes: int,
                 use_07_metric: bool = True, iou_thresh: float = IOU_THRESH) -> list[ClassCurve]:
    """Per-class precision-recall and AP of a detection set against ground truth.

    Objects: ``gt_images`` ``(G,)`` int image indices, ``gt_classes`` ``(G,)`` int in
    ``0..num_classes-1``, ``gt_boxes`` ``(G, 4)`` xywh, ``gt_ignore`` ``(G,)`` bool.
    Detections: ``det_images`` ``(D,)``, ``det_classes`` ``(D,)``, ``det_boxes`` ``(D, 4)``,
    ``det_scores`` ``(D,)``. Image indices are any non-negative ints shared by both sides.
    Returns one :class:`ClassCurve` per class; ``use_07_metric`` picks 11-point AP over area.
    """
    gt_images = np.asarray(gt_images, dtype=np.int64).reshape(-1)
    gt_classes = np.asarray(gt_classes, dtype=np.int64).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_ignore = np.asarray(gt_ignore, dtype=bool).reshape(-1)
    det_images = np.asarray(det_images, dtype=np.int64).reshape(-1)
    det_classes = np.asarray(det_classes, dtype=np.int64).reshape(-1)
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)

    outcome = match_detections(det_images * num_classes + det_classes, det_boxes, det_scores,
                               gt_images * num_classes + gt_classes, gt_boxes, gt_ignore,
                               iou_thresh)
    positives = np.bincount(gt_classes[~gt_ignore], minlength=num_classes)
    det_order = np.argsort(det_classes, kind="stable")
    bounds = np.searchsorted(det_classes[det_order], np.arange(num_classes + 1))
    curves = []
    for c in range(num_classes):
        idx = det_order[bounds[c]:bounds[c + 1]]
        curves.append(class_curve(outcome[idx], det_scores[idx], int(positives[c]),
                                  use_07_metric))
    return curves
