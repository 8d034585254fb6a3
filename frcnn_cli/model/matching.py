"""Labelling boxes by IoU with the ground truth, and the balanced minibatch sampler.

Both the RPN (anchors, Section 3.1.2) and the detection head (proposals, Fast R-CNN Section
2.3) label each candidate box foreground (1), background (0) or ignored (-1) by its best IoU
with an object, then sample a fixed number per image with at most a given share of foreground.
A box mostly inside an ignore region (a crowd box, or an object a tile edge cut) is neither:
see :func:`in_ignore_regions`.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A candidate box with more than this share of its area inside an ignore region is ignored:
# mmdetection's MaxIoUAssigner rule with ignore_iof_thr=0.5 and ignore_wrt_candidates=True
# (intersection over the candidate's area, "IoF"). Like there, such a box is neither a
# negative nor a positive, nor any object's best match. (torchvision and detectron2 drop
# crowd boxes in training, which makes what they cover background.)
IGNORE_COVER = 0.5


def cover(boxes: Tensor, others: Tensor) -> Tensor:
    """Share of each box's area inside each of ``others``: ``(N, M)``, 0 for a box without
    area. Boxes x1 y1 x2 y2."""
    lt = torch.maximum(boxes[:, None, :2], others[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], others[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    return torch.where(area > 0, inter / area.clamp(min=1e-12), torch.zeros_like(inter))


def in_ignore_regions(boxes: Tensor, regions: Tensor | None,
                      thresh: float = IGNORE_COVER) -> Tensor:
    """boxes [N, 4], ignore regions [M, 4] or None -> [N] bool: more than ``thresh`` of the
    box's area lies inside one region."""
    if regions is None or len(regions) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    return (cover(boxes, regions.to(boxes.dtype)) > thresh).any(dim=1)


class Matcher:
    """Label boxes by their IoU with the objects of one image.

    - foreground: best IoU >= ``fg_thresh``;
    - background: ``bg_lo`` <= best IoU < ``bg_hi``;
    - with ``best_for_each_object`` (the RPN's rule): also foreground, every box whose IoU with
      an object equals that object's best IoU, ties included, as the original
      (``gt_argmax_overlaps``). An object no box overlaps at all gets no such match (the
      original would then mark every box of IoU 0 positive);
    - everything else, and every box outside ``valid``, is ignored.
    """

    def __init__(self, fg_thresh: float, bg_hi: float, bg_lo: float = 0.0,
                 best_for_each_object: bool = False) -> None:
        self.fg_thresh, self.bg_hi, self.bg_lo = fg_thresh, bg_hi, bg_lo
        self.best_for_each_object = best_for_each_object

    def __call__(self, iou: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """iou [G, N] (objects x boxes), valid [N] bool or None.

        Returns ``labels`` [N] int64 in {1, 0, -1} and ``matched`` [N] int64, the index of each
        box's best object (0 when the image has none).
        """
        num_boxes = iou.shape[1]
        if iou.shape[0] == 0:  # no object: everything is background
            best = iou.new_zeros(num_boxes)
            matched = torch.zeros(num_boxes, dtype=torch.int64, device=iou.device)
        else:
            best, matched = iou.max(dim=0)
        labels = torch.full((num_boxes,), -1, dtype=torch.int64, device=iou.device)
        labels[(best >= self.bg_lo) & (best < self.bg_hi)] = 0
        if self.best_for_each_object and iou.shape[0] > 0:
            seen = iou if valid is None else iou.masked_fill(~valid[None], -1.0)
            per_object = seen.max(dim=1, keepdim=True).values
            labels[((seen == per_object) & (per_object > 0)).any(dim=0)] = 1
        labels[best >= self.fg_thresh] = 1
        if valid is not None:
            labels[~valid] = -1
        return labels, matched


def sample_balanced(labels: Tensor, batch_size: int,
                    positive_fraction: float) -> tuple[Tensor, Tensor]:
    """Sample up to ``batch_size`` boxes, at most ``positive_fraction`` of them foreground.

    labels [N] in {1, 0, -1}. Foreground is drawn first, at random; background fills the rest.
    Returns the indices of the sampled positives [P] and negatives [M].
    """
    pos = torch.nonzero(labels == 1).squeeze(1)
    neg = torch.nonzero(labels == 0).squeeze(1)
    num_pos = min(int(batch_size * positive_fraction), len(pos))
    num_neg = min(batch_size - num_pos, len(neg))
    pos = pos[torch.randperm(len(pos), device=pos.device)[:num_pos]]
    neg = neg[torch.randperm(len(neg), device=neg.device)[:num_neg]]
    return pos, neg
