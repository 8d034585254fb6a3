"""The torch Dataset the trainer and evaluator read: decoded and augmented samples.

``DetectionDataset(annotations, recipe, train)[request]`` returns ``(image, target)``:

- ``image``: uint8 ``[3, H, W]``, RGB, at the file's own size (augmented when training);
  the model resizes it (:mod:`frcnn_cli.model.transform`), so every path feeds the model alike
- ``target["boxes"]``: float32 ``[N, 4]`` x1 y1 x2 y2 in the returned image's pixels
- ``target["labels"]``: int64 ``[N]`` in 1..K (categories sorted by id)
- ``target["image_id"]``: int; ``target["orig_size"]``: ``(height, width)`` of the decoded
  file; ``target["flipped"]``: bool
- ``target["proposals"]`` (when proposals are given): float32 ``[P, 4]`` in the returned
  image's pixels, transformed with the image
- training only: ``target["ignore"]``: float32 ``[M, 4]`` x1 y1 x2 y2, the crowd boxes as
  ignore regions, transformed with the image
- test mode only: ``target["difficult"]``, ``target["iscrowd"]``: bool ``[N]``

``request`` is an index, or ``(index, seed)`` as the training sampler sends it: the seed
drives every random choice of that sample (flip, scale, augmentation), so a sample is the
same whichever worker makes it and whenever a resumed run asks for it again (the scale of
multi-scale training is drawn by the model, from torch's generator).

Training drops objects marked difficult unless the recipe's ``data.use_difficult`` says
otherwise, and hands objects marked iscrowd (COCO crowds, objects ``frcnn data tile`` cut) to the
model as ignore regions, where anchors and proposals are neither objects nor background, unless
``data.use_crowd`` trains on them as objects; test mode keeps every object, flagged. Boxes are
clipped to the image and those under a pixel wide or high are dropped; boxes no loss can use
(not finite, no area, wholly outside the image) are left out of training with one warning
(:func:`frcnn_cli.data.usable.without_unusable`). An image that cannot
be decoded stops a test run with a DataError naming it; in training it is skipped with a
warning and the next image takes its place. An image whose decoded size is not the one its
record states (``width``, ``height``) stops training and testing alike: its boxes belong to
another picture of it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from frcnn_cli.boxes import clip_boxes
from frcnn_cli.config import Recipe
from frcnn_cli.data.annotations import Annotations
from frcnn_cli.data.augment import (
    build_augmentation,
    hflip,
    hflip_boxes,
    valid_boxes,
)
from frcnn_cli.data.images import MAX_PIXELS, opencv, read_image
from frcnn_cli.data.usable import SizeMismatch, check_size, without_unusable
from frcnn_cli.errors import DataError, FrcnnError

log = logging.getLogger("frcnn")

_MAX_SKIPS = 10  # unreadable images skipped in a row before training gives up


class DetectionDataset(torch.utils.data.Dataset):
    """Samples of a COCO dataset for training (``train=True``) or testing (see module doc).

    ``proposals``: ``{image_id: float32 [P, 4] x1y1x2y2}`` in original image pixels, for the
    Fast R-CNN stages; every image needs an entry (possibly empty). Images over
    ``max_pixels`` pixels are refused like unreadable ones.
    """

    def __init__(self, annotations: Annotations, recipe: Recipe, train: bool,
                 proposals: Mapping[int, Any] | None = None,
                 max_pixels: int | None = MAX_PIXELS) -> None:
        # the boxes no loss can use are left out with a warning (a no-op for a set read
        # through data.usable.open_dataset, which did it already)
        self.annotations = without_unusable(annotations) if train else annotations
        self.max_pixels = max_pixels
        self.recipe = recipe
        self.train = train
        self.images = list(annotations.images)
        self.proposals = proposals
        self.augmentation = build_augmentation(recipe.augment) if train else None
        self._objects = [self._read_objects(im) for im in self.images]
        if proposals is not None:
            missing = [im["id"] for im in self.images if im["id"] not in proposals]
            if missing:
                raise DataError(f"proposals lack {len(missing)} of {len(self.images)} images "
                                f"(e.g. image id {missing[0]}); were they computed for this "
                                "dataset?")
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_labels(self) -> list[np.ndarray]:
        """The labels (int64, in 1..K) of each image's objects as this dataset hands them to
        the model (training: without the difficult and crowd objects it leaves out)."""
        return [objects["labels"] for objects in self._objects]

    def _read_objects(self, image: dict[str, Any]) -> dict[str, np.ndarray]:
        """Boxes (x1y1x2y2 file pixels), labels and flags of one image, filtered for training,
        and the ignore regions training uses."""
        data = self.recipe.data
        boxes, labels, difficult, crowd, ignore = [], [], [], [], []
        for a in self.annotations.objects(image["id"]):
            if not self.annotations.has_category(a["category_id"]):
                raise DataError(
                    f"{self.annotations.path or 'dataset'}: annotation {a['id']} has category "
                    f"{a['category_id']}, which is not in 'categories' (see frcnn data check)")
            is_difficult = bool(a.get("difficult", 0))
            is_crowd = bool(a.get("iscrowd", 0))
            x, y, w, h = a["bbox"]
            if self.train and is_crowd and not data.use_crowd:
                ignore.append([x, y, x + w, y + h])
                continue
            if self.train and is_difficult and not data.use_difficult:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self.annotations.label_of(a["category_id"]))
            difficult.append(is_difficult)
            crowd.append(is_crowd)
        return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                "labels": np.asarray(labels, np.int64),
                "difficult": np.asarray(difficult, bool),
                "iscrowd": np.asarray(crowd, bool),
                "ignore": np.asarray(ignore, np.float32).reshape(-1, 4)}

    def __getitem__(self, request: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        index, seed = request if isinstance(request, tuple) else (request, None)
        if not self.train:
            return self._sample(index, None)
        if seed is None:
            # no seed from a sampler: follow torch's generator, so torch.manual_seed rules
            seed = int(torch.randint(2**31, (1,)).item())
        for skip in range(_MAX_SKIPS + 1):
            i = (index + skip) % len(self.images)
            try:
                return self._sample(i, np.random.default_rng(seed))
            except SizeMismatch:
                raise  # the set is wrong, not one file: skipping would hide it
            except DataError as e:
                if i not in self._warned:
                    self._warned.add(i)
                    log.warning("skipping an image in training: %s", e)
        raise DataError(f"{_MAX_SKIPS + 1} images in a row cannot be decoded, from "
                        f"{self.annotations.image_path(self.images[index])}; run frcnn data check")

    def _sample(self, index: int, rng: np.random.Generator | None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.images[index]
        pixels = read_image(self.annotations.image_path(record), self.max_pixels)
        orig_h, orig_w = pixels.shape[:2]
        self._check_size(record, orig_w, orig_h)
        objects = self._objects[index]
        boxes = clip_boxes(objects["boxes"], orig_h, orig_w)
        keep = valid_boxes(boxes)
        boxes = boxes[keep]
        labels = objects["labels"][keep]
        flags = {k: objects[k][keep] for k in ("difficult", "iscrowd")}
        ignore = clip_boxes(objects["ignore"], orig_h, orig_w)
        ignore = ignore[valid_boxes(ignore)]
        proposals = self._proposals(record["id"], orig_h, orig_w)

        flipped = False
        if rng is not None:
            if self.augmentation is not None:
                pixels, boxes, labels, ignore, proposals = self._augment(
                    pixels, boxes, labels, ignore, proposals, rng)
            if rng.random() < self.recipe.augment.hflip:
                flipped = True
                pixels, boxes = hflip(pixels, boxes)
                ignore = hflip_boxes(ignore, pixels.shape[1])
                if proposals is not None:
                    proposals = hflip_boxes(proposals, pixels.shape[1])
        # 8-bit CHW: a quarter of float's size between workers; the model divides by 255
        image = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(boxes.astype(np.float32).reshape(-1, 4)),
            "labels": torch.from_numpy(labels.astype(np.int64).reshape(-1)),
            "image_id": record["id"],
            "orig_size": (orig_h, orig_w),
            "flipped": flipped,
        }
        if proposals is not None:
            target["proposals"] = torch.from_numpy(proposals.astype(np.float32).reshape(-1, 4))
        if self.train:
            target["ignore"] = torch.from_numpy(ignore.astype(np.float32).reshape(-1, 4))
        else:
            target["difficult"] = torch.from_numpy(flags["difficult"])
            target["iscrowd"] = torch.from_numpy(flags["iscrowd"])
        return image, target

    def _check_size(self, record: dict[str, Any], width: int, height: int) -> None:
        check_size(record, self.annotations.image_path(record), width, height)

    def _augment(self, pixels: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 ignore: np.ndarray, proposals: np.ndarray | None, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The recipe's albumentations; ignore regions and proposals ride along with label 0."""
        n, m = len(boxes), len(boxes) + len(ignore)
        every = np.concatenate([boxes, ignore, *([] if proposals is None else [proposals])])
        every_labels = np.concatenate([labels, np.zeros(len(every) - n, np.int64)])
        pixels, kept, kept_labels, index = self.augmentation(pixels, every, every_labels, rng)
        is_gt, is_ignore = index < n, (index >= n) & (index < m)
        gt, gt_labels = kept[is_gt], kept_labels[is_gt]
        ok = valid_boxes(gt)
        new_ignore = kept[is_ignore]
        new_proposals = kept[index >= m] if proposals is not None else None
        return (pixels, gt[ok], gt_labels[ok], new_ignore[valid_boxes(new_ignore)],
                new_proposals)

    def _proposals(self, image_id: int, height: int, width: int) -> np.ndarray | None:
        if self.proposals is None:
            return None
        p = self.proposals[image_id]
        p = p.numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
        return clip_boxes(p.astype(np.float32).reshape(-1, 4), height, width)


