"""Greedy one-to-one matching of detections to objects by falling score, COCO's rule.

Detections are taken by falling score; each takes, among the objects no earlier detection
took, the one of highest IoU at or above the threshold (the first such object on ties), or
none. pycocotools' ``evaluateImg`` and TIDE match so; the error analysis
(:mod:`frcnn_cli.evaluation.tide`) and the confusion matrix
(:mod:`frcnn_cli.evaluation.confusion`) share this one implementation.

A detection's choice depends on what the ones before it took, so the walk is sequential in
principle. It runs in rounds instead: every detection not yet settled picks its best free
object at once; the leading run of detections whose picks are all different is settled (none
of them can have lost its pick to another), and the first detection whose pick an earlier
one made starts the next round. Every round settles at least one detection; one round
suffices when no two detections want the same object.
"""

from __future__ import annotations

import numpy as np

from frcnn_cli.proposals.recall import box_iou_xyxy


def greedy_match(iou: np.ndarray, allowed: np.ndarray, thresh: float) -> np.ndarray:
    """Match detections (rows, by falling score) to objects (columns) one to one.

    ``iou``: ``(D, G)``; ``allowed``: ``(D, G)`` bool, the pairs that may match (same class,
    say); ``thresh`` > 0: the least IoU of a match. Returns ``(D,)`` int, each detection's
    object, or -1.
    """
    num_dets, num_objects = iou.shape
    match = np.full(num_dets, -1, dtype=np.int64)
    if num_dets == 0 or num_objects == 0:
        return match
    free_iou = np.where(allowed & (iou >= thresh), iou, -1.0)  # -1: no match possible
    start = 0
    while start < num_dets:
        rows = free_iou[start:]
        pick = rows.argmax(axis=1)
        has_pick = rows[np.arange(len(rows)), pick] >= 0
        # a distinct negative for each detection without a pick: those never clash
        wanted = np.where(has_pick, pick, -1 - np.arange(len(rows)))
        _, first_wanting = np.unique(wanted, return_index=True)
        clash = np.ones(len(rows), dtype=bool)
        clash[first_wanting] = False
        settled = int(np.argmax(clash)) if clash.any() else len(rows)
        taken = np.where(has_pick[:settled], pick[:settled], -1)
        match[start:start + settled] = taken
        free_iou[:, taken[taken >= 0]] = -1.0
        start += settled
    return match


def xyxy(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` ``[x, y, w, h]`` -> ``(N, 4)`` x1 y1 x2 y2."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def pair_iou(det_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU matrix of ``(D, 4)`` and ``(G, 4)`` ``[x, y, w, h]`` boxes -> ``(D, G)``."""
    return box_iou_xyxy(xyxy(det_boxes), xyxy(gt_boxes))


def grouped(group: np.ndarray, num_groups: int,
            scores: np.ndarray | None = None) -> list[np.ndarray]:
    """The indices of each group's entries (an image's, a class's): ``group`` ``(N,)`` in
    ``0..num_groups-1`` -> ``num_groups`` index arrays, each in the given order, or by falling
    ``scores`` (stable: equal scores keep the given order, as Python's sort in TIDE)."""
    group = np.asarray(group, dtype=np.int64).reshape(-1)
    order = np.arange(len(group))
    if scores is not None:
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    order = order[np.argsort(group[order], kind="stable")]
    bounds = np.searchsorted(group[order], np.arange(num_groups + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(num_groups)]
