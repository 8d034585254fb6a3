"""Proposal recall: how many objects the RPN's top N proposals cover (the paper's Section 4).

For each image the top N proposals (by objectness) are matched one to one with the objects,
greedily: the object best covered by any proposal takes that proposal, and both leave the
pool (py-faster-rcnn's ``evaluate_recall``, detectron2's proposal evaluator). An object's
coverage is the IoU of its proposal; recall at IoU t is the share of objects covered at
IoU >= t. Difficult and crowd objects are left out, as in the detection metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

TOP_N = (300, 1000, 2000)
# Figure 4 of the paper plots recall from IoU 0.5 to 1; average recall (AR) is the mean over
# 0.5:0.95, as in Hosang et al. and COCO.
IOU_THRESHOLDS = np.round(np.linspace(0.5, 1.0, 11), 2)
AR_THRESHOLDS = IOU_THRESHOLDS[:-1]


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of ``(P, 4)`` and ``(G, 4)`` x1 y1 x2 y2 boxes -> ``(P, G)``; 0 for empty
    unions."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def object_coverage(proposals: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """IoU each object gets from the greedy one-to-one matching.

    ``proposals``: ``(P, 4)`` x1 y1 x2 y2, already cut to the top N; ``objects``: ``(G, 4)``.
    Returns ``(G,)``; objects left without a proposal (P < G) get 0.
    """
    coverage = np.zeros(len(objects))
    if len(proposals) == 0 or len(objects) == 0:
        return coverage
    iou = box_iou_xyxy(proposals, objects)
    for _ in range(min(len(proposals), len(objects))):
        best_proposal = iou.argmax(axis=0)                      # per object
        best_iou = iou[best_proposal, np.arange(len(objects))]
        obj = int(best_iou.argmax())
        if best_iou[obj] < 0:  # everything taken
            break
        coverage[obj] = best_iou[obj]
        iou[best_proposal[obj], :] = -1
        iou[:, obj] = -1
    return coverage


@dataclass
class RecallResult:
    """Recall of the top N proposals.

    ``recall[n]``: ``(T,)`` recall at each of ``iou_thresholds`` for the top ``n``;
    ``average_recall[n]``: mean over IoU 0.5:0.95; ``mean_proposals[n]``: proposals actually
    used per image (fewer than ``n`` when the RPN returned fewer).
    """

    top_n: list[int]
    iou_thresholds: np.ndarray
    recall: dict[int, np.ndarray]
    average_recall: dict[int, float]
    mean_proposals: dict[int, float]
    num_objects: int
    num_images: int
    extra: dict[str, Any] = field(default_factory=dict)

    def recall_at(self, n: int, iou: float) -> float:
        """Recall of the top ``n`` at one of ``iou_thresholds``."""
        i = int(np.flatnonzero(np.isclose(self.iou_thresholds, iou))[0])
        return float(self.recall[n][i])

    def to_dict(self) -> dict[str, Any]:
        return {
            "top_n": list(self.top_n),
            "iou_thresholds": [float(t) for t in self.iou_thresholds],
            "recall": {str(n): [float(v) for v in self.recall[n]] for n in self.top_n},
            "recall@0.5": {str(n): self.recall_at(n, 0.5) for n in self.top_n},
            "recall@0.7": {str(n): self.recall_at(n, 0.7) for n in self.top_n},
            "average_recall": {str(n): self.average_recall[n] for n in self.top_n},
            "mean_proposals": {str(n): self.mean_proposals[n] for n in self.top_n},
            "num_objects": self.num_objects,
            "num_images": self.num_images,
            **self.extra,
        }


def proposal_recall(proposals: list[np.ndarray], objects: list[np.ndarray],
                    top_n: tuple[int, ...] | list[int] = TOP_N,
                    iou_thresholds: np.ndarray = IOU_THRESHOLDS) -> RecallResult:
    """Recall of the top N proposals over a dataset.

    ``proposals[i]``: ``(P_i, 4)`` x1 y1 x2 y2 of image i, highest objectness first;
    ``objects[i]``: ``(G_i, 4)`` x1 y1 x2 y2 of its objects that count, same pixels.
    """
    if len(proposals) != len(objects):
        raise ValueError("proposals and objects must list the same images")
    iou_thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    num_objects = int(sum(len(o) for o in objects))
    recall, average, mean_props = {}, {}, {}
    for n in top_n:
        cover = [object_coverage(np.asarray(p, dtype=np.float64).reshape(-1, 4)[:n],
                                 np.asarray(o, dtype=np.float64).reshape(-1, 4))
                 for p, o in zip(proposals, objects, strict=True)]
        cover_all = np.concatenate(cover) if cover else np.zeros(0)
        if num_objects:
            # a hair of slack so that an exact fit (IoU 1 computed as 0.9999999999) counts
            rec = (cover_all[None, :] >= iou_thresholds[:, None] - 1e-12).mean(axis=1)
        else:
            rec = np.zeros(len(iou_thresholds))
        recall[n] = rec
        in_ar = np.isin(np.round(iou_thresholds, 2), AR_THRESHOLDS)
        average[n] = float(rec[in_ar].mean()) if in_ar.any() else float(rec.mean())
        mean_props[n] = float(np.mean([min(len(p), n) for p in proposals])) if proposals \
            else 0.0
    return RecallResult(list(top_n), iou_thresholds, recall, average, mean_props, num_objects,
                        len(proposals))
