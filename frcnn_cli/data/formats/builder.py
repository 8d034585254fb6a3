"""Assembling a COCO dataset from another format's images, boxes and class names.

Converters add images (with their sizes when the format states them) and objects named by
class; :meth:`CocoBuilder.build` reads the missing sizes from the image headers, numbers the
categories by the converter's rule and returns :class:`Annotations` rooted where the images
were found (file names are made relative to the output file when it is saved).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frcnn_cli.data.annotations import Annotations, relative_name
from frcnn_cli.data.images import image_size
from frcnn_cli.errors import DataError

log = logging.getLogger("frcnn")


class CocoBuilder:
    """Collects images and objects; ``build(categories)`` returns the dataset.

    ``root``: the folder file names are written relative to until the dataset is saved.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.images: list[dict[str, Any]] = []
        self.objects: list[tuple[int, str, list[float], dict[str, Any]]] = []
        self._ids: set[int] = set()

    def add_image(self, file: Path, width: float | None = None, height: float | None = None,
                  image_id: int | None = None) -> int:
        """Register an image file; sizes of 0 or None are read from the header at build."""
        image_id = len(self.images) + 1 if image_id is None else image_id
        if image_id in self._ids:
            raise DataError(f"two images get the id {image_id}, the second is {file}")
        self._ids.add(image_id)
        self.images.append({"id": image_id, "file_name": relative_name(file, self.root),
                            "width": int(width) if width else None,
                            "height": int(height) if height else None})
        return image_id

    def add_object(self, image_id: int, name: str, bbox: Sequence[float],
                   **attributes: Any) -> None:
        """An object of class ``name`` with a continuous ``[x, y, w, h]`` box; ``attributes``
        (``difficult``, ``truncated``, ``iscrowd``) are copied onto the annotation."""
        self.objects.append((image_id, name, [float(v) for v in bbox], attributes))

    @property
    def names(self) -> set[str]:
        """Class names seen so far."""
        return {name for _, name, _, _ in self.objects}

    def build(self, categories: list[dict[str, Any]], extra: dict[str, Any] | None = None
              ) -> Annotations:
        """The dataset with these categories (``{"id", "name"}``); every object's name must be
        among them. Images whose size is unknown and whose file cannot be read are left out,
        with a warning naming a few."""
        cat_id = {c["name"]: c["id"] for c in categories}
        unknown = sorted(self.names - set(cat_id))
        if unknown:
            raise DataError(f"objects of classes not in the class list: {', '.join(unknown)}")
        images, dropped = [], []
        for im in self.images:
            if not im["width"] or not im["height"]:
                try:
                    im["width"], im["height"] = image_size(self.root / im["file_name"])
                except DataError as e:
                    dropped.append((im["id"], str(e)))
                    continue
            images.append(im)
        if dropped:
            shown = "; ".join(msg for _, msg in dropped[:3])
            log.warning("left out %d image(s) of unknown size that cannot be read: %s%s",
                        len(dropped), shown, " ..." if len(dropped) > 3 else "")
        kept = {im["id"] for im in images}
        anns = []
        for image_id, name, (x, y, w, h), attrs in self.objects:
            if image_id not in kept:
                continue
            anns.append({"id": len(anns) + 1, "image_id": image_id,
                         "category_id": cat_id[name], "bbox": [x, y, w, h],
                         "area": round(w * h, 4), "iscrowd": 0, **attrs})
        return Annotations(images, anns, categories, self.root, None, dict(extra or {}))


def sorted_categories(names: set[str] | Sequence[str]) -> list[dict[str, Any]]:
    """Categories with ids 1..K in sorted name order."""
    return [{"id": i + 1, "name": n} for i, n in enumerate(sorted(set(names)))]


def listed_categories(names: Sequence[str]) -> list[dict[str, Any]]:
    """Categories with ids 1..K in the given order (names must be unique)."""
    seen = set()
    for n in names:
        if n in seen:
            raise DataError(f"class '{n}' is listed twice")
        seen.add(n)
    return [{"id": i + 1, "name": n} for i, n in enumerate(names)]
