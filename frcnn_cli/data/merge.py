"""Merging datasets into one: PASCAL VOC 2007 + 2012 trainval ("07+12"), or any union.

Categories are matched by name (case-sensitive). The merged set keeps the first input's
categories, in its order and with its ids, and appends the names only later inputs have, with
ids after the largest so far. Image and annotation ids are renumbered 1..N in input order, and
every other field of an image or annotation (``difficult``, ``truncated``, ``iscrowd``,
``area``, ``width``, ``height``, ...) is kept. ``file_name`` is rewritten relative to the
output's folder, so the merged file works wherever it is written; absolute names stay absolute.

A class map (``--map``, ``--one-class``: :mod:`frcnn_cli.data.formats.classmap`) renames and
merges each input's classes first, each new name keeping the id of its first old category, so
``--map car=vehicle`` matches one input's ``car`` with another's ``vehicle``.

An image file listed in two inputs is an error rather than kept once: its two records may
disagree, and keeping both would count its objects twice (or leak a validation image into
training). Top-level keys other than the three lists (``info``, ``licenses``) describe one
input and are not carried over.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from frcnn_cli.data.annotations import _INDENT_LIMIT, Annotations, relative_name
from frcnn_cli.data.formats.classmap import ClassMap, map_classes
from frcnn_cli.errors import DataError, InputError
from frcnn_cli.files import prepare_output_file, write_json
from frcnn_cli.outputs import dataset_kind, dataset_marker

WRITER = "data merge"  # the command named in the sets it writes (frcnn_cli.outputs)


def merge_annotations(datasets: Sequence[Annotations], folder: str | os.PathLike,
                      class_map: ClassMap | None = None) -> Annotations:
    """One dataset holding every image and object of ``datasets``, in their order.

    ``folder`` is where the merged JSON will be written: the result's ``root``, which its
    relative ``file_name`` s are relative to. ``class_map`` renames and merges classes in
    every input first. Raises InputError for fewer than two inputs, one file given twice or a
    mapped class no input has, and DataError, naming the files, for an image file in two
    inputs, two categories of one input sharing a name, or an annotation whose image or
    category is not in its file (``frcnn data check --fix`` drops those).
    """
    if len(datasets) < 2:
        raise InputError(f"merge needs two or more annotation files, got {len(datasets)}")
    folder = Path(folder)
    names = [_name(ann, i) for i, ann in enumerate(datasets)]
    _refuse_repeated_inputs(datasets)
    if class_map is not None:
        datasets = _map_each(datasets, class_map)

    categories: list[dict[str, Any]] = []
    id_of_name: dict[str, int] = {}
    next_category_id = 1
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    first_listed: dict[Path, int] = {}  # resolved image file -> index of the input listing it

    for k, ann in enumerate(datasets):
        by_name = _categories_by_name(ann, names[k])
        for name, cat in by_name.items():
            if name not in id_of_name:
                # the first input's ids are kept; later names go after the largest id so far
                new_id = cat["id"] if k == 0 else next_category_id
                categories.append({**cat, "id": new_id})
                id_of_name[name] = new_id
                next_category_id = max(next_category_id, new_id + 1)
        category_map = {cat["id"]: id_of_name[name] for name, cat in by_name.items()}

        image_map: dict[Any, int] = {}
        for im in ann.images:
            if im["id"] in image_map:
                raise DataError(f"{names[k]}: image id {im['id']} is used twice; renumber "
                                f"with: frcnn data check {names[k]} --fix OUT.json")
            file = ann.image_path(im)
            key = file.resolve()
            other = first_listed.setdefault(key, k)
            if other != k:
                raise DataError(f"image {file} is in both {names[other]} and {names[k]}; "
                                "remove it from one of them")
            image_map[im["id"]] = len(images) + 1
            images.append({**im, "id": image_map[im["id"]],
                           "file_name": _file_name(ann, im, folder)})

        for a in ann.annotations:
            for what, key, known in (("image", "image_id", image_map),
                                     ("category", "category_id", category_map)):
                if a[key] not in known:
                    raise DataError(f"{names[k]}: annotation {a['id']} refers to {what} "
                                    f"{a[key]}, which is not in the file; drop it with: "
                                    f"frcnn data check {names[k]} --fix OUT.json")
            annotations.append({**a, "id": len(annotations) + 1,
                                "image_id": image_map[a["image_id"]],
                                "category_id": category_map[a["category_id"]]})

    return Annotations(images, annotations, categories, root=folder)


def _map_each(datasets: Sequence[Annotations], class_map: ClassMap) -> list[Annotations]:
    """Every input with ``class_map`` applied; a mapped name must be in some input."""
    class_map.check_known((c["name"] for ann in datasets for c in ann.categories), "any input")
    mapped = []
    for ann in datasets:
        have = {c["name"] for c in ann.categories}
        own = ClassMap({old: new for old, new in class_map.renames.items() if old in have},
                       class_map.one_class)
        mapped.append(map_classes(ann, own, "keep"))
    return mapped


def partial_classes(datasets: Sequence[Annotations], class_map: ClassMap | None = None
                    ) -> dict[str, list[str]]:
    """``{class name: [inputs that have it]}`` for the names some input lacks (after
    ``class_map``), in merged order (a class an input lacks is unlabelled there: its objects
    count as background)."""
    holders: dict[str, list[str]] = {}
    rename = class_map or (lambda name: name)
    for i, ann in enumerate(datasets):
        for name in dict.fromkeys(rename(c["name"]) for c in ann.categories):
            holders.setdefault(name, []).append(_name(ann, i))
    return {c: files for c, files in holders.items() if len(files) < len(datasets)}


def save_merged(merged: Annotations, path: str | os.PathLike,
                inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write a merged set to ``path`` (in the folder it was merged for) atomically, its
    ``file_name`` s as they are: unlike :func:`save_annotations`, absolute names stay absolute.
    ``inputs`` (the input files and their images) are files the output must not replace."""
    out = prepare_output_file(path, dataset_kind(WRITER),
                              inputs=itertools.chain(inputs, merged.image_files()), what="--out")
    indent = 2 if len(merged.images) <= _INDENT_LIMIT else None
    data = {k: v for k, v in merged.to_dict().items() if k != "frcnn"}
    return write_json(out, {**dataset_marker(WRITER), **data}, indent=indent)


