"""The one door to a dataset: :func:`open_dataset`, which every command that reads a COCO JSON
file goes through, and the rules it holds, each written once.

    ann = open_dataset("train.json", "train", recipe)   # or "val", "eval", "score" (a
                                                        # detections file's), "propose",
                                                        # "tile", "stats", "anchors"

What a dataset must be, whatever reads it (``frcnn data check`` reports the same kinds):

- structure: :func:`~frcnn_cli.data.annotations.load_annotations` (types, one id per image);
- categories: one id per category and one name per category (two classes under one id, or
  one name for two ids, would be scored as each other); no annotation of an image or a
  category the file does not list (:func:`structure_problems`). These are refused;
- images: at least one. For the commands that read pixels (train, val, eval, propose, tile;
  not ``score``, which scores a detections file and needs no image)
  every image's header is read first, in threads, before any work: a missing or unreadable
  file, or one whose size is not the size its record states (its boxes would belong to
  another picture of it), is refused naming it, except in training, which leaves missing and
  unreadable images out with one warning (and every later stage of a 4-step run, reading the
  set the same way, leaves out the same ones). A record without a size gets its file's;
- boxes: those not finite, without area, or wholly outside their image are left out with one
  warning (:func:`without_unusable`), in training, evaluation, statistics, anchors and
  tiling alike: no detection could match one;
- training needs an object to learn from (:func:`refuse_nothing_to_learn`); a validation set
  needs an object to score against and the training set's classes (:func:`match_classes`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any

from frcnn_cli.boxes import DEGENERATE, OUTSIDE, PLURAL, box_kind
from frcnn_cli.config import Recipe
from frcnn_cli.data.annotations import Annotations, load_annotations
from frcnn_cli.errors import DataError
from frcnn_cli.files import require_file

log = logging.getLogger("frcnn")

# purpose -> what the file is called in messages
PURPOSES = {"train": "training set", "val": "validation set", "eval": "dataset",
            "score": "dataset", "propose": "dataset", "tile": "dataset", "stats": "dataset",
            "anchors": "dataset"}
_READS_PIXELS = {"train", "val", "eval", "propose", "tile"}
_SKIPS_UNREADABLE = {"train"}
UNUSABLE = (DEGENERATE, OUTSIDE)  # box kinds no metric or loss can use


class SizeMismatch(DataError):
    """An image file whose size is not the one its record states."""


def open_dataset(path: str | os.PathLike, purpose: str, recipe: Recipe | None = None
                 ) -> Annotations:
    """The dataset at ``path`` read for ``purpose`` (a key of :data:`PURPOSES`), every rule of
    the module doc applied: DataError (InputError for a missing file) when it is refused."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}")
    what = PURPOSES[purpose]
    ann = load_annotations(require_file(path, what))
    problems = structure_problems(ann)
    if problems:
        kinds = Counter(kind for kind, _ in problems)
        raise DataError(f"{what} {ann.path}: {problems[0][1]}"
                        + (f" (and {len(problems) - 1} more: "
                           + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ")"
                           if len(problems) > 1 else "")
                        + "; 'frcnn data check' lists them, and --fix mends what it can")
    if not ann.images:
        raise DataError(f"{what} {ann.path} lists no image: there is nothing to "
                        f"{'train' if purpose == 'train' else 'work'} on")
    if purpose in _READS_PIXELS:
        ann = probe_images(ann, skip_unreadable=purpose in _SKIPS_UNREADABLE, what=what)
    ann = without_unusable(ann)
    if purpose == "train" and recipe is not None:
        refuse_nothing_to_learn(ann, recipe)
    if purpose == "val":
        refuse_nothing_to_score(ann)
    return ann


# --------------------------------------------------------------------------- structure


