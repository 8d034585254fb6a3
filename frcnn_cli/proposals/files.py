"""Proposal files: boxes for every image of a dataset, an RPN's (steps 2 and 4 of the
schedule) or Selective Search's (what Fast R-CNN was trained on). One writer, one reader.

``frcnn propose`` writes, with ``torch.save`` and read back only through the safe loader::

    {"format": "frcnn-proposals", "version": 2,
     "image_ids":  int64 [M],                # dataset image ids, in dataset order
     "file_names": [M] str,                  # their file_name entries (version 2)
     "counts":     int64 [M],                # proposals per image
     "boxes":      float32 [sum(counts), 4], # x1 y1 x2 y2 in original image pixels
     "scores":     float32 [sum(counts)],    # objectness (or rank), highest first per image
     "meta": {"method": "rpn" | "selective-search", "annotations", "seconds_per_image",
              "coverage", ...}}

``meta["coverage"]`` is ``{"iou_0.5", "iou_0.7", "objects"}``: the share of the dataset's objects
the proposals cover at each IoU (one-to-one, as ``frcnn eval --proposals``), or None when no
object counts. An RPN's meta adds ``checkpoint``, ``pre_nms_top_n``, ``post_nms_top_n``,
``nms_thresh``, ``min_size``; Selective Search's ``mode``, ``max_proposals``, ``max_side``.

:func:`read_proposals` is the only reader. It checks the file's consistency, and that it was
made for the dataset it is used with: every image of the dataset must be in it under the same
id *and* the same file name (a train set and a val set both numbered 1..N share ids, not
names). A version-1 file has no names; it is checked by the dataset file its meta names.
``ignore_dataset_mismatch`` turns the refusal into a warning. Proposals are made on unflipped
images; the training loader flips them with their image, as the original implementation does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from frcnn_cli.boxes import bad_xyxy_rows
from frcnn_cli.checkpoint import load_safe, save_safe
from frcnn_cli.errors import CheckpointError, DataError
from frcnn_cli.outputs import PROPOSALS_FORMAT

log = logging.getLogger("frcnn")

VERSION = 2
MISMATCH_OPTION = "--ignore-dataset-mismatch"


@dataclass
class ProposalFile:
    """A read proposals file, for the images of one dataset: ``boxes[image_id]`` [P, 4] x1 y1
    x2 y2 in the file's pixels and ``scores[image_id]`` [P], best first; ``meta`` as written."""

    path: Path
    boxes: dict[Any, Tensor]
    scores: dict[Any, Tensor]
    meta: dict[str, Any]

    @property
    def method(self) -> str:
        """``rpn`` or ``selective-search`` (a file without ``method`` but with a
        ``checkpoint`` is an RPN's)."""
        return str(self.meta.get("method") or ("rpn" if "checkpoint" in self.meta
                                                else "unknown"))

    @property
    def seconds_per_image(self) -> float | None:
        seconds = self.meta.get("seconds_per_image")
        return float(seconds) if seconds is not None else None


def save_proposals(proposals: dict[Any, tuple[Tensor, Tensor]], images: list[dict[str, Any]],
                   path: str | os.PathLike, meta: dict[str, Any],
                   dataset: str | os.PathLike | None = None) -> Path:
    """Write ``{image_id: (boxes, scores)}`` for the image records ``images`` (a dataset's, in
    its order: ``id`` and ``file_name``) atomically; an image without an entry gets none (it
    could not be decoded). ``dataset``: the JSON file they come from, named in the meta."""
    empty = (torch.zeros(0, 4), torch.zeros(0))
    found = [proposals.get(im["id"], empty) for im in images]
    return save_safe({
        "format": PROPOSALS_FORMAT, "version": VERSION,
        "image_ids": torch.tensor([im["id"] for im in images], dtype=torch.int64),
        "file_names": [str(im["file_name"]) for im in images],
        "counts": torch.tensor([len(b) for b, _ in found], dtype=torch.int64),
        "boxes": torch.cat([b.float().reshape(-1, 4) for b, _ in found]) if found
        else torch.zeros(0, 4),
        "scores": torch.cat([s.float().reshape(-1) for _, s in found]) if found
        else torch.zeros(0),
        "meta": {**meta, "annotations": str(Path(dataset).resolve()) if dataset else None},
    }, path)


