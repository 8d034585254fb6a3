"""Where a detector's proposals come from at test time when they are not its own RPN's.

A Fast R-CNN detector trained on Selective Search proposals (``frcnn train-detector
--proposals ss.pt``) has an untrained RPN; its checkpoint's ``meta["proposals"]`` names the
search it was trained on (``model.proposal_source``), and at test time the same search runs on
each image: the ~2 s per image CPU step of Fast R-CNN that the RPN removes (the paper's
Section 1). Any detector, a Faster R-CNN included, can also detect on the boxes of a proposals
file instead (``frcnn eval --proposal-file``: the paper's Table 2 pairs detectors and proposals
that way).

    source = proposals_for(model)                      # None: the model's own RPN
    outputs = source.detect(model, images, image_ids)    # else model.detect(images)
    source.proposal_seconds_per_image, source.network_seconds_per_image

Both kinds time themselves: the proposals (Selective Search, or reading them) apart from the
network (``model.detect`` on them), so the bottleneck shows.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from frcnn_cli.devices import synchronize
from frcnn_cli.errors import CheckpointError, DataError
from frcnn_cli.proposals.files import read_proposals
from frcnn_cli.proposals.search import (
    MAX_PROPOSALS,
    MAX_SIDE,
    METHOD,
    selective_search,
    ximgproc_cv2,
)

if TYPE_CHECKING:
    from frcnn_cli.data.annotations import Annotations


class ExternalProposals:
    """Proposals handed to ``model.detect`` image by image, and the time spent on them and on
    the network. Subclasses say how an image's boxes are found (:meth:`boxes`)."""

    method = "external"

    def __init__(self) -> None:
        self.proposal_seconds = 0.0
        self.network_seconds = 0.0
        self.images = 0

    def boxes(self, image: Tensor, image_id: Any) -> Tensor:
        """``[P, 4]`` x1 y1 x2 y2 in ``image``'s pixels (``image``: ``[3, H, W]``, the file at
        its own size), best first."""
        raise NotImplementedError

    def detect(self, model, images: list[Tensor], image_ids: list[Any],
               **settings: Any) -> list[dict[str, Tensor]]:
        """``model.detect(images, proposals=...)`` with each image's boxes, both timed."""
        device = images[0].device if images else torch.device("cpu")
        start = time.perf_counter()
        proposals = [self.boxes(image, i).to(device)
                     for image, i in zip(images, image_ids, strict=True)]
        synchronize(device)
        middle = time.perf_counter()
        outputs = model.detect(images, proposals=proposals, **settings)
        synchronize(device)
        self.proposal_seconds += middle - start
        self.network_seconds += time.perf_counter() - middle
        self.images += len(images)
        return outputs

    @property
    def proposal_seconds_per_image(self) -> float:
        return self.proposal_seconds / max(self.images, 1)

    @property
    def network_seconds_per_image(self) -> float:
        return self.network_seconds / max(self.images, 1)

    def describe(self) -> str:
        """Where the proposals came from, for the user."""
        return self.method


class SelectiveSearch(ExternalProposals):
    """Selective Search on each image as it comes, with the settings the detector was trained
    on (``mode``, ``max_proposals``, ``max_side``; see :mod:`frcnn_cli.proposals.search`).
    ``remember``: keep each image's boxes by image id, so that searching a dataset again (a
    training run's validations) costs nothing."""

    def __init__(self, mode: str, max_proposals: int | None, max_side: int | None,
                 remember: bool = False) -> None:
        super().__init__()
        ximgproc_cv2()  # no contrib OpenCV: say so before any image is decoded
        self.method = METHOD
        self.mode, self.max_proposals, self.max_side = mode, max_proposals, max_side
        self.remembered: dict[Any, Tensor] | None = {} if remember else None

    def boxes(self, image: Tensor, image_id: Any) -> Tensor:
        if self.remembered is not None and image_id in self.remembered:
            return self.remembered[image_id]
        if image.dtype != torch.uint8:  # float in 0..1 (the Python API's convention)
            image = (image.float() * 255).round().clamp(0, 255).to(torch.uint8)
        pixels = np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())
        found = torch.from_numpy(selective_search(pixels, self.mode, self.max_proposals,
                                                  self.max_side))
        if self.remembered is not None:
            self.remembered[image_id] = found
        return found

    def describe(self) -> str:
        most = "all" if self.max_proposals is None else f"up to {self.max_proposals}"
        side = (f"images searched at most {self.max_side} px a side"
                if self.max_side is not None else "images searched at their own size")
        return f"Selective Search ({self.mode}, {most} boxes per image, {side})"


class GivenProposals(ExternalProposals):
    """Boxes already made for every image of a dataset, by image id (a proposals file).
    ``seconds_per_image``: what making them took (None when unknown); reading them is the
    proposal time measured here."""

    def __init__(self, per_image: dict[Any, Tensor], method: str, source: str,
                 seconds_per_image: float | None = None) -> None:
        super().__init__()
        self.per_image, self.method, self.source = per_image, method, source
        self.made_in = seconds_per_image

    def boxes(self, image: Tensor, image_id: Any) -> Tensor:
        if image_id not in self.per_image:
            raise DataError(f"{self.source} has no proposals for image id {image_id}")
        return self.per_image[image_id]

    @classmethod
    def from_file(cls, path: str | os.PathLike, annotations: Annotations,
                  ignore_dataset_mismatch: bool = False) -> GivenProposals:
        """A proposals file (``frcnn propose``, RPN or Selective Search) for the images of
        ``annotations``, best first by its scores (:func:`~frcnn_cli.proposals.files.
        read_proposals`: DataError when it lacks one of them or was made for another
        dataset)."""
        found = read_proposals(path, annotations, ignore_dataset_mismatch)
        return cls(found.boxes, found.method, f"proposals file {path}", found.seconds_per_image)

    def describe(self) -> str:
        made = (f", made at {self.made_in:.3g} s per image" if self.made_in is not None
                else "")
        return f"{self.method} proposals from the {self.source}{made}"


def proposals_for(model, proposal_file: str | os.PathLike | None = None,
                  annotations: Annotations | None = None,
                  ignore_dataset_mismatch: bool = False) -> ExternalProposals | None:
    """The test-time proposals of ``model``: the boxes of ``proposal_file`` for the images of
    ``annotations`` when given; else the search its checkpoint names (``model.proposal_source``);
    else None, its own RPN."""
    if proposal_file is not None:
        if annotations is None:
            raise ValueError("a proposals file is read for the images of a dataset")
        return GivenProposals.from_file(proposal_file, annotations, ignore_dataset_mismatch)
    return search_for(getattr(model, "proposal_source", None))


def search_for(settings: dict[str, Any] | None, remember: bool = False
               ) -> SelectiveSearch | None:
    """The search a checkpoint's ``meta["proposals"]`` names (None: none); ``remember``: as
    :class:`SelectiveSearch`."""
    if not settings:
        return None
    if settings.get("method") != METHOD:
        raise CheckpointError(f"the checkpoint's detector was trained on "
                              f"{settings.get('method')!r} proposals, which frcnn cannot make; "
                              "give them with --proposal-file")
    return SelectiveSearch(settings.get("mode", "fast"),
                           settings.get("max_proposals", MAX_PROPOSALS),
                           settings.get("max_side", MAX_SIDE), remember)

