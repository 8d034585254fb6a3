"""CSV rows to COCO: ``image_path,xmin,ymin,xmax,ymax,label``, one object a row.

Paths are relative to the CSV file (absolute paths work too). A header row is optional.
Boxes are continuous corners: ``x = xmin, y = ymin, w = xmax - xmin, h = ymax - ymin``. A row
whose box fields and label are empty lists an image with no object. Image sizes come from the
file headers. Category ids are 1..K in sorted label order unless a class list fixes the order;
image ids are 1..N in order of first appearance.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.data.formats.builder import CocoBuilder, listed_categories, sorted_categories
from frcnn_cli.errors import DataError
from frcnn_cli.files import require_file

COLUMNS = ("image_path", "xmin", "ymin", "xmax", "ymax", "label")


def read_csv(src: str | os.PathLike, classes: Sequence[str] | None = None) -> Annotations:
    """Read a CSV of boxes (see the module doc)."""
    path = require_file(src, "CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise DataError(f"CSV file {path} is not a UTF-8 text file") from None
    except (OSError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    builder = CocoBuilder(path.parent)
    ids: dict[str, int] = {}
    for n, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if n == 1 and _is_header(cells):
            continue
        where = f"{path}:{n}"
        if len(cells) < 6:
            raise DataError(f"{where}: expected {','.join(COLUMNS)}, got {len(cells)} field(s)")
        image, *box_text, label = cells[:6]
        if not image:
            raise DataError(f"{where}: the image path is empty")
        if image not in ids:
            ids[image] = builder.add_image(path.parent / image)
        if not any(box_text) and not label:
            continue  # an image with no object
        if not all(box_text) or not label:
            raise DataError(f"{where}: give all of xmin,ymin,xmax,ymax,label or none of them")
        try:
            xmin, ymin, xmax, ymax = (float(v) for v in box_text)
        except ValueError:
            raise DataError(f"{where}: box fields must be numbers, got "
                            f"{','.join(box_text)}") from None
        builder.add_object(ids[image], label, [xmin, ymin, xmax - xmin, ymax - ymin])
    if not ids:
        raise DataError(f"{path} has no rows")
    cats = listed_categories(classes) if classes else sorted_categories(builder.names)
    return builder.build(cats)


def _is_header(cells: list[str]) -> bool:
    try:
        float(cells[1])
    except (ValueError, IndexError):
        return cells[1] != "" if len(cells) > 1 else True
    return False
