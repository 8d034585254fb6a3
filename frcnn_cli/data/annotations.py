"""COCO detection JSON in memory: the one dataset format every command reads and writes.

A file holds ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
(``id``, ``image_id``, ``category_id``, ``bbox = [x, y, w, h]`` continuous pixels, ``area``,
``iscrowd``, optionally ``difficult``) and ``categories`` (``id``, ``name``). ``file_name`` is
relative to the JSON file's folder, so a dataset can be moved as one folder.

    ann = load_annotations("demo/train.json")
    ann.classes                      # [{"id": 1, "name": "circle"}, ...] in label order 1..K
    for image in ann.images:
        ann.image_path(image)        # Path of the file
        ann.objects(image["id"])     # its annotations

Loading checks the structure (types and required keys, one id per image) and fills ``area``
and ``iscrowd``; value problems (boxes outside the image, unknown categories, duplicate
boxes) are the business of :mod:`frcnn_cli.data.check`, which can report them because
loading keeps them.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frcnn_cli.boxes import is_number, require_xywh
from frcnn_cli.errors import DataError
from frcnn_cli.files import prepare_output_file, require_file, write_json
from frcnn_cli.outputs import dataset_kind, dataset_marker

# Files with more images than this are written without indentation (COCO-sized sets).
_INDENT_LIMIT = 5000


@dataclass
class Annotations:
    """A COCO detection dataset: plain dicts as in the file, plus lookups.

    ``root`` is the folder ``file_name`` is relative to (the JSON file's folder); ``path`` is
    the file it was loaded from, if any. ``extra`` keeps other top-level keys (``info``,
    ``licenses``) so they survive a round trip. Build a new object rather than mutating the
    lists, or call :meth:`reindex` afterwards.
    """

    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    root: Path = Path(".")
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the lookups after the lists changed."""
        self._image_by_id = {im["id"]: im for im in self.images}
        self._objects: dict[Any, list[dict[str, Any]]] = {im["id"]: [] for im in self.images}
        for a in self.annotations:
            self._objects.setdefault(a["image_id"], []).append(a)
        cats = sorted(self.categories, key=lambda c: c["id"])
        self._classes = [{"id": c["id"], "name": c["name"]} for c in cats]
        self._label_of = {c["id"]: i + 1 for i, c in enumerate(self._classes)}

    # ----------------------------------------------------------------- lookups

    @property
    def classes(self) -> list[dict[str, Any]]:
        """``[{"id", "name"}]`` sorted by category id: ``classes[label - 1]`` for labels 1..K."""
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    def label_of(self, category_id: int) -> int:
        """Label 1..K of a category id (KeyError for an unknown category)."""
        return self._label_of[category_id]

    def has_category(self, category_id: Any) -> bool:
        return category_id in self._label_of

    def image(self, image_id: Any) -> dict[str, Any]:
        """The image record with this id (KeyError if none)."""
        return self._image_by_id[image_id]

    def has_image(self, image_id: Any) -> bool:
        return image_id in self._image_by_id

    def objects(self, image_id: Any) -> list[dict[str, Any]]:
        """Annotations of one image, in file order (empty for an image with no object)."""
        return self._objects.get(image_id, [])

    def image_path(self, image: dict[str, Any]) -> Path:
        """Where the image file of a record lies."""
        return self.root / image["file_name"]

    def image_files(self) -> Iterator[Path]:
        """The image file of every record, lazily (for output checks: no output replaces
        one)."""
        return (self.image_path(im) for im in self.images)

    # ----------------------------------------------------------------- derived sets

    def subset(self, image_ids: Iterable[Any]) -> Annotations:
        """The images with these ids (in this dataset's order), their annotations, all
        categories."""
        keep = set(image_ids)
        images = [im for im in self.images if im["id"] in keep]
        anns = [a for a in self.annotations if a["image_id"] in keep]
        return Annotations(images, anns, list(self.categories), self.root, None,
                           dict(self.extra))

    def to_dict(self, folder: str | os.PathLike | None = None) -> dict[str, Any]:
        """The COCO dict; with ``folder``, ``file_name`` is rewritten relative to that folder."""
        images = self.images
        if folder is not None:
            images = [{**im, "file_name": relative_name(self.image_path(im), Path(folder))}
                      for im in self.images]
        return {**self.extra, "images": images, "annotations": self.annotations,
                "categories": self.categories}


def relative_name(file: Path, folder: Path) -> str:
    """``file`` relative to ``folder`` with forward slashes (``../`` where needed); an absolute
    path when there is no relative one (another drive)."""
    try:
        rel = os.path.relpath(os.path.abspath(file), os.path.abspath(folder))
    except ValueError:
        return Path(os.path.abspath(file)).as_posix()
    return Path(rel).as_posix()


# --------------------------------------------------------------------------- reading


def load_annotations(path: str | os.PathLike) -> Annotations:
    """Read a COCO detection JSON file.

    Raises InputError when the file is missing and DataError, naming the file and the entry,
    when it is not JSON or lacks the structure of a detection set (``images`` with unique
    ``id`` s, ``categories``, an ``annotations`` list whose entries have ``image_id``,
    ``category_id`` and a 4-number ``bbox``). ``area`` (w * h) and ``iscrowd`` (0) are filled
    where missing, and annotations without an ``id`` get fresh ones after the largest.
    """
    p = require_file(path, "annotation file")
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{p} is not valid JSON: line {e.lineno} column {e.colno}: "
                        f"{e.msg}") from None
    except UnicodeDecodeError:
        raise DataError(f"{p} is not a text JSON file") from None
    except OSError as e:
        raise DataError(f"cannot read {p}: {e.strerror or e}") from None
    return annotations_from_dict(data, root=p.parent, source=str(p), path=p)


