"""Readers of other dataset formats; each returns :class:`Annotations` ready to be saved.

    ann = read_dataset("VOCdevkit/VOC2007", "voc", split="test")
    save_annotations(ann, "voc07-test.json")

The box rule and category numbering of each format are in its module's docstring; a
``class_map`` (:mod:`frcnn_cli.data.formats.classmap`) renames and merges classes after.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.data.formats.classmap import ClassMap, map_classes
from frcnn_cli.errors import InputError

FORMATS = ("voc", "coco", "yolo", "csv")


def read_dataset(src: str | os.PathLike, fmt: str, split: str | None = None,
                 classes: Sequence[str] | None = None,
                 images: str | os.PathLike | None = None,
                 class_map: ClassMap | None = None) -> Annotations:
    """Read ``src`` in format ``fmt`` (voc, coco, yolo, csv).

    ``split`` picks a VOC ImageSets list or a YOLO split; ``classes`` fixes the class list
    (VOC, CSV: the category order; YOLO: the names of indices 0..K-1); ``images`` is the
    image folder of a COCO file when it is not beside it; ``class_map`` renames and merges
    the classes read, numbered by the format's rule (COCO keeps ids; YOLO, and VOC or CSV
    with ``classes``, number in the old order; VOC and CSV otherwise in sorted order).
    """
    ann = _read(src, fmt, split, classes, images)
    if class_map is None:
        return ann
    numbering = {"coco": "keep", "yolo": "listed"}.get(fmt, "listed" if classes else "sorted")
    return map_classes(ann, class_map, numbering, source=str(src))


def _read(src: str | os.PathLike, fmt: str, split: str | None,
          classes: Sequence[str] | None, images: str | os.PathLike | None) -> Annotations:
    if fmt not in FORMATS:
        raise InputError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if split is not None and fmt in ("coco", "csv"):
        raise InputError(f"--split applies to voc and yolo, not to {fmt}")
    if images is not None and fmt != "coco":
        raise InputError("--images applies to coco only")
    if classes is not None and fmt == "coco":
        raise InputError("--classes does not apply to coco; its categories are kept")
    if fmt == "voc":
        from frcnn_cli.data.formats.voc import read_voc

        return read_voc(src, split, classes)
    if fmt == "yolo":
        from frcnn_cli.data.formats.yolo import read_yolo

        return read_yolo(src, split, classes)
    if fmt == "csv":
        from frcnn_cli.data.formats.csv import read_csv

        return read_csv(src, classes)
    from frcnn_cli.data.formats.coco import read_coco

    return read_coco(src, images)