def structure_problems(ann: Annotations) -> list[tuple[str, str]]:
    """``(kind, message)`` of every category repeated by id or by name, and of every
    annotation whose image or category the file does not list: errors wherever the set is
    read (the kinds of :mod:`frcnn_cli.data.check`)."""
    found: list[tuple[str, str]] = []
    by_id: dict[Any, list[str]] = {}
    by_name: dict[str, list[Any]] = {}
    for c in ann.categories:
        by_id.setdefault(c["id"], []).append(c["name"])
        by_name.setdefault(c["name"], []).append(c["id"])
    for cid, names in by_id.items():
        if len(names) > 1:
            shown = ", ".join(repr(n) for n in names)
            found.append(("duplicate category id",
                          f"category id {cid} is used {len(names)} times ({shown})"))
    for name, ids in by_name.items():
        if len(set(ids)) > 1:
            found.append(("duplicate category name",
                          f"category name {name!r} is used by ids "
                          f"{', '.join(map(str, ids))}"))
    for a in ann.annotations:
        if not ann.has_image(a["image_id"]):
            found.append(("orphan annotation", f"annotation {a['id']}: image {a['image_id']} "
                          "does not exist"))
        if a["category_id"] not in by_id:
            found.append(("unknown category", f"annotation {a['id']} (image {a['image_id']}): "
                          f"category {a['category_id']} is not in 'categories'"))
    return found


# --------------------------------------------------------------------------- images


def probe_images(ann: Annotations, skip_unreadable: bool = False,
                 what: str = "dataset") -> Annotations:
    """Every image's header read (no pixel decoded) and checked: missing or unreadable files
    are refused, or left out with one warning when ``skip_unreadable``; a size that differs
    from the record's is refused (:func:`check_size`); a record without a size gets the
    file's. Returns ``ann``, or a copy without the images left out."""
    from frcnn_cli.data.images import read_headers

    paths = [ann.image_path(im) for im in ann.images]
    sizes = [h if isinstance(h, DataError) else h[:2] for h in read_headers(paths)]
    unreadable = [(im, size) for im, size in zip(ann.images, sizes, strict=True)
                  if isinstance(size, DataError)]
    for record, path, size in zip(ann.images, paths, sizes, strict=True):
        if isinstance(size, DataError):
            continue
        check_size(record, path, *size)
        if not record.get("width") or not record.get("height"):
            record["width"], record["height"] = size
    if not unreadable:
        return ann
    first = f"image {unreadable[0][0]['id']}: {unreadable[0][1]}"
    if skip_unreadable and len(unreadable) == len(ann.images):
        raise DataError(f"{what} {ann.path}: none of its {len(ann.images)} image(s) can be "
                        f"read ({first}); 'frcnn data check' lists them")
    if not skip_unreadable:
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise DataError(f"{what} {ann.path}: {first}{more}; 'frcnn data check' lists them "
                        "and --fix drops them")
    log.warning("%s %s: training leaves out %d image(s) that cannot be read, e.g. %s; "
                "'frcnn data check' lists them", what, ann.path, len(unreadable), first)
    left_out = {bad["id"] for bad, _ in unreadable}
    return ann.subset(im["id"] for im in ann.images if im["id"] not in left_out)


def check_size(record: dict[str, Any], path: str | os.PathLike, width: int, height: int
               ) -> None:
    """SizeMismatch unless the image file ``path`` of ``width`` x ``height`` pixels is the size
    its ``record`` states (when it states one). The boxes are in the pixels of the stated size: a
    file of another size would have them cut to it in training, and detections scored
    against them in evaluation, without a word."""
    stated = (record.get("width"), record.get("height"))
    if stated[0] and stated[1] and (width, height) != stated:
        turned = " (EXIF orientation turns it)" if (height, width) == stated else ""
        raise SizeMismatch(f"image {record['id']} ({path}) is {width}x{height} pixels but the "
                           f"JSON says {stated[0]}x{stated[1]}{turned}; its boxes would not fit "
                           "it. 'frcnn data check --fix OUT.json' sets the sizes from the "
                           "files, once the boxes are known to be in them")


# --------------------------------------------------------------------------- boxes and classes


def unusable_kind(annotation: dict[str, Any], image: dict[str, Any] | None) -> str | None:
    """The kind (:data:`UNUSABLE`) of an annotation whose box no loss or metric can use (not
    finite, no area, wholly outside the image as its record states the size), else None."""
    extent = (float(image["width"]), float(image["height"])) \
        if image is not None and image.get("width") and image.get("height") else None
    kind = box_kind(annotation["bbox"], extent)
    return kind if kind in UNUSABLE else None


