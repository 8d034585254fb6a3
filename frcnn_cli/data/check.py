"""Finding and fixing what is wrong with a dataset, before training trips over it.

:func:`check_dataset` opens every image (fully decoding it unless ``decode=False``) and
inspects every record; it returns a :class:`CheckReport` of :class:`Issue` s, each of one
kind and severity:

- errors: no image at all, missing, unreadable or corrupt images, sizes that differ from the
  file, boxes with zero, negative or non-finite sides, boxes wholly outside their image,
  unknown categories, duplicate image, annotation or category ids, annotations of images that
  do not exist;
- warnings: boxes partly outside their image, boxes under a pixel, duplicate boxes (same
  class, IoU >= 0.95), images listed twice, images without a stated size;
- information: images without objects, categories without objects.

:func:`fix_dataset` returns a cleaned copy and the list of what it changed: sizes set from
the files, boxes clipped to their image, degenerate, tiny, duplicate, orphaned and
unknown-category boxes dropped, missing or unreadable images dropped, duplicate annotation ids
renumbered. Duplicate image ids cannot be fixed (which image an annotation means is lost);
:func:`frcnn_cli.data.annotations.load_annotations` refuses such a file.
"""

from __future__ import annotations

import copy
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from frcnn_cli.boxes import PLURAL, box_problem
from frcnn_cli.data.annotations import Annotations
from frcnn_cli.data.images import orient_boxes, read_headers
from frcnn_cli.data.usable import structure_problems
from frcnn_cli.errors import DataError
from frcnn_cli.progress import SILENT, Reporter

ERROR, WARNING, INFO = "error", "warning", "info"

# kind -> (severity, what --fix does about it)
KINDS: dict[str, tuple[str, str]] = {
    "empty dataset": (ERROR, "nothing to fix: add images"),
    "missing image": (ERROR, "image dropped"),
    "unreadable image": (ERROR, "image dropped"),
    "size mismatch": (ERROR, "size set from the file; boxes turned with an EXIF-rotated "
                      "image, else clipped"),
    "degenerate box": (ERROR, "dropped"),
    "box outside image": (ERROR, "dropped"),
    "unknown category": (ERROR, "dropped"),
    "orphan annotation": (ERROR, "dropped"),
    "duplicate image id": (ERROR, "not fixable: which image an annotation means is lost"),
    "duplicate annotation id": (ERROR, "renumbered"),
    "duplicate category id": (ERROR, "merged when the names agree"),
    "duplicate category name": (ERROR, "not fixable: give each category its own name, or "
                                "merge them with data convert --map"),
    "box partly outside image": (WARNING, "clipped"),
    "tiny box": (WARNING, "dropped"),
    "duplicate box": (WARNING, "dropped"),
    "duplicate file": (WARNING, "kept"),
    "missing size": (WARNING, "size set from the file"),
    "image without objects": (INFO, "kept"),
    "category without objects": (INFO, "kept"),
}

DUPLICATE_IOU = 0.95


@dataclass
class Issue:
    """One finding: its kind (a key of KINDS) and a message naming the file or id."""

    kind: str
    message: str

    @property
    def severity(self) -> str:
        return KINDS[self.kind][0]


