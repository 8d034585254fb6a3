"""Proposal recall: how many objects the top N proposals cover (the paper's Section 4), for one
RPN or to compare proposal methods (RPN against Selective Search, Figures 3-4).

For each image the top N proposals (by objectness) are matched one to one with the objects,
greedily: the object best covered by any proposal takes that proposal, and both leave the
pool (py-faster-rcnn's ``evaluate_recall``, detectron2's proposal evaluator). An object's
coverage is the IoU of its proposal; recall at IoU t is the share of objects covered at
IoU >= t. Difficult and crowd objects are left out, as in the detection metrics.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from frcnn_cli.boxes import is_degenerate

if TYPE_CHECKING:
    import torch

    from frcnn_cli.data.annotations import Annotations

log = logging.getLogger("frcnn")

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


# --------------------------------------------------------------------------- comparing methods

# The paper compares proposal methods (Selective Search, EdgeBoxes, the RPN) by recall at IoU
# 0.5 and 0.7 and by recall against IoU for a number of proposals per image (Figures 3-4).
COMPARE_TOP_N = (100, 300, 1000, 2000)
COMPARE_IOUS = (0.5, 0.7)
# recall against the number of proposals is drawn through these counts
CURVE_TOP_N = (10, 20, 50, 100, 200, 300, 500, 1000, 2000)


def counted_objects(ann: Annotations) -> list[np.ndarray]:
    """Each image's objects that count for recall (not difficult, not crowd, not degenerate:
    see :func:`frcnn_cli.boxes.is_degenerate`), ``(G, 4)`` x1 y1 x2 y2 in original pixels, in
    dataset order."""
    objects = []
    for im in ann.images:
        kept = [a["bbox"] for a in ann.objects(im["id"])
                if not a.get("difficult", 0) and not a.get("iscrowd", 0)
                and not is_degenerate(a["bbox"])]
        xywh = np.asarray(kept, dtype=np.float64).reshape(-1, 4)
        objects.append(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1))
    return objects


@dataclass
class ProposalSource:
    """One set of proposals to compare: ``boxes[i]``, ``(P_i, 4)`` x1 y1 x2 y2, are those of
    the dataset's image i, best first; ``seconds_per_image`` is None when unknown."""

    boxes: list[np.ndarray]
    file: str
    method: str
    seconds_per_image: float | None


@dataclass
class ProposalComparison:
    """Recall of several proposal sources on one dataset.

    ``results[k]`` is the recall of ``sources[k]`` at every count of ``curve_top_n`` and
    ``top_n``, at each IoU of :data:`IOU_THRESHOLDS`; ``top_n`` are the counts reported.
    """

    sources: list[ProposalSource]
    results: list[RecallResult]
    top_n: list[int]

    def to_dict(self) -> dict[str, Any]:
        """``{"num_images", "num_objects", "sources": [{"file", "method", "seconds_per_image",
        "recall": {"0.5": {"100": r, ...}, "0.7": {...}}, "average_recall": {"100": ar, ...},
        "proposals_per_image": {"100": mean used, ...}}]}``."""
        first = self.results[0] if self.results else None
        return {
            "num_images": first.num_images if first else 0,
            "num_objects": first.num_objects if first else 0,
            "sources": [{
                "file": source.file, "method": source.method,
                "seconds_per_image": source.seconds_per_image,
                "recall": {str(iou): {str(n): result.recall_at(n, iou) for n in self.top_n}
                           for iou in COMPARE_IOUS},
                "average_recall": {str(n): result.average_recall[n] for n in self.top_n},
                "proposals_per_image": {str(n): result.mean_proposals[n] for n in self.top_n},
            } for source, result in zip(self.sources, self.results, strict=True)],
        }


def compare_proposals(sources: list[ProposalSource], objects: list[np.ndarray],
                      top_n: tuple[int, ...] | list[int] = COMPARE_TOP_N,
                      curve_top_n: tuple[int, ...] | list[int] = CURVE_TOP_N
                      ) -> ProposalComparison:
    """Recall at IoU 0.5 and 0.7 and average recall of each source's top N proposals.

    ``objects[i]``: ``(G_i, 4)`` x1 y1 x2 y2 of image i's objects that count
    (:func:`counted_objects`). Matching is :func:`proposal_recall`'s, one to one.
    """
    counts = sorted(set(top_n) | set(curve_top_n))
    results = [proposal_recall(source.boxes, objects, counts) for source in sources]
    return ProposalComparison(list(sources), results, list(top_n))


def read_proposal_source(path: str | os.PathLike, annotations: Annotations,
                         ignore_dataset_mismatch: bool = False) -> ProposalSource:
    """A proposals file (``frcnn propose``, RPN or Selective Search) as a source for
    :func:`compare_proposals`, in the order of ``annotations``' images, each image's boxes
    best first (read by :func:`frcnn_cli.proposals.files.read_proposals`, which refuses a
    file made for another dataset unless ``ignore_dataset_mismatch``)."""
    from frcnn_cli.proposals.files import read_proposals

    found = read_proposals(path, annotations, ignore_dataset_mismatch)
    return ProposalSource([found.boxes[im["id"]].numpy().astype(np.float32)
                           for im in annotations.images], str(path), found.method,
                          found.seconds_per_image)


def compare_proposal_files(paths: list[str | os.PathLike], annotations: Annotations,
                           top_n: tuple[int, ...] | list[int] = COMPARE_TOP_N,
                           ignore_dataset_mismatch: bool = False) -> ProposalComparison:
    """:func:`compare_proposals` of proposal files on a dataset (``eval --compare-proposals``)."""
    sources = [read_proposal_source(p, annotations, ignore_dataset_mismatch) for p in paths]
    return compare_proposals(sources, counted_objects(annotations), top_n)


def proposal_coverage(boxes: list[torch.Tensor], ann) -> dict[str, float | int] | None:
    """A proposals file's ``meta["coverage"]`` (see :mod:`frcnn_cli.proposals.files`), logged:
    step 2 learns from these boxes, and an object they miss reaches it only as its
    ground-truth box."""
    top = max([1, *map(len, boxes)])  # every proposal of every image
    result = proposal_recall([b.numpy() for b in boxes], counted_objects(ann), [top])
    if not result.num_objects:
        return None
    covered = {f"iou_{t}": round(result.recall_at(top, t), 4) for t in (0.5, 0.7)}
    log.info("the proposals cover %.1f %% of the %d objects at IoU 0.5, %.1f %% at IoU 0.7",
             100 * covered["iou_0.5"], result.num_objects, 100 * covered["iou_0.7"])
    return {**covered, "objects": result.num_objects}