def _name(ann: Annotations, index: int) -> str:
    return str(ann.path) if ann.path is not None else f"input {index + 1}"


def _refuse_repeated_inputs(datasets: Sequence[Annotations]) -> None:
    seen: dict[Path, str] = {}
    for ann in datasets:
        if ann.path is None:
            continue
        key = Path(ann.path).resolve()
        if key in seen:
            raise InputError(f"{ann.path} is given twice (as {seen[key]} and {ann.path}); "
                             "give each file once")
        seen[key] = str(ann.path)


def _categories_by_name(ann: Annotations, source: str) -> dict[str, dict[str, Any]]:
    """The categories of one input by name, in file order; two ids with one name are an error
    (merging by name could not tell them apart)."""
    by_name: dict[str, dict[str, Any]] = {}
    ids: set[Any] = set()
    for c in ann.categories:
        if c["name"] in by_name:
            raise DataError(f"{source}: categories {by_name[c['name']]['id']} and {c['id']} "
                            f"are both named {c['name']!r}; merging matches classes by name")
        if c["id"] in ids:
            raise DataError(f"{source}: category id {c['id']} is used twice; fix it with: "
                            f"frcnn data check {source} --fix OUT.json")
        by_name[c["name"]] = c
        ids.add(c["id"])
    return by_name


def _file_name(ann: Annotations, image: dict[str, Any], folder: Path) -> str:
    """``file_name`` relative to ``folder``, or unchanged when it is absolute."""
    if Path(image["file_name"]).is_absolute():
        return image["file_name"]
    return relative_name(ann.image_path(image), folder)
