"""Validation images with the detections drawn on them, for TensorBoard's image panel: the
first few images of --val at every validation, so a person watches the detector learn on the
same pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

PICTURES = 4        # validation images drawn at each validation
SCORE_THRESH = 0.5  # the detections drawn: those a user would keep (frcnn predict's default)


def detection_pictures(model, annotations, device: torch.device, proposals=None,
                       count: int = PICTURES) -> list[tuple[str, np.ndarray]]:
    """``(file name, uint8 [H, W, 3])`` for the first ``count`` images of ``annotations``
    with ``model``'s detections scoring at least :data:`SCORE_THRESH` drawn
    (:func:`frcnn_cli.evaluation.draw.draw_detections`). ``proposals``: the external source
    the model detects on (None: its RPN). Unreadable images are left out."""
    from frcnn_cli.evaluation.draw import draw_detections
    from frcnn_cli.inference.images import ImageItem, ImageSource
    from frcnn_cli.inference.loop import detect_images

    source = ImageSource([ImageItem(im["id"], annotations.image_path(im), im)
                          for im in annotations.images[:count]], skip_unreadable=True)
    pictures = []
    for found in detect_images(model, source, device, proposals=proposals, keep_pixels=True,
                               num_workers=0, score_thresh=SCORE_THRESH):
        if found.output is None:
            continue
        out = found.output
        pixels = np.ascontiguousarray(found.pixels.permute(1, 2, 0).numpy())
        drawn = draw_detections(pixels, out["boxes"], out["labels"], out["scores"],
                                model.classes)
        pictures.append((Path(found.item.record["file_name"]).name, np.asarray(drawn)))
    return pictures
