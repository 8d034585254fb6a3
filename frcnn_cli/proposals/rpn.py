"""An RPN's proposals for every image of a dataset: ``frcnn propose CKPT``, and the propose steps
of the 4-step schedule (the boxes steps 2 and 4 learn on).

    propose("runs/a/stage1-rpn/model.pt", "train.json", "proposals.pt")

The RPN runs with the recipe's *training* proposal numbers (12000 -> NMS -> 2000 in the paper),
as the original's ``rpn_generate`` does for the Fast R-CNN steps; ``max_proposals`` keeps up
to that many after NMS instead. Under torchrun each process proposes for its share of the
images and the main one writes the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from frcnn_cli import distributed as dist_mod
from frcnn_cli.inference.images import ImageSource
from frcnn_cli.inference.loop import detect_images
from frcnn_cli.outputs import PROPOSALS
from frcnn_cli.progress import SILENT, Reporter
from frcnn_cli.proposals.files import save_proposals
from frcnn_cli.proposals.recall import proposal_coverage

log = logging.getLogger("frcnn")


def generate_proposals(model, annotations, device: torch.device, reporter: Reporter = SILENT,
                       batch_size: int = 1, max_proposals: int | None = None,
                       skip_unreadable: bool = False, dist: dist_mod.DistInfo | None = None
                       ) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], list[float]]:
    """Run the model's RPN over a dataset with the training proposal numbers (or
    ``max_proposals``, see :func:`rpn_counts`); under torchrun (``dist``) each process its
    share, the main one receiving them all (the others nothing).

    Returns ``{image_id: (boxes [P, 4] in the file's pixels, scores [P])}`` and the seconds
    per image of each forward (backbone and RPN; decoding excluded). ``skip_unreadable``: an
    image that cannot be decoded gets no entry, with a warning (training skips it too);
    otherwise it stops the run with a DataError naming it.
    """
    pre, post = rpn_counts(model.recipe, max_proposals)
    source = ImageSource.of_dataset(annotations, skip_unreadable=skip_unreadable)
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    seconds: list[float] = []
    for found in detect_images(model, source, device, batch_size=batch_size, dist=dist,
                               reporter=reporter, description="proposals", rpn_only=True,
                               pre_nms_top_n=pre, post_nms_top_n=post):
        if found.output is None:
            log.warning("no proposals for an image training skips: %s", found.skipped)
            continue
        out[int(found.item.image_id)] = (torch.from_numpy(found.output["boxes"]),
                                         torch.from_numpy(found.output["scores"]))
        seconds.append(found.seconds)
    return out, seconds


def rpn_counts(recipe, max_proposals: int | None = None) -> tuple[int, int]:
    """Proposals kept before and after the RPN's NMS by ``frcnn propose``: the recipe's
    training numbers, or ``max_proposals`` after NMS (and at least as many before)."""
    rpn = recipe.rpn
    if max_proposals is None:
        return rpn.pre_nms_top_n_train, rpn.post_nms_top_n_train
    return max(rpn.pre_nms_top_n_train, max_proposals), max_proposals


def propose(checkpoint: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
            device: str = "auto", reporter: Reporter = SILENT, batch_size: int = 1,
            max_proposals: int | None = None, purpose: str = "propose") -> Path:
    """Run a checkpoint's RPN over the dataset ``data`` and write the proposals file ``out``.

    ``purpose="train"``: the training set of a 4-step run, read as training reads it: images
    that training skips (missing, unreadable) get no proposals instead of stopping the run.
    """
    from frcnn_cli.data.usable import open_dataset
    from frcnn_cli.files import prepare_output_file, require_file
    from frcnn_cli.model.faster_rcnn import load_model

    with dist_mod.processes(device) as (dev, dist):
        require_file(checkpoint, "checkpoint")
        ann = open_dataset(data, purpose)
        # every process checks (the same verdict): none is left waiting for a refused one
        prepare_output_file(out, PROPOSALS, [checkpoint, data, *ann.image_files()],
                            "proposals file")
        model = load_model(checkpoint, device=dev)
        merged, seconds = generate_proposals(model, ann, dev,
                                             reporter if dist.is_main else SILENT, batch_size,
                                             max_proposals, skip_unreadable=purpose == "train",
                                             dist=dist)
        if dist.is_main:
            save_proposals(merged, ann.images, out, _rpn_meta(
                model.recipe, checkpoint, max_proposals, seconds, dev, merged, ann), ann.path)
        dist_mod.barrier(dist)  # the file is whole before any process goes on
    return Path(out)


def _rpn_meta(recipe, checkpoint, max_proposals: int | None, seconds: list[float],
              device: torch.device, merged: dict, ann) -> dict[str, Any]:
    pre, post = rpn_counts(recipe, max_proposals)
    empty = torch.zeros(0, 4)
    return {"method": "rpn", "checkpoint": str(checkpoint), "pre_nms_top_n": pre,
            "post_nms_top_n": post, "nms_thresh": recipe.rpn.nms_thresh,
            "min_size": recipe.rpn.min_size,
            "seconds_per_image": sum(seconds) / len(seconds) if seconds else 0.0,
            "device": str(device),
            "coverage": proposal_coverage([merged.get(im["id"], (empty,))[0]
                                           for im in ann.images], ann)}
