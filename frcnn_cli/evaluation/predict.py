"""Detections on image files: find the images, name the outputs, run the model, draw.

Output naming keeps every input safe and every output findable:

* a file given directly is written as ``OUT/<its name>``; a folder is walked (image suffixes
  only, hidden entries skipped) and ``FOLDER/a/b.jpg`` is written as ``OUT/a/b.jpg``;
* two inputs that would get one name are told apart with ``-2``, ``-3`` before the suffix;
* formats Pillow cannot write back or that cannot carry the tag saying frcnn drew them
  (BMP, GIF, PGM, ...) are written as PNG;
* an existing file is replaced only when it is such a drawing (``frcnn_cli.outputs``);
* an output that would land on an input file is refused before anything runs (so ``--out``
  cannot be an input folder, nor the folder of an input image);
* when ``OUT`` lies inside an input folder, the walk skips it: a second run does not predict
  on the first run's drawings.

With a :class:`~frcnn_cli.inference.tiled.Tiling` the model runs on each image's tiles and
the drawing and the detections are the whole image's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frcnn_cli.data.images import IMAGE_SUFFIXES, MAX_PIXELS, is_image_file, read_image
from frcnn_cli.distributed import DistInfo
from frcnn_cli.errors import DataError, InputError
from frcnn_cli.evaluation.detections import to_coco_results
from frcnn_cli.evaluation.draw import WRITABLE, draw_detections, save_image
from frcnn_cli.files import resolved
from frcnn_cli.inference.images import ImageSource
from frcnn_cli.inference.loop import detect_images
from frcnn_cli.inference.tiled import TiledImage, Tiling
from frcnn_cli.progress import SILENT, Reporter
from frcnn_cli.proposals.sources import ExternalProposals, proposals_for


@dataclass
class ImageJob:
    """One input image: ``source`` file, ``output`` drawing, ``image_id`` (1-based, in the
    order images were found)."""

    source: Path
    output: Path
    image_id: int


@dataclass
class PredictReport:
    """What :func:`predict_files` did: ``detections`` (COCO results with ``file_name`` and
    ``category_name``), drawings ``written``, images ``skipped`` as (file, reason), and with
    tiling, each written image's tiles and detections in ``images``; :func:`run_predict` adds
    the ``detections_file``, the number of ``jobs`` and the external proposal ``source``."""

    detections: list[dict[str, Any]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    images: list[TiledImage] = field(default_factory=list)
    detections_file: Path | None = None
    jobs: int = 0
    source: ExternalProposals | None = None


@dataclass
class PredictArgs:
    """What ``frcnn predict`` was asked (the options of its ``--help``)."""

    checkpoint: str | os.PathLike
    inputs: Sequence[str | os.PathLike]
    out: str | os.PathLike
    score_thresh: float = 0.5
    tiling: Tiling | None = None
    max_pixels: int | None = None
    device: str = "auto"
    precision: str = "fp32"


def run_predict(args: PredictArgs, reporter: Reporter = SILENT) -> PredictReport | None:
    """``frcnn predict``: the images found, their outputs checked before any work (no input
    replaced, only frcnn's own files), the model loaded, its proposals chosen once, the
    drawings and ``OUT/detections.json`` written. DataError when no image could be read.
    Under torchrun every process runs its share; the main one writes everything and returns
    the report, the others None."""
    from frcnn_cli import distributed

    with distributed.processes(args.device) as (device, dist):
        report = _predict(args, device, dist, reporter if dist.is_main else SILENT)
    return report if dist.is_main else None


def _predict(args: PredictArgs, device, dist: DistInfo, reporter: Reporter) -> PredictReport:
    from frcnn_cli.devices import autocast
    from frcnn_cli.evaluation.detections import save_detections
    from frcnn_cli.evaluation.run import load_detector
    from frcnn_cli.files import prepare_output_dir, require_file
    from frcnn_cli.outputs import DETECTIONS, DRAWING

    require_file(args.checkpoint, "checkpoint")
    found = find_images(args.inputs, exclude=args.out)
    if not found:
        raise InputError(f"no images found in {', '.join(map(str, args.inputs))} (looked for "
                         f"{describe_suffixes()})")
    out = Path(args.out)
    jobs = plan_outputs(found, out)
    prepare_output_dir(out, args.inputs, "--out folder", writes=[
        ("detections.json", DETECTIONS), *((job.output.relative_to(out), DRAWING) for job in jobs)])
    autocast(device, args.precision)  # fp16 on a CPU is refused before any work
    model = load_detector(args.checkpoint, device, args.precision)
    source = proposals_for(model)  # Selective Search for a detector trained on it, else None
    report = predict_files(model, jobs, device, args.score_thresh, reporter,
                           precision=args.precision, proposals=source, tiling=args.tiling,
                           max_pixels=args.max_pixels or MAX_PIXELS, dist=dist)
    report.jobs, report.source = len(jobs), source
    if not dist.is_main:
        return report
    if not report.written:
        first = report.skipped[0][1] if report.skipped else "no image"
        raise DataError(f"none of the {len(jobs)} image(s) could be read ({first}); nothing "
                        "written")
    report.detections_file = save_detections(out / "detections.json", report.detections)
    return report


def find_images(inputs: Sequence[str | os.PathLike],
                exclude: str | os.PathLike | None = None) -> list[tuple[Path, Path]]:
    """``(file, name under OUT)`` for every image of ``inputs``, in order.

    Files are taken as given (whatever their suffix); folders are walked in sorted order for
    files with an image suffix, skipping hidden entries and the ``exclude`` folder. Raises
    InputError for a path that does not exist.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[tuple[Path, Path]] = []
    for given in inputs:
        path = Path(given)
        if path.is_file():
            found.append((path, Path(path.name)))
        elif path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                                 and (skip is None or (Path(root) / d).resolve() != skip))
                for name in sorted(files):
                    if not name.startswith(".") and is_image_file(name):
                        file = Path(root) / name
                        found.append((file, file.relative_to(path)))
        else:
            raise InputError(f"input not found: {path}")
    return found


