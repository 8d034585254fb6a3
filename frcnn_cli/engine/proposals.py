"""Proposal files: an RPN's boxes for every image of a dataset (steps 2 and 4 of the schedule),
or Selective Search's (the proposals Fast R-CNN was trained on).

``frcnn propose`` writes, with ``torch.save`` and read back only through the safe loader::

    {"format": "frcnn-proposals", "version": 1,
     "image_ids": int64 [M],            # dataset image ids, in dataset order
     "counts":    int64 [M],            # proposals per image
     "boxes":     float32 [sum(counts), 4],  # x1 y1 x2 y2 in original image pixels
     "scores":    float32 [sum(counts)],     # objectness, highest first per image
     "meta": {"method": "rpn", "checkpoint", "annotations", "pre_nms_top_n",
              "post_nms_top_n", "nms_thresh", "min_size", "seconds_per_image", "coverage"}}

Selective Search (``frcnn propose --method selective-search``, engine/selective_search.py)
writes the same format, its meta ``{"method": "selective-search", "mode", "max_proposals",
"max_side", "seconds_per_image", ..., "coverage"}``.

``meta["coverage"]`` is ``{"iou_0.5", "iou_0.7", "objects"}``: the share of the dataset's objects
the proposals cover at each IoU (one-to-one, as ``frcnn eval --proposals``), or None when no
object counts. Step 2 learns from these boxes; an object they miss reaches it only as its
ground-truth box.

Proposals are made on unflipped images; the training loader flips them with their image, as
the original implementation does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from frcnn_cli.boxes import bad_xyxy_rows
from frcnn_cli.checkpoint import PROPOSALS_FORMAT, VERSION, load_safe, save_safe
from frcnn_cli.errors import CheckpointError, DataError
from frcnn_cli.progress import SILENT, Reporter


@torch.inference_mode()
def generate_proposals(model, annotations, device: torch.device, reporter: Reporter = SILENT,
                       rank: int = 0, world_size: int = 1, batch_size: int = 1,
                       max_proposals: int | None = None
                       ) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], list[float]]:
    """Run the model's RPN over (this process's share of) a dataset, with the recipe's
    training proposal numbers (12000 -> 2000 in the paper): the boxes steps 2 and 4 learn on.
    ``max_proposals`` keeps up to that many after NMS instead (and at least as many before).

    Returns ``{image_id: (boxes [P, 4] in the file's pixels, scores [P])}`` and the seconds
    per image of each forward (backbone and RPN; decoding excluded).
    """
    from frcnn_cli.data.dataset import build_test_loader

    loader = build_test_loader(annotations, model.recipe, batch_size=batch_size,
                               rank=rank, world_size=world_size)
    model.eval()
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    seconds: list[float] = []
    total = len(annotations.images) // world_size + (rank < len(annotations.images) % world_size)
    pre, post = rpn_counts(model.recipe, max_proposals)
    with reporter.task("proposals", total=total) as task:
        for images, targets in loader:
            images = [im.to(device) for im in images]
            _sync(device)
            start = time.perf_counter()
            results = model.detect(images, rpn_only=True, pre_nms_top_n=pre,
                                   post_nms_top_n=post)
            _sync(device)
            seconds += [(time.perf_counter() - start) / len(images)] * len(images)
            for res, target in zip(results, targets, strict=True):
                out[int(target["image_id"])] = (res["boxes"].float().cpu(),
                                                res["scores"].float().cpu())
            task.update(advance=len(images))
    return out, seconds


def rpn_counts(recipe, max_proposals: int | None = None) -> tuple[int, int]:
    """Proposals kept before and after the RPN's NMS by ``frcnn propose``: the recipe's
    training numbers, or ``max_proposals`` after NMS (and at least as many before)."""
    rpn = recipe.rpn
    if max_proposals is None:
        return rpn.pre_nms_top_n_train, rpn.post_nms_top_n_train
    return max(rpn.pre_nms_top_n_train, max_proposals), max_proposals


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def save_proposals(proposals: dict[int, tuple[torch.Tensor, torch.Tensor]], image_ids: list[int],
                   path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write proposals in dataset order (``image_ids``) atomically."""
    boxes = [proposals[i][0] for i in image_ids]
    scores = [proposals[i][1] for i in image_ids]
    return save_safe({
        "format": PROPOSALS_FORMAT, "version": VERSION,
        "image_ids": torch.tensor(image_ids, dtype=torch.int64),
        "counts": torch.tensor([len(b) for b in boxes], dtype=torch.int64),
        "boxes": torch.cat(boxes).reshape(-1, 4) if boxes else torch.zeros(0, 4),
        "scores": torch.cat(scores) if scores else torch.zeros(0),
        "meta": meta,
    }, path)


def read_proposals(path: str | os.PathLike) -> dict[str, Any]:
    """The raw proposal file, checked for format and consistency."""
    obj = load_safe(path, "proposals file")
    if obj.get("format") != PROPOSALS_FORMAT:
        raise CheckpointError(f"{path} is not a proposals file (made by frcnn propose)")
    counts, boxes = obj["counts"], obj["boxes"]
    if int(counts.sum()) != len(boxes) or len(obj["image_ids"]) != len(counts):
        raise CheckpointError(f"proposals file {path} is inconsistent (counts do not add up)")
    bad = bad_xyxy_rows(boxes)
    if bad.any():
        k = int(bad.nonzero()[0, 0])
        image = int(torch.searchsorted(counts.cumsum(0), k, right=True))
        raise CheckpointError(f"proposals file {path}: box {boxes[k].tolist()} of image id "
                              f"{int(obj['image_ids'][image])} is not finite or has a negative "
                              "side (x1 y1 x2 y2 expected); make the file again with frcnn "
                              "propose")
    return obj


def load_proposals(path: str | os.PathLike, annotations) -> dict[int, torch.Tensor]:
    """``{image_id: boxes [P, 4]}`` for every image of ``annotations``."""
    return proposals_by_image(read_proposals(path), annotations, path)


def proposals_by_image(obj: dict[str, Any], annotations, path: str | os.PathLike
                       ) -> dict[int, torch.Tensor]:
    """The boxes of a read proposals file (:func:`read_proposals`) by image id; DataError when
    an image of ``annotations`` has none."""
    ids = obj["image_ids"].tolist()
    per_image = dict(zip(ids, torch.split(obj["boxes"], obj["counts"].tolist()), strict=True))
    missing = [img["id"] for img in annotations.images if img["id"] not in per_image]
    if missing:
        raise DataError(f"proposals file {path} has no proposals for {len(missing)} image(s) "
                        f"of the training set (e.g. image id {missing[0]}); make them with "
                        "frcnn propose for this dataset")
    return per_image
