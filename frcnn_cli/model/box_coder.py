"""Box geometry shared by the RPN and the detection head: delta coding and NMS selection.

Boxes are continuous ``x1 y1 x2 y2`` (width = x2 - x1). A box is coded relative to a reference
(an anchor or a proposal) as in R-CNN and the paper's Eq. 2::

    dx = (x - x_a) / w_a    dy = (y - y_a) / h_a    dw = log(w / w_a)    dh = log(h / h_a)

each multiplied by a per-stage weight: 1 for the RPN, 1 / std = (10, 10, 5, 5) for the head,
which is the original's target normalisation by stds (0.1, 0.1, 0.2, 0.2) with zero means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from frcnn_cli.model.tracing import tracing

# Largest dw/dh decoded: a box at most 1000/16 times its reference (as detectron and torchvision).
DEFAULT_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode boxes as weighted deltas from reference boxes, and decode them back."""

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 clamp: float = DEFAULT_CLAMP) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.clamp = clamp

    @classmethod
    def from_stds(cls, stds: Sequence[float]) -> BoxCoder:
        """The head's coder: targets divided by ``stds``."""
        return cls([1.0 / s for s in stds])

    def encode(self, boxes: Tensor, reference: Tensor) -> Tensor:
        """boxes [N, 4], reference [N, 4] -> deltas [N, 4]."""
        wx, wy, ww, wh = self.weights
        rw = reference[:, 2] - reference[:, 0]
        rh = reference[:, 3] - reference[:, 1]
        rx = reference[:, 0] + 0.5 * rw
        ry = reference[:, 1] + 0.5 * rh
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        x = boxes[:, 0] + 0.5 * w
        y = boxes[:, 1] + 0.5 * h
        return torch.stack([wx * (x - rx) / rw, wy * (y - ry) / rh,
                            ww * torch.log(w / rw), wh * torch.log(h / rh)], dim=1)

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """deltas [..., 4] and reference boxes broadcastable to them -> boxes [..., 4].

        dw and dh are clamped before ``exp`` so a wild prediction cannot overflow.
        """
        wx, wy, ww, wh = self.weights
        reference = reference.to(deltas.dtype)
        rw = reference[..., 2] - reference[..., 0]
        rh = reference[..., 3] - reference[..., 1]
        rx = reference[..., 0] + 0.5 * rw
        ry = reference[..., 1] + 0.5 * rh
        x = deltas[..., 0] / wx * rw + rx
        y = deltas[..., 1] / wy * rh + ry
        w = torch.exp((deltas[..., 2] / ww).clamp(max=self.clamp)) * rw
        h = torch.exp((deltas[..., 3] / wh).clamp(max=self.clamp)) * rh
        return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=-1)


def nms_per_image(boxes: Tensor, scores: Tensor, image_idx: Tensor, iou_thresh: float,
                  top_n: int, num_images: int, labels: Tensor | None = None,
                  num_labels: int = 1) -> list[Tensor]:
    """NMS within each image (and label), all in one call, then each image's ``top_n`` best.

    boxes [N, 4], scores [N], image_idx [N] in 0..B-1, labels [N] in 0..num_labels-1 (class
    labels for detections; None for proposals). Returns, per image, indices into the N boxes,
    best score first.
    """
    groups = image_idx if labels is None else image_idx * num_labels + labels
    if tracing():
        # torchvision's coordinate trick without its data-dependent branches: shift each
        # group's boxes past the others' so that one plain NMS never compares two groups.
        span = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max() + 1
        keep = nms(boxes + (groups.to(boxes.dtype) * span)[:, None], scores, iou_thresh)
    else:
        keep = batched_nms(boxes, scores, groups, iou_thresh)  # best first, across images
    if num_images == 1:
        return [keep[:top_n]]
    # Group the survivors by image (stable: each image's stay best first), rank within image.
    keep = keep[torch.argsort(image_idx[keep], stable=True)]
    img = image_idx[keep]
    counts = torch.bincount(img, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(keep), device=keep.device) - starts[img]
    keep = keep[rank < top_n]
    return list(torch.split(keep, counts.clamp(max=top_n).tolist()))


def nms_by_level(boxes: Tensor, scores: Tensor, levels: Tensor, iou_thresh: float,
                 num_levels: int) -> Tensor:
    """Indices of the boxes [N, 4] that survive NMS within their level [N], best score first.

    torchvision's ``batched_nms`` itself in eager mode. Traced (export), its per-level form
    with the same sort (what ``batched_nms`` runs for more than 1000 boxes; for fewer it
    shifts each level's boxes apart instead, which can round an IoU at the threshold
    differently). Boxes of equal score are ordered as that sort leaves them."""
    if not tracing():
        return batched_nms(boxes, scores, levels, iou_thresh)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for level in range(num_levels):
        index = torch.nonzero(levels == level).squeeze(1)
        keep[index[nms(boxes[index], scores[index], iou_thresh)]] = True
    index = torch.nonzero(keep).squeeze(1)
    return index[scores[index].sort(descending=True).indices]