@dataclass
class CheckReport:
    """Everything :func:`check_dataset` found, and the image sizes it measured."""

    num_images: int
    num_annotations: int
    issues: list[Issue] = field(default_factory=list)
    # image list index -> (width, height) read from the file, None when unreadable
    measured: dict[int, tuple[int, int] | None] = field(default_factory=dict)
    # image list index -> the file's EXIF orientation (1: none), for the files read
    orientation: dict[int, int] = field(default_factory=dict)

    def add(self, kind: str, message: str) -> None:
        self.issues.append(Issue(kind, message))

    def by_kind(self) -> dict[str, list[Issue]]:
        """Issues grouped by kind, errors first, then warnings, then information."""
        order = {ERROR: 0, WARNING: 1, INFO: 2}
        groups: dict[str, list[Issue]] = defaultdict(list)
        for issue in self.issues:
            groups[issue.kind].append(issue)
        kinds = sorted(groups, key=lambda k: (order[KINDS[k][0]], list(KINDS).index(k)))
        return {k: groups[k] for k in kinds}

    def count(self, severity: str) -> int:
        return sum(1 for i in self.issues if i.severity == severity)

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings and information allowed)."""
        return self.count(ERROR) == 0


def check_dataset(ann: Annotations, decode: bool = True, reporter: Reporter = SILENT,
                  workers: int | None = None) -> CheckReport:
    """Inspect every image file and record of ``ann``; see the module doc for the kinds."""
    report = CheckReport(len(ann.images), len(ann.annotations))
    if not ann.images:
        report.add("empty dataset", f"{ann.path or 'the dataset'} lists no image: there is "
                   "nothing to train or evaluate on")
    report.measured = _measure(ann, decode, reporter, workers, report)
    _check_ids(ann, report)
    _check_images(ann, report)
    _check_boxes(ann, report)
    return report


def _measure(ann: Annotations, decode: bool, reporter: Reporter, workers: int | None,
             report: CheckReport) -> dict[int, tuple[int, int] | None]:
    paths = [ann.image_path(im) for im in ann.images]
    with reporter.task("reading images", total=len(paths)) as task:
        headers = read_headers(paths, decode, workers, lambda: task.update(advance=1))
    measured: dict[int, tuple[int, int] | None] = {}
    for i, (im, path, header) in enumerate(zip(ann.images, paths, headers, strict=True)):
        if isinstance(header, DataError):
            measured[i] = None
            if not path.is_file():
                report.add("missing image", f"image {im['id']}: {path} not found")
            else:
                report.add("unreadable image", f"image {im['id']}: {header}")
        else:
            measured[i], report.orientation[i] = header[:2], header[2]
    return measured


def _check_ids(ann: Annotations, report: CheckReport) -> None:
    for what, items, kind in (("image", ann.images, "duplicate image id"),
                              ("annotation", ann.annotations, "duplicate annotation id")):
        counts = Counter(x["id"] for x in items)
        for value, n in counts.items():
            if n > 1:
                report.add(kind, f"{what} id {value} is used {n} times")
    files = Counter(im["file_name"] for im in ann.images)
    for name, n in files.items():
        if n > 1:
            report.add("duplicate file", f"{name} is listed {n} times")
    for kind, message in structure_problems(ann):  # the rules every command applies
        report.add(kind, message)
    used = Counter(a["category_id"] for a in ann.annotations)
    for c in ann.classes:
        if not used.get(c["id"]):
            report.add("category without objects", f"category {c['id']} '{c['name']}'")


def _check_images(ann: Annotations, report: CheckReport) -> None:
    for i, im in enumerate(ann.images):
        size = report.measured.get(i)
        stated = (im.get("width"), im.get("height"))
        if not stated[0] or not stated[1]:
            report.add("missing size", f"image {im['id']} ({im['file_name']}) has no "
                       "width/height")
        elif size is not None and tuple(size) != stated:
            hint = " (EXIF orientation rotates it)" if tuple(size) == stated[::-1] else ""
            report.add("size mismatch", f"image {im['id']} ({im['file_name']}): the file is "
                       f"{size[0]}x{size[1]}, the JSON says {stated[0]}x{stated[1]}{hint}")
        if not ann.objects(im["id"]):
            report.add("image without objects", f"image {im['id']} ({im['file_name']})")


def _image_extent(ann: Annotations, report: CheckReport, index: dict[Any, int],
                  image_id: Any) -> tuple[float, float] | None:
    i = index.get(image_id)
    if i is None:
        return None
    size = report.measured.get(i)
    if size is not None:
        return float(size[0]), float(size[1])
    im = ann.images[i]
    if im.get("width") and im.get("height"):
        return float(im["width"]), float(im["height"])
    return None


def _check_boxes(ann: Annotations, report: CheckReport) -> None:
    index = {im["id"]: i for i, im in reversed(list(enumerate(ann.images)))}
    for a in ann.annotations:
        problem = box_problem(a["bbox"], _image_extent(ann, report, index, a["image_id"]))
        if problem is not None:
            kind, text = problem
            report.add(kind, f"annotation {a['id']} (image {a['image_id']}): {text}")
    for image_id, dup in _duplicate_boxes(ann):
        report.add("duplicate box", f"annotation {dup} (image {image_id}) repeats another box "
                   "of its class")


def _duplicate_boxes(ann: Annotations) -> list[tuple[Any, Any]]:
    """``(image_id, annotation id)`` of each box that repeats an earlier one of its image and
    class (IoU >= DUPLICATE_IOU)."""
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = defaultdict(list)
    for a in ann.annotations:
        if all(math.isfinite(v) for v in a["bbox"]) and a["bbox"][2] > 0 and a["bbox"][3] > 0:
            groups[(a["image_id"], a["category_id"])].append(a)
    found = []
    for (image_id, _), anns in groups.items():
        if len(anns) < 2:
            continue
        b = np.array([a["bbox"] for a in anns], np.float64)
        xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
        lt = np.maximum(xyxy[:, None, :2], xyxy[None, :, :2])
        rb = np.minimum(xyxy[:, None, 2:], xyxy[None, :, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
        area = b[:, 2] * b[:, 3]
        iou = inter / (area[:, None] + area[None, :] - inter)
        dropped: set[int] = set()
        for j in range(len(anns)):
            if any(iou[k, j] >= DUPLICATE_IOU for k in range(j) if k not in dropped):
                dropped.add(j)
                found.append((image_id, anns[j]["id"]))
    return found


# --------------------------------------------------------------------------- fixing


def fix_dataset(ann: Annotations, report: CheckReport) -> tuple[Annotations, dict[str, int]]:
    """A cleaned copy of ``ann`` (checked into ``report``) and how often each kind of change
    was made (``{"boxes clipped to their image": 3, ...}``, empty when nothing changed)."""
    changes: Counter[str] = Counter()
    images = copy.deepcopy(ann.images)
    anns = copy.deepcopy(ann.annotations)
    kept_cats = _merged_categories(copy.deepcopy(ann.categories), changes)
    kept_images, turned = _fixed_images(images, report, changes)
    first_of_id = {}
    for im in kept_images:
        first_of_id.setdefault(im["id"], im)
    extent = {im["id"]: (float(im["width"]), float(im["height"])) for im in kept_images
              if im.get("width") and im.get("height")}
    cat_ids = {c["id"] for c in kept_cats}

    # annotations: drop what cannot be trained on, clip the rest, renumber repeated ids
    kept_anns, seen_ids = [], set()
    next_ann = 1 + max((a["id"] for a in anns), default=0)
    for a in anns:
        if a["image_id"] not in first_of_id or a["image_id"] not in extent:
            changes["annotations of missing images dropped"] += 1
            continue
        if a["category_id"] not in cat_ids:
            changes["annotations of unknown categories dropped"] += 1
            continue
        if a["image_id"] in turned:
            a["bbox"] = [round(float(v), 4) for v in orient_boxes([a["bbox"]],
                                                                    *turned[a["image_id"]])[0]]
            changes["boxes turned with their EXIF-rotated image"] += 1
        problem = box_problem(a["bbox"], extent[a["image_id"]])
        kind = problem[0] if problem else None
        if kind in ("degenerate box", "box outside image", "tiny box"):
            changes[f"{PLURAL[kind]} dropped"] += 1
            continue
        if kind == "box partly outside image":
            a["bbox"] = clip_box(a["bbox"], *extent[a["image_id"]])
            if box_problem(a["bbox"], extent[a["image_id"]]) is not None:
                changes["boxes dropped as slivers once clipped"] += 1
                continue
            a["area"] = round(a["bbox"][2] * a["bbox"][3], 4)
            changes["boxes clipped to their image"] += 1
        if a["id"] in seen_ids:
            a["id"] = next_ann
            next_ann += 1
            changes["repeated annotation ids renumbered"] += 1
        seen_ids.add(a["id"])
        kept_anns.append(a)

    fixed = Annotations(kept_images, kept_anns, kept_cats, ann.root, None, dict(ann.extra))
    duplicates = {dup for _, dup in _duplicate_boxes(fixed)}
    if duplicates:
        fixed.annotations = [a for a in fixed.annotations if a["id"] not in duplicates]
        fixed.reindex()
        changes["duplicate boxes dropped"] += len(duplicates)
    return fixed, dict(changes)


def _merged_categories(cats: list[dict[str, Any]], changes: Counter[str]
                       ) -> list[dict[str, Any]]:
    """The categories without repeats that agree (same id, same name); repeats that disagree
    stay, for the user to settle."""
    seen: dict[Any, str] = {}
    kept = []
    for c in cats:
        if c["id"] in seen and seen[c["id"]] == c["name"]:
            changes["repeated categories merged"] += 1
            continue
        seen.setdefault(c["id"], c["name"])
        kept.append(c)
    return kept


def _fixed_images(images: list[dict[str, Any]], report: CheckReport, changes: Counter[str]
                  ) -> tuple[list[dict[str, Any]], dict[Any, tuple[int, int, int]]]:
    """The images ``--fix`` keeps (unreadable ones dropped), sizes set from the files, and
    ``{image_id: (orientation, width, height)}`` of those whose record states the size of the
    file's stored frame while EXIF turns it a quarter: their boxes were drawn on the stored
    pixels and are turned with the picture (:func:`~frcnn_cli.data.images.orient_boxes`).
    Repeated image ids stay: which image an annotation means is lost, so the copy keeps the
    error for the user."""
    kept, turned = [], {}
    for i, im in enumerate(images):
        size = report.measured.get(i)
        if size is None and i in report.measured:
            changes["missing or unreadable images dropped"] += 1
            continue
        stated = (im.get("width"), im.get("height"))
        if size is not None and stated != tuple(size):
            if stated == tuple(size)[::-1] and report.orientation.get(i, 1) in (5, 6, 7, 8):
                turned[im["id"]] = (report.orientation[i], *stated)
            im["width"], im["height"] = size
            changes["image sizes set from the files"] += 1
        kept.append(im)
    return kept, turned


def clip_box(bbox: list[float], width: float, height: float) -> list[float]:
    """``[x, y, w, h]`` cut to the image ``[0, width] x [0, height]``."""
    x, y, w, h = bbox
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    return [x1, y1, x2 - x1, y2 - y1]
