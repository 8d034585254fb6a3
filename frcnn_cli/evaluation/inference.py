"""Run a model over a dataset: detections in file pixels, scores, and RPN proposals.

    model = load_model("runs/a/model.pt")
    result = evaluate_model(model, load_annotations("demo/val.json"), metric="voc07")
    result.mAP, result.per_class
    result = evaluate_model(model, ann, tiling=Tiling(800))   # large images, 800 px tiles

The test loader decodes each image at its own size and hands it to ``model.detect``, the same
call predict, propose, the exported files and the Python API make; the model resizes it and
answers in the file's pixels. One image per forward pass by default: images padded together
into one batch see each other's padding near their bottom and right edges, so a larger
``batch_size`` (faster on a GPU) can move a detection there by a little.

With a :class:`~frcnn_cli.evaluation.tiled.Tiling`, each image is decoded here and the model
runs on its tiles (:func:`~frcnn_cli.evaluation.tiled.detect_tiled`); the detections are
merged in the whole image's pixels and scored on whole images.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.data.images import MAX_PIXELS, image_size, read_image
from frcnn_cli.data.usable import match_classes, open_dataset, without_unusable
from frcnn_cli.devices import autocast
from frcnn_cli.evaluation.detections import to_coco_results
from frcnn_cli.evaluation.evaluate import EvalResult, evaluate_detections
from frcnn_cli.evaluation.tiled import TiledImage, Tiling, detect_tiled
from frcnn_cli.progress import SILENT, Reporter
from frcnn_cli.proposals.recall import TOP_N, RecallResult, counted_objects, proposal_recall
from frcnn_cli.proposals.sources import ExternalProposals, detect, proposals_for

log = logging.getLogger("frcnn")

DEFAULT_BATCH_SIZE = 1
COCO_MAX_DETECTIONS = 100  # pycocotools' largest maxDets: the detections it scores per image


def _batches(model, ann: Annotations, device: torch.device, reporter: Reporter,
             batch_size: int, description: str, *, precision: str = "fp32",
             proposals: ExternalProposals | None = None, max_pixels: int | None = MAX_PIXELS,
             **settings: Any) -> Iterator[Any]:
    """Yield ``(output, image_id)`` for every image of ``ann``: ``model.detect`` on the images
    at their own size, with ``settings``, in ``precision`` (fp32, or autocast to bf16/fp16),
    and on ``proposals``' boxes when given; boxes in file pixels, as numpy arrays."""
    from frcnn_cli.data.dataset import build_test_loader

    loader = build_test_loader(ann, model.recipe, batch_size=batch_size, max_pixels=max_pixels)
    with reporter.task(description, total=len(ann.images)) as task:
        for images, targets in loader:
            inputs = [im.to(device, non_blocking=True) for im in images]
            with autocast(device, precision):
                outputs = detect(model, inputs, [t["image_id"] for t in targets], proposals,
                                 **settings)
            for output, target in zip(outputs, targets, strict=True):
                yield ({k: v.detach().float().cpu().numpy() for k, v in output.items()},
                       target["image_id"])
            task.update(advance=len(images))


def _tiled(model, ann: Annotations, device: torch.device, reporter: Reporter, tiling: Tiling,
           max_pixels: int | None, images: list[TiledImage] | None = None,
           precision: str = "fp32", **settings: Any) -> Iterator[Any]:
    """Like :func:`_batches`, on the tiles of each image (a progress bar over tiles); each
    image's record is appended to ``images``."""
    sizes = [(im["width"], im["height"]) if im.get("width") and im.get("height")
             else image_size(ann.image_path(im)) for im in ann.images]
    total = tiling.count([(int(w), int(h)) for w, h in sizes])
    with reporter.task("detect (tiles)", total=total) as task:
        for im in ann.images:
            pixels = read_image(ann.image_path(im), max_pixels)
            image = torch.from_numpy(pixels).permute(2, 0, 1)  # uint8, a view
            with autocast(device, precision):
                out = detect_tiled(model, image, tiling, device, task, **settings)
            if images is not None:
                images.append(TiledImage.of(im["file_name"], pixels, tiling, len(out["boxes"])))
            yield {k: v.float().numpy() for k, v in out.items()}, im["id"]


def _annotations(annotations: Annotations | str | os.PathLike) -> Annotations:
    if isinstance(annotations, Annotations):
        return annotations
    return open_dataset(annotations, "eval")