def annotations_from_dict(data: Any, root: str | os.PathLike = ".", source: str = "dataset",
                          path: Path | None = None) -> Annotations:
    """Validate the structure of a COCO dict (see :func:`load_annotations`) and wrap it."""
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a JSON object with 'images', 'annotations' and "
                        f"'categories', got {type(data).__name__}")
    for key in ("images", "categories"):
        if key not in data:
            raise DataError(f"{source}: missing '{key}'; is this a COCO detection file?")
    images = _list(data, "images", source)
    anns = _list(data, "annotations", source) if "annotations" in data else []
    cats = _list(data, "categories", source)

    for i, im in enumerate(images):
        where = f"{source}: images[{i}]"
        _require_dict(im, where)
        _require_id(im, "id", where)
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise DataError(f"{where} needs a 'file_name' string")
        for key in ("width", "height"):
            if im.get(key) is not None and not is_number(im[key]):
                raise DataError(f"{where}: '{key}' must be a number, got {im[key]!r}")
    _refuse_repeated_image_ids(images, source)
    for i, c in enumerate(cats):
        where = f"{source}: categories[{i}]"
        _require_dict(c, where)
        _require_id(c, "id", where)
        if not isinstance(c.get("name"), str):
            raise DataError(f"{where} needs a 'name' string")

    next_id = 1 + max((a["id"] for a in anns
                       if isinstance(a, dict) and _is_int(a.get("id"))), default=0)
    for i, a in enumerate(anns):
        where = f"{source}: annotations[{i}]"
        _require_dict(a, where)
        if "id" not in a:
            a["id"] = next_id
            next_id += 1
        _require_id(a, "id", where)
        _require_id(a, "image_id", where)
        _require_id(a, "category_id", where)
        box = require_xywh(a.get("bbox"), f"{where} (id {a['id']})")
        a.setdefault("iscrowd", 0)
        if a.get("area") is None:
            w, h = box[2], box[3]
            a["area"] = float(w * h) if math.isfinite(w * h) else 0.0
    extra = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    return Annotations(images, anns, cats, Path(root), path, extra)


def _refuse_repeated_image_ids(images: list[dict[str, Any]], source: str) -> None:
    """Annotations name their image by id: two images with one id would share (and lose)
    objects in every command, so a set where that happens is refused outright."""
    first: dict[Any, str] = {}
    for im in images:
        if im["id"] in first:
            raise DataError(f"{source}: image id {im['id']} is used twice, by "
                            f"{first[im['id']]} and {im['file_name']}; annotations name their "
                            "image by id, so each image needs its own: give one of them a new "
                            "id (and its annotations that image_id)")
        first[im["id"]] = im["file_name"]


def _list(data: dict[str, Any], key: str, source: str) -> list[Any]:
    value = data[key]
    if not isinstance(value, list):
        raise DataError(f"{source}: '{key}' must be a list, got {type(value).__name__}")
    return value


def _require_dict(obj: Any, where: str) -> None:
    if not isinstance(obj, dict):
        raise DataError(f"{where} must be an object, got {type(obj).__name__}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _require_id(obj: dict[str, Any], key: str, where: str) -> None:
    if not _is_int(obj.get(key)):
        raise DataError(f"{where}: '{key}' must be an integer, got {obj.get(key)!r}")


# --------------------------------------------------------------------------- writing


def save_annotations(ann: Annotations, path: str | os.PathLike,
                     inputs: Iterable[str | os.PathLike] = (),
                     written_by: str = "save_annotations") -> Path:
    """Write ``ann`` to ``path`` atomically, ``file_name`` made relative to ``path``'s folder.

    ``written_by`` names the command in the file's first entry (``"frcnn": {"written_by":
    ...}``); an existing ``path`` is replaced only when that same command wrote it
    (:func:`frcnn_cli.outputs.dataset_kind`). ``inputs`` are files the output must not
    replace; the dataset's own file and its image files always are.
    """
    guard = itertools.chain(inputs, [ann.path] if ann.path is not None else [],
                            ann.image_files())
    out = prepare_output_file(path, dataset_kind(written_by), inputs=guard,
                              what="annotation file")
    data = ann.to_dict(folder=out.parent)
    data = {**dataset_marker(written_by), **{k: v for k, v in data.items() if k != "frcnn"}}
    indent = 2 if len(ann.images) <= _INDENT_LIMIT else None
    return write_json(out, data, indent=indent)
