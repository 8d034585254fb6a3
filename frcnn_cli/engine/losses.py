"""The model's losses on a batch: each training step's, and the validation loss.

The validation loss is what training minimises, measured on the validation set with no update
(a curve that turns up while the training loss still falls shows overfitting). Training's
losses need the model in training mode (anchor and RoI targets, their balanced sampling, the
RPN's training proposal counts) and targets; everything else runs as at test time: BatchNorm
on its running statistics (left unchanged), no dropout, the test scale, no gradient. The
samples are the validation images as training reads them (difficult objects left out, crowds
as ignore regions) without augmentation, and every draw inside comes from generators seeded
apart (:func:`frcnn_cli.engine.rng.apart`): each validation samples alike, and the run's
random state, so a resumed run, is left where it was.

    losses = validation_losses(model, loss_samples(val_ann, recipe), device, RunKind.JOINT,
                               images_per_batch=2, seed=0)
    losses["loss"], losses["loss_rpn_cls"]   # means per image
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from frcnn_cli.config import AugmentConfig, Recipe
from frcnn_cli.engine.kinds import RunKind
from frcnn_cli.engine.rng import apart

# The loss terms of the RPN: a detector step on given proposals has none of them.
RPN_LOSSES = ("loss_rpn_cls", "loss_rpn_box")


def batch_losses(model, images: list[torch.Tensor], targets: list[dict[str, Any]],
                 device: torch.device, kind: RunKind, amp: bool = False
                 ) -> dict[str, torch.Tensor]:
    """``model``'s losses on one batch as ``kind`` trains: the RPN's alone (steps 1 and 3),
    the head's on each target's ``"proposals"`` (steps 2 and 4, taken out of the targets), or
    all four. ``images``: uint8 ``[3, H, W]``; ``targets``: as the training loader makes them.
    """
    images = [im.to(device, non_blocking=True) for im in images]
    proposals = None
    if targets and "proposals" in targets[0]:
        proposals = [t.pop("proposals").to(device) for t in targets]
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        return model(images, targets, proposals=proposals, rpn_only=kind.is_rpn)


def loss_samples(annotations, recipe: Recipe):
    """The validation images as training samples without augmentation: a training-mode
    :class:`~frcnn_cli.data.dataset.DetectionDataset` of a recipe that neither flips nor
    transforms."""
    from frcnn_cli.data.dataset import DetectionDataset

    plain = recipe.model_copy(update={"augment": AugmentConfig(hflip=0.0, extra=[])})
    return DetectionDataset(annotations, plain, train=True)


def validation_losses(model, samples, device: torch.device, kind: RunKind, *,
                      images_per_batch: int, seed: int, amp: bool = False,
                      proposals=None) -> dict[str, float]:
    """Mean losses per image of ``model`` over ``samples`` (:func:`loss_samples`), keyed as
    training logs them: each term ``kind`` trains and ``loss``, their sum. A detector step
    (2 or 4) scores its head on the proposals its validation detects on: ``proposals``' (an
    external source, e.g. Selective Search) or else the model's RPN's. The model is left in
    eval mode."""
    sums: dict[str, float] = {}
    with apart(seed), torch.no_grad(), _loss_mode(model):
        for start in range(0, len(samples), images_per_batch):
            images, targets = zip(*(samples[(i, seed)] for i in
                                    range(start, min(start + images_per_batch, len(samples)))),
                                  strict=True)
            targets = list(targets)
            if kind.is_detector and proposals is not None:
                for image, target in zip(images, targets, strict=True):
                    target["proposals"] = proposals.boxes(image, target["image_id"])
            losses = batch_losses(model, list(images), targets, device, kind, amp)
            if kind.is_detector:
                losses = {k: v for k, v in losses.items() if k not in RPN_LOSSES}
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(images)
    means = {k: v / max(len(samples), 1) for k, v in sums.items()}
    return {**means, "loss": sum(means.values())}


@contextmanager
def _loss_mode(model) -> Iterator[None]:
    """Training's losses from the test-time network: every module in eval mode but the two
    whose mode selects training's path, the detector (losses, not detections) and its RPN
    (the training proposal counts the head samples from)."""
    model.eval()
    model.training = model.rpn.training = True
    try:
        yield
    finally:
        model.eval()