def read_proposals(path: str | os.PathLike, annotations,
                   ignore_dataset_mismatch: bool = False) -> ProposalFile:
    """The proposals of ``path`` for every image of ``annotations``, each image's boxes
    ordered by falling score (stable). Raises CheckpointError for a file that is not a
    consistent proposals file, DataError when it lacks an image of the dataset or was made
    for another dataset (unless ``ignore_dataset_mismatch``; see the module doc)."""
    obj = read_raw(path)
    ids = obj["image_ids"].tolist()
    _check_dataset(obj, ids, annotations, path, ignore_dataset_mismatch)
    counts = obj["counts"].tolist()
    per_image = dict(zip(ids, zip(torch.split(obj["boxes"].float(), counts),
                                  torch.split(obj["scores"].float(), counts), strict=True),
                         strict=True))
    missing = [im["id"] for im in annotations.images if im["id"] not in per_image]
    if missing:
        raise DataError(f"proposals file {path} has no proposals for {len(missing)} image(s) "
                        f"of the dataset{_named(annotations)} (e.g. image id {missing[0]}); "
                        "make them with frcnn propose for this dataset")
    boxes, scores = {}, {}
    for im in annotations.images:
        b, s = per_image[im["id"]]
        order = torch.sort(s, descending=True, stable=True).indices
        boxes[im["id"]], scores[im["id"]] = b[order], s[order]
    return ProposalFile(Path(path), boxes, scores, dict(obj.get("meta") or {}))


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """A proposals file's meta and its per-image counts (``meta["counts"]``), checked as
    :func:`read_proposals` checks the file, for a summary without a dataset."""
    obj = read_raw(path)
    return {**(obj.get("meta") or {}), "counts": obj["counts"]}


def read_raw(path: str | os.PathLike) -> dict[str, Any]:
    """The file's dict as written (see the module doc), checked for format and consistency
    but not against a dataset."""
    obj = load_safe(path, "proposals file")
    if obj.get("format") != PROPOSALS_FORMAT:
        raise CheckpointError(f"{path} is not a proposals file (made by frcnn propose)")
    try:
        counts, boxes, scores, ids = obj["counts"], obj["boxes"], obj["scores"], obj["image_ids"]
        consistent = (int(counts.sum()) == len(boxes) == len(scores)
                      and len(ids) == len(counts) and boxes.ndim == 2 and boxes.shape[1] == 4
                      and len(obj.get("file_names", ids)) == len(ids))
    except (KeyError, AttributeError, TypeError, RuntimeError):
        consistent = False
    if not consistent:
        raise CheckpointError(f"proposals file {path} is inconsistent (its counts, boxes, "
                              "scores and images do not add up); make it again with frcnn "
                              "propose")
    bad = bad_xyxy_rows(boxes)
    if bad.any():
        k = int(bad.nonzero()[0, 0])
        image = int(torch.searchsorted(counts.cumsum(0), k, right=True))
        raise CheckpointError(f"proposals file {path}: box {boxes[k].tolist()} of image id "
                              f"{int(ids[image])} is not finite or has a negative side (x1 y1 "
                              "x2 y2 expected); make the file again with frcnn propose")
    return obj


def _check_dataset(obj: dict[str, Any], ids: list[Any], annotations, path,
                   ignore: bool) -> None:
    """DataError (a warning with ``ignore``) when the file was made for another dataset."""
    problem = _other_dataset(obj, ids, annotations)
    if problem is None:
        return
    made_for = (obj.get("meta") or {}).get("annotations")
    text = (f"proposals file {path} was made for another dataset"
            f"{f' ({made_for})' if made_for else ''} than{_named(annotations)}: {problem}")
    if ignore:
        log.warning("%s; used anyway (%s)", text, MISMATCH_OPTION)
        return
    raise DataError(f"{text}; make proposals for this dataset with frcnn propose, or pass "
                    f"{MISMATCH_OPTION} to use them anyway")


def _other_dataset(obj: dict[str, Any], ids: list[Any], annotations) -> str | None:
    """What shows that the file was made for another dataset, or None."""
    names = obj.get("file_names")
    if names is not None:
        theirs = dict(zip(ids, names, strict=True))
        for im in annotations.images:
            if im["id"] in theirs and theirs[im["id"]] != im["file_name"]:
                return (f"image id {im['id']} is {theirs[im['id']]} there and "
                        f"{im['file_name']} here")
        return None
    made_for = (obj.get("meta") or {}).get("annotations")
    ours = annotations.path
    if made_for and ours is not None and Path(made_for).is_file() \
            and not _same_file(Path(made_for), Path(ours)):
        return f"its meta names {made_for}"
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _named(annotations) -> str:
    return f" {annotations.path}" if getattr(annotations, "path", None) is not None else ""
