"""Detections on an image larger than the network input, from its tiles.

    tiling = Tiling(size=800)                  # 800 px tiles, overlap 0.2, 4 per forward pass
    out = detect_tiled(model, image, tiling)   # image: uint8 [3, H, W]; out in its pixels

``frcnn predict --tile`` and ``frcnn eval --tile`` run this. A large image is cut by
:func:`frcnn_cli.data.tiling.tile_windows`, the windows ``frcnn data tile`` cuts training
images into, so a model trained on tiles sees tiles alike at test time. Each tile's
detections (x1 y1 x2 y2 in tile pixels) are shifted into the whole image's pixels and the
tiles' detections are merged into one set, in three steps:

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

Memory follows the tile batch, not the image: tiles are views into the decoded 8-bit image,
and only ``tile_batch`` of them at a time are copied to the device, converted to float and
resized by the model. Each tile is an image to the model, so it keeps at most the recipe's
``roi_heads.detections_per_img`` (100) detections per tile, at its score threshold; the merged
image keeps at most ``max_detections`` (:data:`DEFAULT_MAX_DETECTIONS`: a large image holds
hundreds of objects, more than the recipe's 100 per image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from frcnn_cli.data.tiling import (
    DEFAULT_OVERLAP,
    MIN_TILE_SIZE,
    Window,
    check_tiling,
    count_tiles,
    tile_windows,
)
from frcnn_cli.errors import InputError
from frcnn_cli.model.matching import cover
from frcnn_cli.progress import Task

__all__ = ["COVER", "DEFAULT_MAX_DETECTIONS", "DEFAULT_TILE_BATCH", "SEAM_MARGIN", "TiledImage",
           "Tiling",
           "at_seam", "cover", "detect_tiled", "merge_tiles", "tile_windows", "tiling_from_options",
           "to_image_pixels"]

# Tiles per forward pass. Each is resized to the recipe's input size, so four tiles take about
# the memory of four ordinary images: little on a GPU, where batching pays, and harmless on a
# CPU, where it neither helps nor hurts much.
DEFAULT_TILE_BATCH = 4
# Detections kept per whole image: ten times the paper's 100 per image, for large images with
# hundreds of objects (a 2000 px image of 150 objects, a 10,000 px orthomosaic's trees: raise
# it with --max-detections there).
DEFAULT_MAX_DETECTIONS = 1000

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


# ---------------------------------------------------------------------- running the model


@dataclass(frozen=True)
class Tiling:
    """How to cut images for prediction: ``size`` px tiles overlapping by ``overlap`` of the
    side (the rule of :func:`tile_windows`), ``tile_batch`` tiles per forward pass, at most
    ``max_detections`` kept per image. Raises InputError for values that cannot work."""

    size: int
    overlap: float = DEFAULT_OVERLAP
    tile_batch: int = DEFAULT_TILE_BATCH
    max_detections: int = DEFAULT_MAX_DETECTIONS
    many_tiles: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < MIN_TILE_SIZE:
            raise InputError(f"--tile must be a whole number of pixels, at least "
                             f"{MIN_TILE_SIZE}, got {self.size}")
        check_tiling(self.size, self.overlap)
        if self.tile_batch < 1:
            raise InputError(f"--tile-batch must be at least 1, got {self.tile_batch}")
        if self.max_detections < 1:
            raise InputError(f"--max-detections must be at least 1, got {self.max_detections}")

    def windows(self, width: int, height: int) -> list[Window]:
        """The tiles of a ``width`` x ``height`` image."""
        return tile_windows(width, height, self.size, self.overlap)

    def count(self, sizes: list[tuple[int, int]]) -> int:
        """The tiles of images of ``sizes`` ``[(width, height)]``, refused when far too many
        (:func:`~frcnn_cli.data.tiling.count_tiles`) before any is cut."""
        return count_tiles(sizes, self.size, self.overlap, self.many_tiles)


@dataclass
class TiledImage:
    """One image predicted on tiles, for a report: its ``name`` (the file), ``width``,
    ``height``, the ``tiles`` the model ran on and the ``detections`` kept."""

    name: str
    width: int
    height: int
    tiles: int
    detections: int


def tiling_from_options(size: int | None, overlap: float | None = None,
                        tile_batch: int | None = None, max_detections: int | None = None,
                        many_tiles: bool | None = None) -> Tiling | None:
    """The Tiling of ``--tile``, ``--overlap``, ``--tile-batch``, ``--max-detections``,
    ``--many-tiles`` (None or False: not given, the default), or None without ``--tile``.
    InputError for a tiling option given without ``--tile``, or a value that cannot work."""
    given = {"overlap": overlap, "tile_batch": tile_batch, "max_detections": max_detections,
             "many_tiles": many_tiles or None}
    given = {k: v for k, v in given.items() if v is not None}
    if size is None:
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise InputError(f"{flag} applies to tiled prediction; add --tile S")
        return None
    return Tiling(size, **given)


@torch.inference_mode()
def detect_tiled(model, image: Tensor, tiling: Tiling, device: torch.device | str = "cpu",
                 task: Task | None = None, score_thresh: float | None = None
                 ) -> dict[str, Tensor]:
    """``model.detect`` on the tiles of one image, merged (see the module doc).

    ``image``: ``[3, H, W]`` uint8 (or float in 0..1), on the CPU; each batch of tiles is
    copied to ``device``. ``task`` advances by one per tile; ``score_thresh``: the model's
    (None: the recipe's). Returns ``{"boxes" (D, 4) x1 y1 x2 y2 in the image's pixels,
    "scores", "labels"}`` on the CPU, best first, at most ``tiling.max_detections``.
    """
    height, width = image.shape[-2:]
    seen = tile_detections(model, image, tiling, device, task, score_thresh=score_thresh)
    return merge_tiles(seen, width, height, model.recipe.roi_heads.nms_thresh,
                       tiling.max_detections)


def tile_detections(model, image: Tensor, tiling: Tiling, device: torch.device | str = "cpu",
                    task: Task | None = None, rank: int = 0, world_size: int = 1,
                    score_thresh: float | None = None
                    ) -> list[tuple[Window, dict[str, Tensor]]]:
    """``model.detect`` on tiles ``rank, rank + world_size, ...`` of one image (all of them by
    default): ``(window, detections in the tile's pixels, on the CPU)`` in tile order, for
    :func:`merge_tiles` once every process's share is together."""
    height, width = image.shape[-2:]
    windows = tiling.windows(width, height)[rank::world_size]
    seen: list[tuple[Window, dict[str, Tensor]]] = []
    for start in range(0, len(windows), tiling.tile_batch):
        batch = windows[start:start + tiling.tile_batch]
        tiles = [image[:, w.y:w.y + w.height, w.x:w.x + w.width].to(device) for w in batch]
        outputs = model.detect(tiles, score_thresh=score_thresh)
        seen += [(w, {k: v.detach().cpu() for k, v in out.items()})
                 for w, out in zip(batch, outputs, strict=True)]
        if task is not None:
            task.update(advance=len(batch))
    return seen
