"""COCO JSON from elsewhere, validated and normalised into the canonical form.

What changes: ``file_name`` becomes relative to the output file (the images are looked for
beside the JSON, in an ``images/`` folder beside it, or, for ``annotations/instances_X.json``,
in ``X/`` next to ``annotations/``, unless an image folder is given); non-integer image,
annotation or category ids are renumbered 1..N in file order (category ids in sorted order);
``area`` (box area) and ``iscrowd`` (0) are filled where missing; ``width`` and ``height``
are read from the image headers where missing. Category ids otherwise stay as they are.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from frcnn_cli.data.annotations import Annotations, annotations_from_dict
from frcnn_cli.data.images import image_size
from frcnn_cli.errors import DataError
from frcnn_cli.files import read_text, require_dir, require_file

log = logging.getLogger("frcnn")

_PROBE = 20  # images tried when looking for the image folder


def read_coco(src: str | os.PathLike, images: str | os.PathLike | None = None
              ) -> Annotations:
    """Read and normalise a COCO detection JSON (see the module doc)."""
    path = require_file(src, "COCO file")
    try:
        data = json.loads(read_text(path, "COCO file"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: line {e.lineno} column {e.colno}: "
                        f"{e.msg}") from None
    if isinstance(data, dict):
        _renumber(data)
    root = require_dir(images, "image folder") if images is not None else None
    ann = annotations_from_dict(data, root=path.parent, source=str(path))
    ann.root = root or _image_root(ann, path)
    _fill_sizes(ann)
    ann.reindex()
    return ann


def _image_root(ann: Annotations, path: Path) -> Path:
    folder = path.parent
    stem = path.stem.removeprefix("instances_")
    candidates = [folder, folder / "images", folder.parent / stem, folder / stem,
                  folder.parent / "images" / stem, folder.parent / "images"]
    probe = ann.images[:_PROBE]
    if not probe:
        return folder
    for cand in candidates:
        if sum((cand / im["file_name"]).is_file() for im in probe) > len(probe) // 2:
            return cand
    log.warning("images of %s not found beside it; file names are kept relative to its folder "
                "(give the image folder with --images)", path)
    return folder


def _renumber(data: dict[str, Any]) -> None:
    """Give string ids integer ones, keeping every reference consistent."""
    images = data.get("images")
    cats = data.get("categories")
    anns = data.get("annotations") or []
    if not (isinstance(images, list) and isinstance(cats, list) and isinstance(anns, list)):
        return
    if any(isinstance(im, dict) and _needs_number(im.get("id")) for im in images):
        new = {im.get("id"): i + 1 for i, im in enumerate(images) if isinstance(im, dict)}
        for im in images:
            if isinstance(im, dict):
                im["id"] = new[im.get("id")]
        for a in anns:
            if isinstance(a, dict) and a.get("image_id") in new:
                a["image_id"] = new[a["image_id"]]
    if any(isinstance(c, dict) and _needs_number(c.get("id")) for c in cats):
        order = sorted((c for c in cats if isinstance(c, dict)), key=lambda c: str(c.get("id")))
        new = {c.get("id"): i + 1 for i, c in enumerate(order)}
        for c in cats:
            if isinstance(c, dict):
                c["id"] = new[c.get("id")]
        for a in anns:
            if isinstance(a, dict) and a.get("category_id") in new:
                a["category_id"] = new[a["category_id"]]
    if any(isinstance(a, dict) and _needs_number(a.get("id")) for a in anns):
        for i, a in enumerate(anns):
            if isinstance(a, dict):
                a["id"] = i + 1


def _needs_number(value: Any) -> bool:
    return value is not None and (not isinstance(value, int) or isinstance(value, bool))


def _fill_sizes(ann: Annotations) -> None:
    for im in ann.images:
        if not im.get("width") or not im.get("height"):
            try:
                im["width"], im["height"] = image_size(ann.image_path(im))
            except DataError as e:
                log.warning("size of image %s unknown: %s", im["id"], e)