def without_unusable(ann: Annotations) -> Annotations:
    """``ann`` without the annotations of :func:`unusable_kind`, with one warning counting
    them by kind; ``ann`` itself when there is none."""
    kinds: Counter[str] = Counter()
    kept = []
    for a in ann.annotations:
        kind = unusable_kind(a, ann.image(a["image_id"]) if ann.has_image(a["image_id"])
                             else None)
        if kind is None:
            kept.append(a)
        else:
            kinds[kind] += 1
    if not kinds:
        return ann
    counted = ", ".join(f"{n} {PLURAL[k] if n > 1 else k}" for k, n in kinds.items())
    log.warning("%s: %s left out, in training and evaluation alike (no detection can match "
                "one); 'frcnn data check' lists them and --fix drops them",
                ann.path or "dataset", counted)
    return Annotations(ann.images, kept, ann.categories, ann.root, ann.path, ann.extra)


def refuse_nothing_to_learn(ann: Annotations, recipe: Recipe) -> None:
    """A training set (its unusable boxes already left out, :func:`without_unusable`) without
    one object training learns from, one not left out as difficult or crowd
    (``recipe.data``), trains nothing: say so, before the run folder is made."""
    data = recipe.data
    if any((data.use_difficult or not a.get("difficult", 0))
           and (data.use_crowd or not a.get("iscrowd", 0)) for a in ann.annotations):
        return
    n = len(ann.annotations)
    why = "no annotations" if not n else (
        f"its {n} annotation(s) are all difficult, crowd or unusable boxes (see frcnn data "
        "check; data.use_difficult and data.use_crowd keep the first two)")
    raise DataError(f"training set {ann.path or ''} has no object to learn from "
                    f"({len(ann.images)} images, {why}); training needs at least one")


def refuse_nothing_to_score(ann: Annotations) -> None:
    """DataError when no object counts (all difficult or crowd, or none): mAP is undefined."""
    if not any(not a.get("difficult", 0) and not a.get("iscrowd", 0) for a in ann.annotations):
        raise nothing_to_score(ann)


def nothing_to_score(ann: Annotations) -> DataError:
    """The error of a dataset without an object that counts."""
    where = f" {ann.path}" if ann.path is not None else ""
    return DataError(f"dataset{where} has no object to evaluate against (difficult and crowd "
                     "objects do not count); mAP is undefined")


def match_classes(model_classes: list[dict[str, Any]], ann: Annotations
                  ) -> list[dict[str, Any]]:
    """The dataset's categories for a model's labels 1..K (``classes[label - 1]``).

    A model knows its classes by name: when the dataset has the same ids with the same names
    they are the model's own; when it numbers the same names otherwise, each label is matched
    to the category of its name (with a one-line note). A class name of the model that the
    dataset lacks (or has twice) is a DataError: its detections could not be scored.
    """
    names = {c["id"]: c["name"] for c in ann.classes}
    classes = list(model_classes)
    if any(names.get(c["id"]) != c["name"] for c in model_classes):
        ids: dict[str, list[Any]] = {}
        for c in ann.classes:
            ids.setdefault(c["name"], []).append(c["id"])
        unmatched = [c["name"] for c in model_classes if len(ids.get(c["name"], [])) != 1]
        if unmatched or len({c["name"] for c in model_classes}) < len(model_classes):
            where = f" {ann.path}" if ann.path is not None else ""
            ours = ", ".join(f"{c['id']}:{c['name']}" for c in model_classes)
            theirs = ", ".join(f"{c['id']}:{c['name']}" for c in ann.classes)
            raise DataError(f"the model's classes ({ours}) are not the dataset{where}'s "
                            f"({theirs}); was it trained on another label set?")
        classes = [{"id": ids[c["name"]][0], "name": c["name"]} for c in model_classes]
        moved = ", ".join(f"{c['name']} {c['id']} -> {m['id']}"
                          for c, m in zip(model_classes, classes, strict=True)
                          if c["id"] != m["id"])
        log.warning("note: the dataset numbers the model's classes differently (%s); "
                    "detections are matched to its categories by name", moved)
    known = {c["id"] for c in classes}
    present = {a["category_id"] for a in ann.annotations}
    unknown = [name for i, name in names.items() if i not in known and i in present]
    if unknown:
        log.warning("the model was not trained on %s, which the dataset has: %s AP 0",
                    ", ".join(f"'{n}'" for n in unknown), "they score" if len(unknown) > 1
                    else "it scores")
    return classes
