"""Detections in the COCO results format: reading, checking, writing, and as arrays.

A detections file is a JSON list, one entry per detected box::

    [{"image_id": 42, "category_id": 3, "bbox": [x, y, w, h], "score": 0.91}, ...]

``bbox`` is continuous pixels of the image file (not of a resized copy), ``category_id`` the
dataset's category id (not the model's label). Extra keys are allowed.

:func:`read_detections` is the one reader of such a file for a dataset. Detections that carry
``file_name`` (``frcnn predict`` writes it, numbering its images 1..N in the order given) are
matched to the dataset's images by file, not by id: the dataset's id replaces theirs. A file
whose names and ids disagree among themselves, or that names a file the dataset lacks, is
refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_cli.boxes import is_number, require_xywh
from frcnn_cli.data.annotations import Annotations
from frcnn_cli.errors import DataError
from frcnn_cli.files import require_file, write_json
from frcnn_cli.outputs import DETECTIONS, result_marker

# Larger lists are written without indentation (a COCO-sized run has millions of lines).
_INDENT_LIMIT = 10000


def to_coco_results(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, image_id: Any,
                    classes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One image's model output as COCO results.

    ``boxes``: ``(N, 4)`` x1 y1 x2 y2 in the file's pixels (as ``model.detect`` returns
    them); ``scores``: ``(N,)``; ``labels``: ``(N,)`` in 1..K, mapped to
    ``classes[label - 1]["id"]``. Returns ``[{"image_id", "category_id", "bbox": [x, y, w, h],
    "score"}]``; boxes are rounded to 1e-4 px and scores to 6 decimals, which keeps files
    small and the written detections within 1e-3 px and 1e-5 of the model's.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    category_ids = [c["id"] for c in classes]
    return [{"image_id": image_id, "category_id": category_ids[int(label) - 1],
             "bbox": [round(float(v), 4) for v in b], "score": round(float(s), 6)}
            for b, s, label in zip(xywh, np.asarray(scores).reshape(-1),
                                   np.asarray(labels).reshape(-1), strict=True)]


@dataclass
class DetectionArrays:
    """Detections as arrays. ``images``: ``(D,)`` int index into ``Annotations.images``;
    ``classes``: ``(D,)`` int label - 1 (0..K-1); ``boxes``: ``(D, 4)`` xywh float64;
    ``scores``: ``(D,)`` float64."""

    images: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray


@dataclass
class GroundTruthArrays:
    """Objects as arrays: ``images``, ``classes`` ``(G,)`` int as in :class:`DetectionArrays`,
    ``boxes`` ``(G, 4)`` xywh, ``ignore`` ``(G,)`` bool (difficult or crowd)."""

    images: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray
    ignore: np.ndarray


def load_detections(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a detections JSON file (a list of COCO results); DataError when it is not one.

    The entries themselves are checked against a dataset by :func:`detection_arrays`.
    """
    p = require_file(path, "detections file")
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{p} is not valid JSON: line {e.lineno} column {e.colno}: "
                        f"{e.msg}") from None
    except UnicodeDecodeError:
        raise DataError(f"{p} is not a text JSON file") from None
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        raise DataError(f"{p} is a dataset (COCO annotations), not detections; detections are "
                        "a JSON list of {image_id, category_id, bbox, score}")
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list of detections "
                        f"{{image_id, category_id, bbox, score}}, got {type(data).__name__}")
    return data


def read_detections(path: str | os.PathLike, ann: Annotations) -> list[dict[str, Any]]:
    """The detections of the file ``path`` for the images of ``ann``: read
    (:func:`load_detections`) and, when they carry ``file_name``, matched by file
    (:func:`match_files`). Each entry is checked later, against the dataset, by
    :func:`detection_arrays`."""
    return match_files(ann, load_detections(path), str(path))


