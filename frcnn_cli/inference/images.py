"""Images for inference: a dataset's or a list of files, decoded at their own size, in order.

    source = ImageSource.of_dataset(ann)              # every image of a COCO set
    source = ImageSource.of_files([(1, "a.jpg"), (2, "b.png")], skip_unreadable=True)
    image, item, skipped = source[0]                  # uint8 [3, H, W], its ImageItem, None

An image whose record states a size must be that size (its boxes belong to that picture:
:func:`frcnn_cli.data.usable.check_size`). One that cannot be decoded, or has more pixels
than ``max_pixels``, stops the run with a DataError naming it, unless ``skip_unreadable``: it
then comes back as ``(None, item, reason)`` and the caller says so (predict lists it,
training's propose step leaves it out as training does).

:meth:`ImageSource.shard` gives process ``rank`` of ``world_size`` every ``world_size``-th
image from ``rank`` on: under torchrun each process runs its share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from frcnn_cli.data.images import MAX_PIXELS, image_size, read_image
from frcnn_cli.data.usable import SizeMismatch, check_size
from frcnn_cli.errors import DataError


@dataclass(frozen=True)
class ImageItem:
    """One image to run on: its ``image_id`` (the dataset's, or 1..N for files), its file
    ``path`` and, from a dataset, its ``record`` (``width``, ``height`` as stated)."""

    image_id: Any
    path: Path
    record: dict[str, Any] | None = None

    def size(self) -> tuple[int, int] | None:
        """``(width, height)``: the record's, else the file header's (None if unreadable)."""
        if self.record and self.record.get("width") and self.record.get("height"):
            return int(self.record["width"]), int(self.record["height"])
        try:
            return image_size(self.path)
        except DataError:
            return None


class ImageSource(torch.utils.data.Dataset):
    """The images of ``items``, decoded: ``source[i] -> (uint8 [3, H, W] or None, item,
    reason or None)``."""

    def __init__(self, items: list[ImageItem], max_pixels: int | None = MAX_PIXELS,
                 skip_unreadable: bool = False) -> None:
        self.items = list(items)
        self.max_pixels = max_pixels
        self.skip_unreadable = skip_unreadable
        # a whole image is handed over contiguous; a large one to tile stays a view of the
        # decoded array (no second copy: an orthomosaic takes gigabytes)
        self.as_view = False

    @classmethod
    def of_dataset(cls, annotations, **kw: Any) -> ImageSource:
        return cls([ImageItem(im["id"], annotations.image_path(im), im)
                    for im in annotations.images], **kw)

    @classmethod
    def of_files(cls, files: list[tuple[Any, str | os.PathLike]], **kw: Any) -> ImageSource:
        return cls([ImageItem(image_id, Path(path)) for image_id, path in files], **kw)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, ImageItem, str | None]:
        item = self.items[index]
        try:
            pixels = read_image(item.path, self.max_pixels)
            if item.record is not None:
                check_size(item.record, item.path, pixels.shape[1], pixels.shape[0])
        except SizeMismatch:
            raise  # the dataset is wrong, not one file
        except DataError as e:
            if not self.skip_unreadable:
                raise
            return None, item, str(e)
        # uint8 CHW, the file at its own size: the model resizes it
        chw = torch.from_numpy(pixels).permute(2, 0, 1)
        return (chw if self.as_view else chw.contiguous()), item, None

    def shard(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """The indices process ``rank`` of ``world_size`` runs on."""
        return list(range(rank, len(self.items), world_size))
