"""Run a model over a dataset: detections in file pixels, scores, and RPN proposals.

    model = load_model("runs/a/model.pt")
    result = evaluate_model(model, open_dataset("demo/val.json", "eval"), metric="voc07")
    result.mAP, result.per_class
    result = evaluate_model(model, ann, tiling=Tiling(800))   # large images, 800 px tiles

Every image goes through :func:`frcnn_cli.inference.loop.detect_images`, the loop predict and
propose run too: ``model.detect`` on the image at its own size (or on its tiles, merged in its
pixels), the same call the exported files and the Python API make. One image per forward pass
by default: images padded together into one batch see each other's padding near their bottom
and right edges, so a larger ``batch_size`` (faster on a GPU) can move a detection there by a
little.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.data.images import MAX_PIXELS
from frcnn_cli.data.usable import match_classes, open_dataset, without_unusable
from frcnn_cli.distributed import DistInfo
from frcnn_cli.evaluation.detections import to_coco_results
from frcnn_cli.evaluation.evaluate import EvalResult, evaluate_detections
from frcnn_cli.inference.images import ImageSource
from frcnn_cli.inference.loop import detect_images
from frcnn_cli.inference.tiled import TiledImage, Tiling
from frcnn_cli.progress import SILENT, Reporter
from frcnn_cli.proposals.recall import TOP_N, RecallResult, counted_objects, proposal_recall
from frcnn_cli.proposals.sources import ExternalProposals, proposals_for

DEFAULT_BATCH_SIZE = 1


def _annotations(annotations: Annotations | str | os.PathLike) -> Annotations:
    if isinstance(annotations, Annotations):
        return annotations
    return open_dataset(annotations, "eval")


def predict_dataset(model, annotations: Annotations | str | os.PathLike,
                    device: str | torch.device = "cpu", reporter: Reporter = SILENT,
                    batch_size: int = DEFAULT_BATCH_SIZE, *, precision: str = "fp32",
                    proposals: ExternalProposals | None = None, tiling: Tiling | None = None,
                    max_pixels: int | None = MAX_PIXELS,
                    tiled_images: list[TiledImage] | None = None,
                    dist: DistInfo | None = None) -> list[dict[str, Any]]:
    """Detections of ``model`` on every image of a dataset, as COCO results in file pixels.
    Under torchrun (``dist``) every process runs its share and the main one returns them all
    (the others an empty list).

    The model is put in eval mode on ``device``, in ``precision`` (fp32, or autocast to
    bf16/fp16); its labels are mapped to the dataset's category ids by
    :func:`~frcnn_cli.data.usable.match_classes` (by name; DataError if the model knows a class
    the dataset does not). It detects on ``proposals``' boxes when given, else on those its
    checkpoint names (Selective Search for a detector trained on it), else on its RPN's. With
    ``tiling``, the model runs on each image's tiles (``batch_size`` is then unused), and a list
    passed as ``tiled_images`` receives each image's tiles and detections. Images over
    ``max_pixels`` pixels are refused (DataError).
    """
    ann = _annotations(annotations)
    classes = match_classes(model.classes, ann)
    proposals = proposals if proposals is not None else proposals_for(model)
    results: list[dict[str, Any]] = []
    for found in detect_images(model, ImageSource.of_dataset(ann, max_pixels=max_pixels),
                               device, batch_size=batch_size, precision=precision,
                               proposals=proposals, tiling=tiling, reporter=reporter, dist=dist,
                               description="detect" if tiling is None else "detect (tiles)"):
        out = found.output
        results.extend(to_coco_results(out["boxes"], out["scores"], out["labels"],
                                       found.item.image_id, classes))
        if tiling is not None and tiled_images is not None:
            tiled_images.append(TiledImage(found.item.record["file_name"], found.width,
                                           found.height, found.tiles, len(out["boxes"])))
    return results


def evaluate_model(model, annotations: Annotations | str | os.PathLike, metric: str = "voc07",
                   device: str | torch.device = "cpu", reporter: Reporter = SILENT,
                   batch_size: int = DEFAULT_BATCH_SIZE,
                   detections: list[dict[str, Any]] | None = None,
                   precision: str = "fp32", proposals: ExternalProposals | None = None,
                   tiling: Tiling | None = None, max_pixels: int | None = MAX_PIXELS,
                   tiled_images: list[TiledImage] | None = None,
                   max_dets: int | None = None, dist: DistInfo | None = None
                   ) -> EvalResult | None:
    """Run ``model`` over a dataset and score it (``metric``: voc07, voc or coco).

    ``annotations`` is an Annotations or a path to a COCO JSON file. Pass a list as
    ``detections`` to also receive the detections (COCO results, file pixels) in it.
    ``precision``, ``proposals``, ``tiling``, ``max_pixels``, ``tiled_images``: as
    :func:`predict_dataset`; with ``tiling`` whole images are scored. ``max_dets``: the COCO
    metric's detections per image (None: pycocotools' 100). Under torchrun (``dist``) every
    process detects its share and the main one scores them all; the others return None.
    """
    ann = _annotations(annotations)
    dets = predict_dataset(model, ann, device, reporter, batch_size, precision=precision,
                           proposals=proposals, tiling=tiling, max_pixels=max_pixels,
                           tiled_images=tiled_images, dist=dist)
    if dist is not None and not dist.is_main:
        return None
    if detections is not None:
        detections.extend(dets)
    return evaluate_detections(ann, dets, metric, source="model detections",
                               max_dets=max_dets)


def evaluate_proposals(model, annotations: Annotations | str | os.PathLike,
                       device: str | torch.device = "cpu", reporter: Reporter = SILENT,
                       batch_size: int = DEFAULT_BATCH_SIZE,
                       top_n: tuple[int, ...] = TOP_N, precision: str = "fp32",
                       max_pixels: int | None = MAX_PIXELS, dist: DistInfo | None = None
                       ) -> RecallResult | None:
    """Recall of the RPN's top N proposals (default 300, 1000, 2000) on a dataset.

    Proposals are taken once with room for the largest N (the pre-NMS count stays the
    recipe's test value unless it is smaller); since NMS keeps boxes by falling score, the top
    300 of those are the 300 a smaller setting would give. Under torchrun (``dist``) the main
    process returns the recall of all, the others None.
    """
    ann = without_unusable(_annotations(annotations))
    settings = {"pre_nms_top_n": max(model.recipe.rpn.pre_nms_top_n_test, max(top_n)),
                "post_nms_top_n": max(top_n)}
    index = {im["id"]: i for i, im in enumerate(ann.images)}
    proposals: list[np.ndarray] = [np.zeros((0, 4))] * len(ann.images)
    for found in detect_images(model, ImageSource.of_dataset(ann, max_pixels=max_pixels),
                               device, batch_size=batch_size, precision=precision,
                               reporter=reporter, description="proposals", rpn_only=True,
                               dist=dist, **settings):
        order = np.argsort(-found.output["scores"].reshape(-1), kind="stable")
        proposals[index[found.item.image_id]] = found.output["boxes"].reshape(-1, 4)[order]
    if dist is not None and not dist.is_main:
        return None
    result = proposal_recall(proposals, counted_objects(ann), top_n)
    result.extra = {"rpn": {**settings, "nms_thresh": float(model.recipe.rpn.nms_thresh)}}
    return result
