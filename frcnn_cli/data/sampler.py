"""Which images each training iteration sees: an infinite, seeded, resumable batch stream.

The stream is one sequence of *global* batches (``images_per_batch`` images for each of the
``world_size`` processes) made from a fresh permutation of the dataset per epoch, seeded by
``(seed, epoch)``. With aspect-ratio grouping, landscape (w >= h) and portrait images fill
separate buffers and a batch is emitted when its buffer is full, as detectron2 does, so a
batch pads little; leftovers carry over to the next epoch. Process ``rank`` of
``world_size`` takes its slice of each global batch.

Every element is ``(index, sample_seed)`` with the seed derived from ``(seed, iteration,
position)``: augmentation follows the sample, not the worker that decodes it. Resuming at
``start_iter`` replays the index arithmetic of the skipped iterations (no image is read) and
then yields exactly the batches an uninterrupted run would have seen.

Repeat-factor sampling (``data.repeat_threshold``; LVIS, Gupta et al. 2019, Section 5, as
detectron2's ``RepeatFactorTrainingSampler``) shows images of rare classes more often: with
f(c) the fraction of training images that hold class c, r(c) = max(1, sqrt(t / f(c))), and an
image repeats by the largest r(c) of its classes (1 without objects). An epoch takes each image
floor(r) times, and once more with probability r - floor(r) (stochastic rounding, drawn
afresh each epoch), before it is shuffled; the draws come from the epoch's ``(seed, epoch)``
generator too, so a resumed run replays them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.data.images import image_size
from frcnn_cli.errors import DataError, InputError


def aspect_groups(annotations: Annotations) -> np.ndarray:
    """int64 ``[N]``: 0 for landscape or square images (w >= h), 1 for portrait ones.

    Sizes come from the JSON, or from the file header where the JSON has none.
    """
    groups = np.zeros(len(annotations.images), np.int64)
    for i, im in enumerate(annotations.images):
        w, h = im.get("width"), im.get("height")
        if not w or not h:
            try:
                w, h = image_size(annotations.image_path(im))
            except DataError:
                w, h = 1, 1  # unreadable: the dataset skips it with a warning anyway
        groups[i] = int(w < h)
    return groups


def class_repeat_factors(image_labels: Sequence[Iterable[int]], num_classes: int,
                         threshold: float) -> np.ndarray:
    """float64 ``[K + 1]``: r(c) = max(1, sqrt(t / f(c))) of each label c in 1..K (LVIS
    Section 5), with f(c) the fraction of the images whose ``image_labels`` (the labels of each
    image's objects, in 1..K) hold c. Entry 0 and classes in no image are 1."""
    images_with = np.zeros(num_classes + 1, np.float64)
    for labels in image_labels:
        images_with[np.unique(np.asarray(list(labels), np.int64))] += 1
    frequency = images_with / max(len(image_labels), 1)
    factors = np.ones(num_classes + 1, np.float64)
    seen = frequency > 0
    factors[seen] = np.maximum(1.0, np.sqrt(threshold / frequency[seen]))
    factors[0] = 1.0
    return factors


def repeat_factors(image_labels: Sequence[Iterable[int]], num_classes: int,
                   threshold: float) -> np.ndarray:
    """float64 ``[N]``: each image's repeat factor, the largest r(c) of its classes
    (:func:`class_repeat_factors`), 1 for an image without objects."""
    per_class = class_repeat_factors(image_labels, num_classes, threshold)
    return np.array([max((per_class[c] for c in labels), default=1.0)
                     for labels in image_labels], np.float64)


def sample_seed(seed: int, iteration: int, position: int) -> int:
    """The seed of the sample at ``position`` of global batch ``iteration``."""
    return int(np.random.SeedSequence([seed, iteration, position]).generate_state(1)[0])


class TrainingSampler:
    """Infinite batches of ``(index, sample_seed)`` for one process (see module doc).

    ``group_ids``: ``[N]`` group of each image (None: one group, no aspect grouping).
    ``images_per_batch`` counts the images of this process; a global batch holds
    ``images_per_batch * world_size``. ``repeat``: ``[N]`` repeat factor of each image, >= 1
    (:func:`repeat_factors`; None: each image once per epoch).
    """

    def __init__(self, num_images: int, images_per_batch: int, seed: int,
                 group_ids: Sequence[int] | np.ndarray | None = None, start_iter: int = 0,
                 rank: int = 0, world_size: int = 1,
                 repeat: Sequence[float] | np.ndarray | None = None) -> None:
        if num_images <= 0:
            raise DataError("the training set has no images")
        if images_per_batch < 1:
            raise InputError(f"images per batch must be at least 1, got {images_per_batch}")
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is outside 0..{world_size - 1}")
        if start_iter < 0:
            raise InputError(f"start iteration must not be negative, got {start_iter}")
        self.num_images = num_images
        self.per_rank = images_per_batch
        self.batch = images_per_batch * world_size
        self.seed = seed
        self.groups = (np.zeros(num_images, np.int64) if group_ids is None
                       else np.asarray(group_ids, np.int64))
        if len(self.groups) != num_images:
            raise ValueError("group_ids must have one entry per image")
        self.repeat = None if repeat is None else np.asarray(repeat, np.float64)
        if self.repeat is not None and (len(self.repeat) != num_images
                                        or not (self.repeat >= 1).all()):
            raise ValueError("repeat must hold one factor >= 1 per image")
        self.start_iter = start_iter
        self.rank = rank

    def global_batches(self) -> Iterator[list[int]]:
        """The endless sequence of global batches (image indices), from iteration 0."""
        buffers: dict[int, list[int]] = {}
        epoch = 0
        while True:
            order = self.epoch_order(epoch)
            for idx, group in zip(order.tolist(), self.groups[order].tolist(), strict=True):
                buf = buffers.setdefault(group, [])
                buf.append(idx)
                if len(buf) == self.batch:
                    yield buf
                    buffers[group] = []
            epoch += 1

    def epoch_order(self, epoch: int) -> np.ndarray:
        """int64 ``[M]``: the images of ``epoch`` in the order they are drawn, each once, or
        with repeat factors as many times as its stochastically rounded factor (M varies)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.repeat is None:
            return rng.permutation(self.num_images)
        whole = np.floor(self.repeat)
        copies = (whole + (rng.random(self.num_images) < self.repeat - whole)).astype(np.int64)
        return rng.permutation(np.repeat(np.arange(self.num_images), copies))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        lo = self.rank * self.per_rank
        for it, batch in enumerate(self.global_batches()):
            if it < self.start_iter:
                continue
            yield [(idx, sample_seed(self.seed, it, lo + j))
                   for j, idx in enumerate(batch[lo:lo + self.per_rank])]
