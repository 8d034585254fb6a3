"""Pascal VOC XML to COCO: the VOCdevkit layout and flat labelImg folders.

Layouts:

- VOCdevkit: ``SRC/Annotations/*.xml``, ``SRC/ImageSets/Main/<split>.txt``,
  ``SRC/JPEGImages/``. ``SRC`` may also be a ``VOCdevkit`` folder holding exactly one
  ``VOC20xx`` folder. Without a split every XML file is read.
- flat (labelImg): XML files beside their images in one folder; images without an XML file
  are not labelled yet and are left out.

Boxes: VOC stores inclusive 1-based pixel indices, so ``x = xmin - 1, y = ymin - 1,
w = xmax - xmin + 1, h = ymax - ymin + 1``; continuous IoU of such boxes equals the VOC
devkit's IoU. ``difficult`` and ``truncated`` are kept (0 or 1) on every annotation; images
without objects stay in the set.

Category ids: when every class name is one of the 20 VOC classes, all 20 are written with
the devkit's ids (aeroplane 1 ... tvmonitor 20), so every split of a VOC set shares one
numbering; otherwise the names found get ids 1..K in sorted order, unless a class list is
given, which fixes the order.

Image ids: the numbers in the file names when all are numeric (``000005`` -> 5,
``2008_000008`` -> 2008000008, as VOC evaluation tools do), else 1..N in sorted name order.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.data.formats.builder import CocoBuilder, listed_categories, sorted_categories
from frcnn_cli.data.images import IMAGE_SUFFIXES
from frcnn_cli.errors import DataError, InputError
from frcnn_cli.files import read_text, require_dir

log = logging.getLogger("frcnn")

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

_NUMERIC_STEM = re.compile(r"^\d+(_\d+)?$")


def read_voc(src: str | os.PathLike, split: str | None = None,
             classes: Sequence[str] | None = None) -> Annotations:
    """Read a VOCdevkit year folder or a flat labelImg folder (see the module doc)."""
    root = _year_folder(require_dir(src, "VOC folder"))
    if (root / "Annotations").is_dir():
        xml_files = _devkit_files(root, split)
        image_dir = root / "JPEGImages"
    else:
        if split is not None:
            raise InputError(f"{root} has no ImageSets/Main; --split needs the VOCdevkit "
                             "layout (Annotations/, ImageSets/Main/, JPEGImages/)")
        xml_files = sorted(root.glob("*.xml"))
        if not xml_files:
            raise DataError(f"no VOC XML files in {root} (expected Annotations/ or *.xml)")
        image_dir = root
        _report_unlabelled(root, xml_files)

    builder = CocoBuilder(root)
    ids = _image_ids([f.stem for f in xml_files])
    for xml_file, image_id in zip(xml_files, ids, strict=True):
        _read_xml(xml_file, image_dir, image_id, builder)
    return builder.build(_categories(builder.names, classes))


def _year_folder(src: Path) -> Path:
    if (src / "Annotations").is_dir() or any(src.glob("*.xml")):
        return src
    years = sorted(p for p in src.iterdir() if p.is_dir() and (p / "Annotations").is_dir())
    if len(years) == 1:
        return years[0]
    if years:
        names = ", ".join(p.name for p in years)
        raise InputError(f"{src} holds several VOC sets ({names}); convert each on its own")
    return src


def _devkit_files(root: Path, split: str | None) -> list[Path]:
    ann_dir = root / "Annotations"
    if split is None:
        files = sorted(ann_dir.glob("*.xml"))
        if not files:
            raise DataError(f"no XML files in {ann_dir}")
        return files
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        have = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt")
                      if "_" not in p.stem)
        hint = f"; available: {', '.join(have)}" if have else ""
        raise InputError(f"split file not found: {listing}{hint}")
    stems = [line.split()[0] for line in read_text(listing, "VOC split file").splitlines()
             if line.strip()]
    files = [ann_dir / f"{s}.xml" for s in stems]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{listing} lists {len(missing)} image(s) without an XML file, "
                        f"e.g. {missing[0]}")
    return files


def _report_unlabelled(folder: Path, xml_files: list[Path]) -> None:
    labelled = {f.stem for f in xml_files}
    unlabelled = [p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.stem not in labelled]
    if unlabelled:
        log.info("%d image(s) in %s have no XML file and are left out (not labelled yet)",
                 len(unlabelled), folder)


def _image_ids(stems: list[str]) -> list[int]:
    if stems and all(_NUMERIC_STEM.match(s) for s in stems):
        ids = [int(s.replace("_", "")) for s in stems]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(1, len(stems) + 1))


def _read_xml(xml_file: Path, image_dir: Path, image_id: int, builder: CocoBuilder) -> None:
    try:
        tree = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise DataError(f"{xml_file} is not valid XML: {e}") from None
    except OSError as e:
        raise DataError(f"cannot read {xml_file}: {e.strerror or e}") from None
    image = _image_file(tree, xml_file, image_dir)
    size = tree.find("size")
    width = _number(size, "width", xml_file) if size is not None else None
    height = _number(size, "height", xml_file) if size is not None else None
    builder.add_image(image, width, height, image_id)
    for obj in tree.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{xml_file}: an <object> has no <name>")
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{xml_file}: object '{name}' has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(box, k, xml_file, required=True)
                                  for k in ("xmin", "ymin", "xmax", "ymax"))
        builder.add_object(image_id, name, voc_box_to_coco(xmin, ymin, xmax, ymax),
                           difficult=_flag(obj, "difficult"), truncated=_flag(obj, "truncated"))


def voc_box_to_coco(xmin: float, ymin: float, xmax: float, ymax: float) -> list[float]:
    """Inclusive 1-based VOC pixel indices -> continuous ``[x, y, w, h]``."""
    return [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]


def _image_file(tree: ET.Element, xml_file: Path, image_dir: Path) -> Path:
    """The image an XML file describes: its <filename> in the image folder, else a file with
    the XML's stem and any image suffix (labelImg's <filename> is sometimes stale)."""
    named = (tree.findtext("filename") or "").strip()
    if named and (image_dir / named).is_file():
        return image_dir / named
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        cand = image_dir / f"{xml_file.stem}{suffix}"
        if cand.is_file():
            return cand
    # Not found: keep the stated name so `frcnn data check` can report it.
    return image_dir / (named or f"{xml_file.stem}.jpg")


def _number(node: ET.Element, key: str, xml_file: Path, required: bool = False) -> float | None:
    text = (node.findtext(key) or "").strip()
    if not text:
        if required:
            raise DataError(f"{xml_file}: <{key}> is missing")
        return None
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{xml_file}: <{key}> is not a number: {text!r}") from None


def _flag(obj: ET.Element, key: str) -> int:
    text = (obj.findtext(key) or "0").strip()
    try:
        return 1 if float(text) else 0
    except ValueError:
        return 1 if text.lower() in ("true", "yes") else 0


def _categories(names: set[str], classes: Sequence[str] | None) -> list[dict[str, Any]]:
    if classes:
        return listed_categories(classes)
    if names and names <= set(VOC_CLASSES):
        return listed_categories(VOC_CLASSES)
    return sorted_categories(names)