def match_files(ann: Annotations, detections: list[dict[str, Any]], source: str
                ) -> list[dict[str, Any]]:
    """``detections`` with each ``image_id`` set to the id of the dataset image its
    ``file_name`` names (unchanged when no detection has one). DataError when only some carry
    a name, when one name goes with two ids or one id with two names, or when a name is no
    image of the dataset (or names two of them)."""
    named = [isinstance(d, dict) and "file_name" in d for d in detections]
    if not any(named):
        return detections
    if not all(named):
        k = named.index(False)
        raise DataError(f"{source}: detection {k} has no 'file_name' but others have one; "
                        "give every detection its file, or none")
    files = _FileIndex(ann)
    ids_of: dict[Any, Any] = {}
    name_of: dict[Any, str] = {}
    out = []
    for k, d in enumerate(detections):
        name, given = str(d["file_name"]), d.get("image_id")
        other_id = ids_of.setdefault(name, given)
        other_name = name_of.setdefault(_key(given), name)
        if other_id != given or other_name != name:
            elsewhere = (f"{name} with image_id {other_id!r}" if other_id != given
                         else f"image_id {given!r} with {other_name}")
            raise DataError(f"{source}: its file names and image ids disagree (detection {k}: "
                            f"{name} with image_id {given!r}; elsewhere {elsewhere}); is it "
                            "two files in one?")
        found = files.lookup(name)
        if found is None:
            raise DataError(f"{source}: detection {k} is of {name}, which is no image of the "
                            f"dataset{_named(ann)}{files.ambiguity(name)}; were the detections "
                            "made on these images?")
        out.append({**d, "image_id": found})
    return out


class _FileIndex:
    """The dataset's image ids by file: the resolved path, else the longest unique tail of the
    path (``val/000001.jpg`` names ``images/val/000001.jpg``; a bare name, when one image has
    it)."""

    def __init__(self, ann: Annotations) -> None:
        self.by_path = {str(ann.image_path(im).resolve()): im["id"] for im in ann.images}
        self.by_tail: dict[tuple[str, ...], list[Any]] = {}
        for im in ann.images:
            parts = Path(im["file_name"]).parts
            for k in range(1, len(parts) + 1):
                self.by_tail.setdefault(parts[-k:], []).append(im["id"])
        self.found: dict[str, Any] = {}  # a file's detections come in runs: resolve it once

    def lookup(self, name: str) -> Any:
        if name not in self.found:
            self.found[name] = self._find(name)
        return self.found[name]

    def _find(self, name: str) -> Any:
        found = self.by_path.get(str(Path(name).resolve()))
        if found is not None:
            return found
        parts = Path(name).parts
        for k in range(len(parts), 0, -1):
            ids = self.by_tail.get(parts[-k:], [])
            if len(ids) == 1:
                return ids[0]
            if ids:
                return None
        return None

    def ambiguity(self, name: str) -> str:
        ids = self.by_tail.get(Path(name).parts[-1:], [])
        return f" (its name fits {len(ids)} images)" if len(ids) > 1 else ""