@torch.inference_mode()
def predict_dataset(model, annotations: Annotations | str | os.PathLike,
                    device: str | torch.device = "cpu", reporter: Reporter = SILENT,
                    batch_size: int = DEFAULT_BATCH_SIZE, *, precision: str = "fp32",
                    proposals: ExternalProposals | None = None, tiling: Tiling | None = None,
                    max_pixels: int | None = MAX_PIXELS,
                    tiled_images: list[TiledImage] | None = None) -> list[dict[str, Any]]:
    """Detections of ``model`` on every image of a dataset, as COCO results in file pixels.

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
    device = torch.device(device)
    classes = match_classes(model.classes, ann)
    model.eval().to(device)
    proposals = proposals if proposals is not None else proposals_for(model)
    results: list[dict[str, Any]] = []
    if tiling is None:
        outputs = _batches(model, ann, device, reporter, batch_size, "detect",
                           precision=precision, proposals=proposals, max_pixels=max_pixels)
    else:
        outputs = _tiled(model, ann, device, reporter, tiling, max_pixels, tiled_images,
                         precision)
    for out, image_id in outputs:
        results.extend(to_coco_results(out["boxes"], out["scores"], out["labels"], image_id,
                                       classes))
    return results


def evaluate_model(model, annotations: Annotations | str | os.PathLike, metric: str = "voc07",
                   device: str | torch.device = "cpu", reporter: Reporter = SILENT,
                   batch_size: int = DEFAULT_BATCH_SIZE,
                   detections: list[dict[str, Any]] | None = None,
                   precision: str = "fp32", proposals: ExternalProposals | None = None,
                   tiling: Tiling | None = None, max_pixels: int | None = MAX_PIXELS,
                   tiled_images: list[TiledImage] | None = None) -> EvalResult:
    """Run ``model`` over a dataset and score it (``metric``: voc07, voc or coco).

    ``annotations`` is an Annotations or a path to a COCO JSON file. Pass a list as
    ``detections`` to also receive the detections (COCO results, file pixels) in it.
    ``precision``, ``proposals``, ``tiling``, ``max_pixels``, ``tiled_images``: as
    :func:`predict_dataset`; with ``tiling`` whole images are scored.
    """
    ann = _annotations(annotations)
    dets = predict_dataset(model, ann, device, reporter, batch_size, precision=precision,
                           proposals=proposals, tiling=tiling, max_pixels=max_pixels,
                           tiled_images=tiled_images)
    most = max(Counter(d["image_id"] for d in dets).values(), default=0)
    if metric == "coco" and most > COCO_MAX_DETECTIONS:
        log.warning("pycocotools scores the best %d detections of an image (its maxDets) and "
                    "an image here has %d; --metric voc scores them all", COCO_MAX_DETECTIONS,
                    most)
    if detections is not None:
        detections.extend(dets)
    return evaluate_detections(ann, dets, metric, source="model detections")


@torch.inference_mode()
def evaluate_proposals(model, annotations: Annotations | str | os.PathLike,
                       device: str | torch.device = "cpu", reporter: Reporter = SILENT,
                       batch_size: int = DEFAULT_BATCH_SIZE,
                       top_n: tuple[int, ...] = TOP_N, precision: str = "fp32",
                       max_pixels: int | None = MAX_PIXELS) -> RecallResult:
    """Recall of the RPN's top N proposals (default 300, 1000, 2000) on a dataset.

    Proposals are taken once with room for the largest N (the pre-NMS count stays the
    recipe's test value unless it is smaller); since NMS keeps boxes by falling score, the top
    300 of those are the 300 a smaller setting would give.
    """
    ann = without_unusable(_annotations(annotations))
    device = torch.device(device)
    model.eval().to(device)
    settings = {"pre_nms_top_n": max(model.recipe.rpn.pre_nms_top_n_test, max(top_n)),
                "post_nms_top_n": max(top_n)}
    index = {im["id"]: i for i, im in enumerate(ann.images)}
    proposals: list[np.ndarray] = [np.zeros((0, 4))] * len(ann.images)
    for out, image_id in _batches(model, ann, device, reporter, batch_size, "proposals",
                                  precision=precision, max_pixels=max_pixels, rpn_only=True,
                                  **settings):
        order = np.argsort(-out["scores"].reshape(-1), kind="stable")
        proposals[index[image_id]] = out["boxes"].reshape(-1, 4)[order]
    result = proposal_recall(proposals, counted_objects(ann), top_n)
    result.extra = {"rpn": {**settings, "nms_thresh": float(model.recipe.rpn.nms_thresh)}}
    return result