# --------------------------------------------------------------------------- loaders


class Loader(torch.utils.data.DataLoader):
    """A DataLoader whose user errors read the same from a worker process as from the main one.

    torch re-raises a worker's exception as its type built from "Caught DataError in
    DataLoader worker process 0. Original Traceback ...": the CLI would show that traceback
    to a user whose only fault is a broken image. The worker's own one-line message is put
    back; other exceptions (bugs) keep torch's report.
    """

    def __iter__(self):
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except FrcnnError as e:
                error = type(e)(worker_message(e))
            else:
                yield batch
                continue
            # raised outside the except block: no traceback keeps the workers alive
            del batches
            raise error


def worker_message(error: BaseException) -> str:
    """The message an exception had in the DataLoader worker that raised it (see Loader)."""
    text = str(error)
    if not text.startswith("Caught "):
        return text
    name = f"{type(error).__module__}.{type(error).__qualname__}: "
    lines = [line for line in text.splitlines() if line.strip()]
    found = [line[len(name):] for line in lines if line.startswith(name)]
    return found[-1] if found else lines[-1]


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]
            ) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """``[(image, target), ...]`` -> ``(images, targets)`` as lists (sizes differ)."""
    return [image for image, _ in batch], [target for _, target in batch]


def build_train_loader(annotations: Annotations, recipe: Recipe, images_per_batch: int,
                       seed: int, start_iter: int = 0, rank: int = 0, world_size: int = 1,
                       proposals: Mapping[int, Any] | None = None
                       ) -> torch.utils.data.DataLoader:
    """Endless training batches ``(images, targets)`` for process ``rank`` of ``world_size``.

    ``images_per_batch`` is this process's share of an iteration. Batches are
    aspect-grouped when ``recipe.data.aspect_ratio_grouping`` is on, images of rare classes
    repeated when ``recipe.data.repeat_threshold`` is set (repeat-factor sampling), decoded by
    ``recipe.data.num_workers`` worker processes, and a function of ``seed`` and the iteration
    alone: the loader built with ``start_iter=k`` yields what an uninterrupted one yields from
    its k-th batch on, augmentation included, whatever the number of workers.
    """
    from frcnn_cli.data.sampler import TrainingSampler, aspect_groups, repeat_factors

    dataset = DetectionDataset(annotations, recipe, train=True, proposals=proposals)
    groups = aspect_groups(annotations) if recipe.data.aspect_ratio_grouping else None
    threshold = recipe.data.repeat_threshold
    repeat = None if threshold is None else repeat_factors(
        dataset.image_labels, annotations.num_classes, threshold)
    sampler = TrainingSampler(len(dataset), images_per_batch, seed, group_ids=groups,
                              start_iter=start_iter, rank=rank, world_size=world_size,
                              repeat=repeat)
    workers = recipe.data.num_workers
    return Loader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
        worker_init_fn=functools.partial(init_worker, seed=seed, rank=rank),
        pin_memory=torch.cuda.is_available(), persistent_workers=False,
        prefetch_factor=2 if workers else None, generator=own_generator(seed, rank))


def own_generator(seed: int, rank: int) -> torch.Generator:
    """The DataLoader draws its workers' base seed from this generator rather than from the
    global one, so starting a loader leaves the trainer's random state (RPN sampling,
    dropout) exactly as it was, and a resumed run stays on the uninterrupted run's track."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, rank, 1]).generate_state(1)[0]))
    return g


def init_worker(worker_id: int, seed: int, rank: int) -> None:
    """One thread per worker (the workers are the parallelism) and seeded global RNGs for any
    library randomness outside the per-sample seeds."""
    import random

    torch.set_num_threads(1)
    opencv()
    worker_seed = int(np.random.SeedSequence([seed, rank, worker_id]).generate_state(1)[0])
    random.seed(worker_seed)
    np.random.seed(worker_seed)
    torch.manual_seed(worker_seed)