def _key(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def save_detections(path: str | os.PathLike, detections: list[dict[str, Any]]) -> Path:
    """Write detections atomically as a JSON list, the first marked as frcnn's
    (:func:`frcnn_cli.outputs.result_marker`: an extra key, which the results format allows)
    so that the next run may replace the file and no other tool's list is taken for it."""
    indent = 1 if len(detections) <= _INDENT_LIMIT else None
    if detections:
        detections = [{**result_marker(DETECTIONS), **detections[0]}, *detections[1:]]
    return write_json(path, detections, indent=indent)


def detection_arrays(ann: Annotations, detections: list[dict[str, Any]],
                     source: str = "detections") -> DetectionArrays:
    """Check detections against a dataset and turn them into arrays.

    Raises DataError naming the first bad entry: a missing key, a bbox that is not four finite
    numbers with w, h >= 0, a non-finite score, an ``image_id`` that is not one of the
    dataset's images or a ``category_id`` that is not one of its categories.
    """
    n = len(detections)
    for k, d in enumerate(detections):
        _check_entry(d, k, source)
    image_ids = [d["image_id"] for d in detections]
    category_ids = [d["category_id"] for d in detections]
    boxes = np.array([d["bbox"] for d in detections], dtype=np.float64).reshape(n, 4)
    scores = np.array([d["score"] for d in detections], dtype=np.float64).reshape(n)
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    bad |= ~np.isfinite(scores)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: detection {k} has bbox {detections[k]['bbox']!r} and score "
                        f"{detections[k]['score']!r}; need finite [x, y, w, h] with w, h >= 0 "
                        "and a finite score")

    index = {im["id"]: i for i, im in enumerate(ann.images)}
    images = np.array([_lookup(index, i) for i in image_ids], dtype=np.int64).reshape(n)
    if (images < 0).any():
        k = int(np.flatnonzero(images < 0)[0])
        raise DataError(f"{source}: detection {k} has image_id {image_ids[k]!r}, which is not "
                        f"an image of the dataset{_named(ann)}")
    label_of = {c["id"]: i for i, c in enumerate(ann.classes)}
    classes = np.array([_lookup(label_of, c) for c in category_ids], dtype=np.int64).reshape(n)
    if (classes < 0).any():
        k = int(np.flatnonzero(classes < 0)[0])
        known = ", ".join(str(c["id"]) for c in ann.classes[:20])
        raise DataError(f"{source}: detection {k} has category_id {category_ids[k]!r}, which is "
                        f"not a category of the dataset{_named(ann)} (ids: {known})")
    return DetectionArrays(images, classes, boxes, scores)


def ground_truth_arrays(ann: Annotations) -> GroundTruthArrays:
    """The dataset's objects as arrays; difficult and crowd objects are marked ``ignore``.

    Raises DataError for an object whose image or category the dataset does not list.
    """
    index = {im["id"]: i for i, im in enumerate(ann.images)}
    label_of = {c["id"]: i for i, c in enumerate(ann.classes)}
    objs = ann.annotations
    images = np.array([index.get(a["image_id"], -1) for a in objs], dtype=np.int64)
    classes = np.array([label_of.get(a["category_id"], -1) for a in objs], dtype=np.int64)
    for values, what in ((images, "image_id"), (classes, "category_id")):
        if (values < 0).any():
            a = objs[int(np.flatnonzero(values < 0)[0])]
            raise DataError(f"dataset{_named(ann)}: annotation id {a.get('id')} has {what} "
                            f"{a[what]!r}, which the dataset does not list; run "
                            "'frcnn data check' on it")
    boxes = np.array([a["bbox"] for a in objs], dtype=np.float64).reshape(-1, 4)
    ignore = np.array([bool(a.get("difficult", 0)) or bool(a.get("iscrowd", 0)) for a in objs],
                      dtype=bool)
    return GroundTruthArrays(images, classes, boxes, ignore)


def _check_entry(d: Any, k: int, source: str) -> None:
    """DataError naming detection ``k`` unless it is ``{image_id, category_id, bbox, score}``
    with a box the annotation loader would take (:func:`frcnn_cli.boxes.require_xywh`)."""
    if not isinstance(d, dict):
        raise DataError(f"{source}: detection {k} is a {type(d).__name__}, not an object "
                        "{image_id, category_id, bbox, score}")
    missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in d]
    if missing:
        raise DataError(f"{source}: detection {k} lacks {', '.join(map(repr, missing))}")
    require_xywh(d["bbox"], f"{source}: detection {k}")
    if not is_number(d["score"]):
        raise DataError(f"{source}: detection {k}: 'score' must be a number, got "
                        f"{d['score']!r}")


def _lookup(mapping: dict[Any, int], key: Any) -> int:
    """``mapping[key]``, or -1 for a missing or unhashable key (a list where an id belongs)."""
    try:
        return mapping.get(key, -1)
    except TypeError:
        return -1


def _named(ann: Annotations) -> str:
    return f" {ann.path}" if ann.path is not None else ""
