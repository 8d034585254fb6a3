"""Detections on an image larger than the network input, from its tiles: the pure parts.

A large image is cut by :func:`frcnn_cli.data.tiling.tile_windows`, the windows
``frcnn data tile`` cuts training images into, so a model trained on tiles sees tiles alike
at test time. Each tile's detections (x1 y1 x2 y2 in tile pixels) are shifted into the whole
image's pixels and the tiles' detections are merged into one set, in three steps:

1. **Whole views win over views cut at a seam.** A detection within :data:`SEAM_MARGIN`
   pixels of an inner edge of its tile (an edge that is not the image's border) may show an
   object the edge truncates. When a detection of the same class from another tile, itself
   clear of its tile's inner edges, covers at least :data:`COVER` of its area, that tile saw
   the object whole: the truncated view is dropped, whatever its score. (The tiles overlap,
   so an object no larger than the overlap lies whole in some tile; see the tiling module.)
2. **Class-wise NMS** at the recipe's test IoU (0.3 in the paper) over what is left: an
   object in an overlap, seen whole by two or four tiles, is kept once, with its best score.
3. The best ``max_detections`` are kept.

Why not SAHI's default, greedy non-maximum merging by intersection over the smaller box
(IOS >= 0.5) over every detection, replacing each matched group by its union box: the union of
a truncated view and a whole view is the whole view, which step 1 keeps too; but matching every
detection by IOS also fuses distinct objects of one class that overlap (a small box mostly
inside a larger one) into one box larger than either, and changes the detector's own output
on an image no larger than a tile. Here a single tile's detections come back as the model gave
them (its NMS at the same IoU has nothing left to suppress), and IOS-style matching is used
only where a tile edge may have cut a box. An object larger than the overlap is truncated in
every tile holding it; its views all touch a seam, none is dropped in step 1, and NMS keeps
the best one, or two views when they overlap less than the NMS IoU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from frcnn_cli.data.tiling import Window, tile_windows
from frcnn_cli.model.matching import cover

__all__ = ["COVER", "SEAM_MARGIN", "at_seam", "cover", "merge_tiles", "tile_windows",
           "to_image_pixels"]

# Pixels from an inner tile edge within which a box counts as cut by it: the model clips a
# truncated object's box at the edge, or regresses it a few pixels short.
SEAM_MARGIN = 4.0
# Share of a seam box's area a whole view of the same class must cover to replace it
# (SAHI's IOS match threshold, 0.5, with the seam box as the smaller one).
COVER = 0.5


def to_image_pixels(boxes: Tensor, window: Window) -> Tensor:
    """Boxes ``(N, 4)`` x1 y1 x2 y2 in a tile's pixels -> the whole image's pixels."""
    offset = torch.tensor([window.x, window.y, window.x, window.y], dtype=boxes.dtype,
                          device=boxes.device)
    return boxes + offset


def at_seam(boxes: Tensor, window: Window, width: int, height: int,
            margin: float = SEAM_MARGIN) -> Tensor:
    """Which boxes ``(N, 4)`` (x1 y1 x2 y2, whole-image pixels) of the tile ``window`` come
    within ``margin`` pixels of one of its inner edges: ``(N,)`` bool."""
    left, top = window.x, window.y
    right, bottom = window.x + window.width, window.y + window.height
    seam = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    if left > 0:
        seam |= boxes[:, 0] <= left + margin
    if top > 0:
        seam |= boxes[:, 1] <= top + margin
    if right < width:
        seam |= boxes[:, 2] >= right - margin
    if bottom < height:
        seam |= boxes[:, 3] >= bottom - margin
    return seam


def merge_tiles(detections: Sequence[tuple[Window, dict[str, Tensor]]], width: int,
                height: int, nms_thresh: float, max_detections: int | None
                ) -> dict[str, Tensor]:
    """One image's detections from its tiles' (see the module doc for the rule).

    ``detections``: ``(window, {"boxes": (N, 4) x1 y1 x2 y2 in the tile's pixels, "scores":
    (N,), "labels": (N,)})`` for every tile of a ``width`` x ``height`` image;
    ``nms_thresh``: the recipe's test NMS IoU; ``max_detections``: how many to keep (None:
    all). Returns ``{"boxes", "scores", "labels"}`` in the whole image's pixels, best first.
    """
    if not detections:
        return {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.int64)}
    windows = [w for w, _ in detections]
    boxes = [to_image_pixels(d["boxes"].reshape(-1, 4), w) for w, d in detections]
    labels = [d["labels"].reshape(-1) for _, d in detections]
    seams = [at_seam(b, w, width, height) for b, w in zip(boxes, windows, strict=True)]
    meets = _meets(windows)
    keep = []
    for i in range(len(windows)):
        kept = torch.ones(len(boxes[i]), dtype=torch.bool, device=boxes[i].device)
        cut = seams[i].nonzero().flatten()
        neighbours = [j for j in meets[i].nonzero().flatten().tolist() if j != i]
        if len(cut) and neighbours:
            whole = torch.cat([boxes[j][~seams[j]] for j in neighbours])
            whole_labels = torch.cat([labels[j][~seams[j]] for j in neighbours])
            same = labels[i][cut][:, None] == whole_labels[None, :]
            covered = ((cover(boxes[i][cut], whole) >= COVER) & same).any(dim=1)
            kept[cut[covered]] = False
        keep.append(kept)
    kept = torch.cat(keep)
    boxes_ = torch.cat(boxes)[kept]
    scores = torch.cat([d["scores"].reshape(-1) for _, d in detections])[kept]
    labels_ = torch.cat(labels)[kept]
    order = batched_nms(boxes_.float(), scores.float(), labels_, nms_thresh)  # best first
    if max_detections is not None:
        order = order[:max_detections]
    return {"boxes": boxes_[order], "scores": scores[order], "labels": labels_[order]}


def _meets(windows: Sequence[Window]) -> Tensor:
    """``(T, T)`` bool: which tiles share pixels."""
    w = torch.tensor([[a.x, a.y, a.x + a.width, a.y + a.height] for a in windows])
    return ((w[:, None, 0] < w[None, :, 2]) & (w[None, :, 0] < w[:, None, 2])
            & (w[:, None, 1] < w[None, :, 3]) & (w[None, :, 1] < w[:, None, 3]))
