"""YOLO text labels to COCO.

Layout: ``SRC/data.yaml`` (or ``dataset.yaml``) with ``names`` as a list or an
``{index: name}`` mapping, or ``SRC/classes.txt`` (one name a line); images in
``images/<split>/`` beside ``labels/<split>/``, a label file per image with the same stem.
A split may also be named in data.yaml (``val: images/val2017`` or a .txt list of images).
Without a split, ``images/`` itself or a flat folder of images with their .txt files beside
them is read. An image without a label file has no object.

Each label line is ``class cx cy w h`` in 0..1 of the image (a longer line is a polygon
``class x1 y1 x2 y2 ...``, whose extent becomes the box). Pixel boxes are
``x = (cx - w / 2) * W, y = (cy - h / 2) * H, w * W, h * H``, rounded to 0.01 px (the
6-decimal text files carry no more). Category ids are the YOLO class index + 1; image ids are
1..N in sorted path order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.data.formats.builder import CocoBuilder
from frcnn_cli.data.images import image_size, is_image_file
from frcnn_cli.errors import DataError, InputError
from frcnn_cli.files import read_text

log = logging.getLogger("frcnn")

_YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml")
_CLASS_FILES = ("classes.txt", "obj.names", "classes.names")


def read_yolo(src: str | os.PathLike, split: str | None = None,
              classes: Sequence[str] | None = None) -> Annotations:
    """Read a YOLO dataset folder (or its data.yaml) for one split; see the module doc."""
    src = Path(src)
    if not src.exists():
        raise InputError(f"YOLO dataset not found: {src}")
    spec_file = src if src.is_file() else _find_spec(src)
    folder = src.parent if src.is_file() else src
    spec = _read_spec(spec_file) if spec_file.suffix in (".yaml", ".yml") else {}
    names = list(classes) if classes else _names(spec_file, spec)
    root = _dataset_root(spec, folder)
    images = _split_images(root, spec, split)
    if not images:
        where = f"split '{split}'" if split else str(root)
        raise DataError(f"no images found for {where} of the YOLO dataset {folder}")

    builder = CocoBuilder(root)
    unreadable = []
    for path in images:
        try:
            width, height = image_size(path)
        except DataError as e:
            unreadable.append(str(e))
            continue
        image_id = builder.add_image(path, width, height)
        label = _label_file(path)
        if label.is_file():
            for name, box in _read_labels(label, names, width, height):
                builder.add_object(image_id, name, box)
    if unreadable:
        log.warning("left out %d unreadable image(s): %s%s", len(unreadable),
                    "; ".join(unreadable[:3]), " ..." if len(unreadable) > 3 else "")
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    return builder.build(cats)


def _find_spec(folder: Path) -> Path:
    for name in _YAML_NAMES + _CLASS_FILES:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder} has no data.yaml or classes.txt naming the YOLO classes")


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(read_text(path, "YOLO data file"))
    except yaml.YAMLError as e:
        raise DataError(f"{path} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(spec, dict):
        raise DataError(f"{path} must be a mapping with 'names'")
    return spec


def _names(spec_file: Path, spec: dict[str, Any]) -> list[str]:
    if spec_file.suffix not in (".yaml", ".yml"):
        return [ln.strip() for ln in read_text(spec_file, "YOLO class names file").splitlines()
                if ln.strip()]
    names = spec.get("names")
    if isinstance(names, dict):
        try:
            index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DataError(f"{spec_file}: 'names' keys must be class indices") from None
        if sorted(index) != list(range(len(index))):
            raise DataError(f"{spec_file}: 'names' indices must be 0..{len(index) - 1}")
        return [index[i] for i in range(len(index))]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise DataError(f"{spec_file} needs 'names' as a list or an {{index: name}} mapping")


def _dataset_root(spec: dict[str, Any], folder: Path) -> Path:
    path = spec.get("path")
    if isinstance(path, str) and path:
        cand = Path(path) if Path(path).is_absolute() else folder / path
        if cand.is_dir():
            return cand
    # 'path' often names the author's machine; the folder of data.yaml is the usual root.
    return folder


def _split_images(root: Path, spec: dict[str, Any], split: str | None) -> list[Path]:
    if split is not None:
        entry = spec.get(split)
        if entry:
            entries = entry if isinstance(entry, list) else [entry]
            return sorted({p for e in entries for p in _images_of(root / str(e))})
        folder = root / "images" / split
        if not folder.is_dir():
            have = sorted(p.name for p in (root / "images").iterdir() if p.is_dir()) \
                if (root / "images").is_dir() else []
            hint = f"; available: {', '.join(have)}" if have else ""
            raise InputError(f"split folder not found: {folder}{hint}")
        return _images_of(folder)
    images_dir = root / "images"
    if images_dir.is_dir():
        direct = [p for p in images_dir.iterdir() if p.is_file() and is_image_file(p)]
        if direct:
            return sorted(direct)
        subs = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
        raise InputError(f"{images_dir} has splits ({', '.join(subs)}); choose one with --split")
    return sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p))


def _images_of(entry: Path) -> list[Path]:
    """Images under a folder (recursively), or listed in a .txt file (paths relative to it)."""
    if entry.is_dir():
        return sorted(p for p in entry.rglob("*") if p.is_file() and is_image_file(p))
    if entry.is_file() and entry.suffix == ".txt":
        lines = [ln.strip() for ln in read_text(entry, "YOLO image list").splitlines()]
        return [(entry.parent / ln) if not Path(ln).is_absolute() else Path(ln)
                for ln in lines if ln]
    raise InputError(f"YOLO split not found: {entry}")


def _label_file(image: Path) -> Path:
    """``.../images/x/a.jpg`` -> ``.../labels/x/a.txt``; a flat folder keeps the folder."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _read_labels(label: Path, names: list[str], width: int, height: int
                 ) -> list[tuple[str, list[float]]]:
    out = []
    for n, line in enumerate(read_text(label, "YOLO label file").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label}:{n}"
        try:
            cls = int(float(fields[0]))
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise DataError(f"{where}: expected 'class cx cy w h' numbers, got {line!r}") from None
        if not 0 <= cls < len(names):
            raise DataError(f"{where}: class index {cls} is outside 0..{len(names) - 1}")
        if len(values) == 4:
            box = yolo_box_to_coco(*values, width, height)
        elif len(values) >= 6 and len(values) % 2 == 0:
            xs, ys = values[0::2], values[1::2]
            box = [round(v, 2) for v in (min(xs) * width, min(ys) * height,
                                         (max(xs) - min(xs)) * width,
                                         (max(ys) - min(ys)) * height)]
        else:
            raise DataError(f"{where}: expected 'class cx cy w h', got {len(values)} numbers")
        out.append((names[cls], box))
    return out


def yolo_box_to_coco(cx: float, cy: float, w: float, h: float, width: int, height: int
                     ) -> list[float]:
    """Normalised centre box -> continuous pixel ``[x, y, w, h]`` rounded to 0.01 px."""
    return [round((cx - w / 2) * width, 2), round((cy - h / 2) * height, 2),
            round(w * width, 2), round(h * height, 2)]
