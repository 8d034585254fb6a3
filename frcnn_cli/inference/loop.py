"""The one loop from images to detections: ``eval``, ``predict``, ``propose`` and their tiled
forms all run :func:`detect_images`, in one process or sharded over torchrun's.

    for found in detect_images(model, ImageSource.of_dataset(ann), device):
        found.item.image_id, found.output["boxes"]      # numpy, x1 y1 x2 y2, file pixels

Each image goes to ``model.detect`` at its own size (the model resizes it and answers in its
pixels), ``batch_size`` at a time; or on its tiles (``tiling``, one image at a time,
``tiling.tile_batch`` tiles per forward pass); or, for a detector trained on external
proposals, with the boxes its proposal source finds (Selective Search, a proposals file). The
test-time settings (``score_thresh``, ``rpn_only``, ``pre_nms_top_n`` ...) go to every call
unchanged. Images padded together into one batch see each other's padding near their bottom
and right edges, so a ``batch_size`` above one can move a detection there by a little.

Under torchrun (``dist``, :func:`frcnn_cli.distributed.init_distributed`) each process runs a
deterministic share: images ``rank, rank + world_size, ...``, or with ``tiling`` every image
with its tiles shared that way. The answers are gathered on the main process, which yields
every image in the source's order, exactly as one process would (with ``batch_size`` 1; tiles
are merged in their own order); the other processes yield nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from frcnn_cli.data.dataset import Loader, init_worker, own_generator
from frcnn_cli.devices import autocast, synchronize
from frcnn_cli.distributed import DistInfo, gather_to_main
from frcnn_cli.errors import InputError
from frcnn_cli.inference.images import ImageItem, ImageSource
from frcnn_cli.inference.tiled import Tiling, detect_tiled, merge_tiles, tile_detections
from frcnn_cli.progress import SILENT, Reporter


@dataclass
class Detected:
    """What the loop found on one image: its ``item`` and its ``index`` in the source;
    ``output`` as ``model.detect`` gives it (numpy arrays, boxes in the file's pixels; None when
    the image was ``skipped``, with the reason); the decoded image's ``width`` and ``height``
    and, when asked for, its ``pixels`` (uint8 ``[3, H, W]``; under torchrun only for this
    process's own images); the ``tiles`` it was cut into (0: whole); ``seconds``, the forward
    pass's share for it (synchronised, decoding excluded)."""

    item: ImageItem
    output: dict[str, np.ndarray] | None
    width: int = 0
    height: int = 0
    pixels: torch.Tensor | None = None
    tiles: int = 0
    seconds: float = 0.0
    skipped: str | None = None
    index: int = 0


@torch.inference_mode()
def detect_images(model, source: ImageSource, device: torch.device | str = "cpu", *,
                  batch_size: int = 1, precision: str = "fp32", proposals=None,
                  tiling: Tiling | None = None, keep_pixels: bool = False,
                  num_workers: int | None = None, dist: DistInfo | None = None,
                  reporter: Reporter = SILENT, description: str = "detect",
                  **settings: Any) -> Iterator[Detected]:
    """Run ``model`` (in eval mode on ``device``, in ``precision``: fp32, or autocast to
    bf16/fp16) on ``source``, in order; see the module doc. ``proposals``: an external proposal
    source (:mod:`frcnn_cli.proposals.sources`) or None (the model's RPN); ``num_workers``:
    decoding processes (default the recipe's ``data.num_workers``; with ``tiling`` none, so
    that one large image at a time is decoded). The progress bar counts this process's
    images, or tiles."""
    if tiling is not None and proposals is not None:
        raise InputError("--tile runs the model's own RPN on each tile; a detector on external "
                         "proposals (Selective Search, --proposal-file) cannot be tiled")
    device, dist = torch.device(device), dist or DistInfo()
    model.eval().to(device)
    if tiling is not None:
        source.as_view, batch_size = True, 1
        # every image's tiles, refused when far too many
        tiles = tiling.count([s for item in source.items if (s := item.size()) is not None])
    if tiling is not None and dist.enabled:
        yield from _shared_tiles(model, source, device, tiling, precision, keep_pixels, dist,
                                 reporter, description, settings)
        return
    indices = source.shard(dist.rank, dist.world_size)
    total = tiles if tiling is not None else len(indices)  # tiled: in one process, here
    workers = model.recipe.data.num_workers if num_workers is None else num_workers
    if tiling is not None:  # one large image decoded at a time, here: no copies in flight
        workers = 0
    # its own generator: a loader draws its workers' seed from one, and drawing from torch's
    # would move a training run's random state at every validation
    loader = Loader(
        torch.utils.data.Subset(source, indices), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=list, prefetch_factor=2 if workers else None,
        worker_init_fn=functools.partial(init_worker, seed=0, rank=dist.rank),
        generator=own_generator(0, dist.rank))
    found: list[Detected] = []
    with reporter.task(description, total=total) as task:
        position = iter(indices)
        for batch in loader:
            for d in _detect_batch(model, batch, device, precision, proposals, tiling,
                                   keep_pixels, task, settings):
                d.index = next(position)
                if not dist.enabled:
                    yield d
                else:
                    found.append(d)
            if tiling is None:
                task.update(advance=len(batch))
    if dist.enabled:
        yield from _gathered(found, dist)


def _gathered(found: list[Detected], dist: DistInfo) -> Iterator[Detected]:
    """Every process's answers on the main one, in the source's order (pixels stay where they
    were decoded: only the main process's own images keep theirs)."""
    parts = gather_to_main([dataclasses.replace(d, pixels=None) for d in found], dist)
    if not dist.is_main:
        return
    own = {d.index: d for d in found}
    for d in sorted((d for part in parts for d in part), key=lambda d: d.index):
        yield own.get(d.index, d)


def _shared_tiles(model, source: ImageSource, device: torch.device, tiling: Tiling,
                  precision: str, keep_pixels: bool, dist: DistInfo, reporter: Reporter,
                  description: str, settings: dict) -> Iterator[Detected]:
    """Tiled detection under torchrun: every process decodes every image and runs its share
    of the tiles; the main process merges each image's tiles in their order."""
    with reporter.task(description, total=None) as task:
        for index in range(len(source)):
            image, item, reason = source[index]
            if image is None:
                if dist.is_main:
                    yield Detected(item, None, skipped=reason, index=index)
                continue
            synchronize(device)
            start = time.perf_counter()
            with autocast(device, precision):
                seen = tile_detections(model, image, tiling, device, task, dist.rank,
                                       dist.world_size, **settings)
            synchronize(device)
            parts = gather_to_main([(k * dist.world_size + dist.rank, *s)
                                    for k, s in enumerate(seen)], dist)
            if not dist.is_main:
                continue
            ordered = [(w, d) for _, w, d in sorted((t for p in parts for t in p),
                                                    key=lambda t: t[0])]
            merged = merge_tiles(ordered, image.shape[2], image.shape[1],
                                 model.recipe.roi_heads.nms_thresh, tiling.max_detections)
            yield Detected(item, {k: v.float().numpy() for k, v in merged.items()},
                           image.shape[2], image.shape[1], image if keep_pixels else None,
                           len(ordered), time.perf_counter() - start, index=index)


def _detect_batch(model, batch: list, device: torch.device, precision: str, proposals,
                  tiling: Tiling | None, keep_pixels: bool, task, settings: dict
                  ) -> list[Detected]:
    """One batch of ``(image or None, item, reason)`` through the model, in batch order."""
    ready = [(image, item) for image, item, _ in batch if image is not None]
    if not ready:
        return [Detected(item, None, skipped=reason) for _, item, reason in batch]
    # a tiled image stays where it was decoded: its tiles go to the device one batch at a time
    inputs = [image if tiling else image.to(device, non_blocking=True) for image, _ in ready]
    synchronize(device)
    start = time.perf_counter()
    with autocast(device, precision):
        if tiling is not None:
            outputs = [detect_tiled(model, image, tiling, device, task, **settings)
                       for image in inputs]
        elif proposals is not None:
            outputs = proposals.detect(model, inputs, [item.image_id for _, item in ready],
                                       **settings)
        else:
            outputs = model.detect(inputs, **settings)
    synchronize(device)
    seconds = (time.perf_counter() - start) / len(ready)
    detected = iter([
        Detected(item, {k: v.detach().float().cpu().numpy() for k, v in out.items()},
                 image.shape[2], image.shape[1], image if keep_pixels else None,
                 len(tiling.windows(image.shape[2], image.shape[1])) if tiling else 0, seconds)
        for (image, item), out in zip(ready, outputs, strict=True)])
    return [next(detected) if image is not None else Detected(item, None, skipped=reason)
            for image, item, reason in batch]