def plan_outputs(found: Sequence[tuple[Path, Path]], out: str | os.PathLike) -> list[ImageJob]:
    """Give each found image its output path under ``out`` (see the module docstring).

    Raises InputError when an output would replace an input image.
    """
    out = Path(out)
    taken: set[str] = set()
    jobs = []
    for i, (source, name) in enumerate(found, start=1):
        if name.suffix.lower() not in WRITABLE:
            name = name.with_suffix(".png")
        candidate, n = out / name, 1
        # case-insensitive: a.jpg and A.JPG are one file on macOS and Windows
        while str(candidate).lower() in taken:
            n += 1
            candidate = out / name.with_name(f"{name.stem}-{n}{name.suffix}")
        taken.add(str(candidate).lower())
        jobs.append(ImageJob(source, candidate, i))
    sources = {resolved(job.source) for job in jobs}
    for job in jobs:
        if resolved(job.output) in sources:
            raise InputError(f"the drawing of {job.source} would replace the input image "
                             f"{job.output}; choose an --out folder that holds no input image")
    return jobs


def predict_files(model, jobs: Sequence[ImageJob], device: str | torch.device = "cpu",
                  score_thresh: float = 0.5, reporter: Reporter = SILENT,
                  *, precision: str = "fp32", proposals: ExternalProposals | None = None,
                  tiling: Tiling | None = None, max_pixels: int | None = MAX_PIXELS,
                  dist: DistInfo | None = None) -> PredictReport:
    """Run ``model`` on each job's image (on its tiles with ``tiling``), in ``precision``,
    keep detections scoring at least ``score_thresh``, write the drawing to ``job.output`` and
    collect the detections in file pixels.

    A detector trained on Selective Search proposals runs it on each image (``proposals``:
    the source to use and time; default, the one its checkpoint names). An image that cannot
    be decoded, or has more than ``max_pixels`` pixels, is skipped and listed in the report's
    ``skipped``. The progress bar counts images, or tiles with ``tiling``. Under torchrun
    (``dist``) every process detects its share and the main one draws and collects them all
    (decoding again the images another process ran on); the others' reports are empty.
    """
    proposals = proposals if proposals is not None else proposals_for(model)
    # the model keeps down to the recipe's threshold unless the user asks for less
    detect_thresh = min(model.recipe.roi_heads.score_thresh, score_thresh)
    report = PredictReport()
    output_of = {job.image_id: job.output for job in jobs}
    source = ImageSource.of_files([(job.image_id, job.source) for job in jobs],
                                  max_pixels=max_pixels, skip_unreadable=True)
    for found in detect_images(model, source, device, precision=precision, proposals=proposals,
                               tiling=tiling, keep_pixels=True, num_workers=0,
                               reporter=reporter, score_thresh=detect_thresh, dist=dist,
                               description="predict" if tiling is None else "predict (tiles)"):
        if found.output is None:
            report.skipped.append((found.item.path, found.skipped))
            continue
        out = found.output
        labels = out["labels"].astype(np.int64)
        results = to_coco_results(out["boxes"], out["scores"], labels, found.item.image_id,
                                  model.classes)
        # the threshold applies to the scores as written, so the file and the drawing agree
        # with a filter a user runs on the file
        keep = np.array([r["score"] >= score_thresh for r in results], dtype=bool)
        boxes, scores, labels = out["boxes"][keep], out["scores"][keep], labels[keep]
        results = [r for r, k in zip(results, keep, strict=True) if k]
        for r, label in zip(results, labels, strict=True):
            r["file_name"] = str(found.item.path)
            r["category_name"] = model.classes[int(label) - 1]["name"]
        report.detections.extend(results)
        pixels = (np.ascontiguousarray(found.pixels.permute(1, 2, 0).numpy())
                  if found.pixels is not None else read_image(found.item.path, max_pixels))
        output = output_of[found.item.image_id]
        save_image(draw_detections(pixels, boxes, labels, scores, model.classes), output)
        report.written.append(output)
        if tiling is not None:
            report.images.append(TiledImage(found.item.path.name, found.width, found.height,
                                            found.tiles, len(results)))
    return report


def describe_suffixes() -> str:
    """The image suffixes a folder walk picks up, for messages."""
    return ", ".join(IMAGE_SUFFIXES)
