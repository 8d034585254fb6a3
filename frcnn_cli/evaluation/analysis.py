"""Why the mAP is what it is: the error analysis ``frcnn eval --analyze DIR`` writes.

    ann = load_annotations("val.json")
    check_outputs("why", ann)            # before the slow part: refuses what frcnn did not write
    result = analyze(ann, load_detections("dets.json"), "why", score_thresh=0.5)
    result.error_rows(), result.matrix_rows()

In ``DIR``:

- ``errors.json``: TIDE's AP at IoU 0.5 and the dAP of each error type, of all false
  positives and of all false negatives, with the counts (:mod:`frcnn_cli.evaluation.tide`);
- ``confusion.json`` and ``confusion.png``: the confusion matrix at the score threshold, and
  each class's precision, recall and F1 there and its best F1
  (:mod:`frcnn_cli.evaluation.confusion`);
- ``images/``: the images with the most errors at the score threshold (a detection that is
  not a true positive, or an object that no detection scoring at least the threshold took),
  ground truth and detections drawn together, each detection coloured by its TIDE type
  (:data:`frcnn_cli.evaluation.draw.ERROR_COLOURS`). A drawing is named by its image's file
  stem (``-2``, ``-3`` on a clash), JPEG for a JPEG image and PNG otherwise.

Every file replaces only a file of its kind that frcnn wrote (:mod:`frcnn_cli.outputs`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.data.images import read_image
from frcnn_cli.data.usable import without_unusable
from frcnn_cli.errors import DataError, InputError
from frcnn_cli.evaluation.coco import MAX_DETS
from frcnn_cli.evaluation.confusion import Confusion, confusion
from frcnn_cli.evaluation.detections import detection_arrays, ground_truth_arrays
from frcnn_cli.evaluation.draw import ERROR_COLOURS, draw_boxes, save_image
from frcnn_cli.evaluation.evaluate import class_names
from frcnn_cli.evaluation.greedy import xyxy
from frcnn_cli.evaluation.plots import plot_confusion
from frcnn_cli.evaluation.tide import (
    BG_IOU,
    BKG,
    BOTH,
    CLS,
    DETECTION_TYPES,
    DUPE,
    ERROR_TYPES,
    FG_IOU,
    IGNORED,
    LOC,
    ErrorReport,
    Outcomes,
    find_outcomes,
    tide_errors,
)
from frcnn_cli.files import prepare_output_dir, prepare_output_file, resolved, write_result
from frcnn_cli.outputs import (
    CONFUSION_RESULT,
    ERROR_DRAWING,
    ERROR_DRAWING_SOFTWARE,
    ERRORS_RESULT,
    PLOT,
)
from frcnn_cli.progress import SILENT, Reporter

log = logging.getLogger("frcnn")

SCORE_THRESH = 0.5  # the operating point of the matrix and the drawings
MAX_IMAGES = 20  # drawings of the images with the most errors

ERRORS_FILE, CONFUSION_FILE, CONFUSION_PLOT = "errors.json", "confusion.json", "confusion.png"
IMAGES_DIR = "images"

# The rows of the error table: what each number fixes.
ERROR_TITLES = {
    "cls": f"classification: right place (IoU >= {FG_IOU:g}), wrong class",
    "loc": f"localisation: right class, IoU {BG_IOU:g} to {FG_IOU:g}",
    "both": f"both: wrong class and IoU {BG_IOU:g} to {FG_IOU:g}",
    "dupe": "duplicate: an object its class's better detection took",
    "bkg": f"background: IoU <= {BG_IOU:g} with every object",
    "miss": "missed: no detection took or points at the object",
    "false_pos": "all false positives (perfect precision)",
    "false_neg": "all false negatives (perfect recall)",
}
# What an image's error counts are, by column of :func:`image_errors`.
IMAGE_ERRORS = ("cls", "loc", "both", "dupe", "bkg", "missed")


@dataclass
class DrawnImage:
    """One drawing: the image ``file``, the ``drawing`` written and its ``errors`` at the
    score threshold (by :data:`IMAGE_ERRORS`)."""

    file: Path
    drawing: Path
    errors: dict[str, int]


@dataclass
class Analysis:
    """What :func:`analyze` found and wrote: ``errors`` (TIDE), ``confusion`` (the matrix),
    the images ``drawn`` (worst first), the images ``skipped`` (file, reason: it could not
    be read) and every file ``written``."""

    errors: ErrorReport
    confusion: Confusion
    drawn: list[DrawnImage] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    def error_rows(self) -> list[tuple[str, str, float, int]]:
        """The error table: ``(type, what it is, dAP, count)``, TIDE's six types then all
        false positives and all false negatives; dAP in fractions of 1."""
        report = self.errors
        values = {**report.dAP, "false_pos": report.false_pos, "false_neg": report.false_neg}
        return [(name, ERROR_TITLES[name], values[name], report.counts[name])
                for name in (*ERROR_TYPES, "false_pos", "false_neg")]

    def matrix_rows(self) -> tuple[list[str], list[list[Any]]]:
        """The confusion matrix as a table: header and rows (:meth:`Confusion.rows`)."""
        return self.confusion.rows()


def drawing_names(ann: Annotations) -> list[str]:
    """Each image's drawing, relative to the analysis folder: ``images/<stem>.jpg`` for a
    JPEG image, ``images/<stem>.png`` otherwise; names that clash (case aside) get ``-2``,
    ``-3`` after the stem, in image order."""
    names, taken = [], set()
    for im in ann.images:
        path = Path(im["file_name"])
        suffix = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
        stem, n = path.stem or "image", 1
        name = f"{stem}{suffix}"
        while name.lower() in taken:
            n += 1
            name = f"{stem}-{n}{suffix}"
        taken.add(name.lower())
        names.append(f"{IMAGES_DIR}/{name}")
    return names


def check_outputs(out_dir: str | os.PathLike, ann: Annotations,
                  inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Check, before any slow work, that :func:`analyze` may write into ``out_dir`` (created
    if missing): each file it could write there is absent or an earlier output of its kind,
    no drawing would land on an image of ``ann`` and ``out_dir`` is none of ``inputs``.
    Raises InputError naming the first culprit; returns the folder."""
    names = drawing_names(ann)
    writes = [(ERRORS_FILE, ERRORS_RESULT), (CONFUSION_FILE, CONFUSION_RESULT),
              (CONFUSION_PLOT, PLOT), *((name, ERROR_DRAWING) for name in names)]
    out = prepare_output_dir(out_dir, [*inputs, ann.path], "--analyze folder", writes)
    prepare_output_dir(out / IMAGES_DIR, what="--analyze images folder")
    sources = {resolved(path) for path in ann.image_files()}
    for name in names:
        if resolved(out / name) in sources:
            raise InputError(f"the error drawing {out / name} would replace an image of the "
                             "dataset; choose an --analyze folder that holds none")
    return out


def analyze(ann: Annotations, detections: list[dict[str, Any]], out_dir: str | os.PathLike,
            score_thresh: float = SCORE_THRESH, max_images: int = MAX_IMAGES,
            max_dets: int = MAX_DETS, reporter: Reporter = SILENT,
            source: str = "detections") -> Analysis:
    """Analyse ``detections`` (COCO results) on ``ann`` and write ``errors.json``,
    ``confusion.json``, ``confusion.png`` and up to ``max_images`` drawings into ``out_dir``
    (see the module docstring). The best ``max_dets`` detections of each image are looked
    at; the matrix and the drawings keep those scoring at least ``score_thresh``.

    Raises InputError for an unusable setting or output (:func:`check_outputs`), DataError
    for a malformed detection or a dataset with no object that counts.
    """
    _check_settings(score_thresh, max_images, max_dets)
    out = check_outputs(out_dir, ann)
    ann = without_unusable(ann)
    gt = ground_truth_arrays(ann)
    if gt.ignore.all():
        where = f" {ann.path}" if ann.path is not None else ""
        raise DataError(f"dataset{where} has no object to analyse errors against (difficult "
                        "and crowd objects do not count)")
    outcomes = find_outcomes(gt, detection_arrays(ann, detections, source), len(ann.images),
                             max_dets)
    names = class_names(ann)
    result = Analysis(tide_errors(outcomes, len(names)),
                      confusion(outcomes, names, score_thresh))
    result.written += [
        write_result(out / ERRORS_FILE, ERRORS_RESULT,
                     {**result.errors.to_dict(), "max_dets": max_dets}),
        write_result(out / CONFUSION_FILE, CONFUSION_RESULT,
                     {**result.confusion.to_dict(), "max_dets": max_dets}),
        plot_confusion(result.confusion, out / CONFUSION_PLOT)]
    _draw_worst(ann, outcomes, out, score_thresh, max_images, reporter, result)
    return result


def image_errors(out: Outcomes, score_thresh: float) -> np.ndarray:
    """``(num_images, 6)`` int: each image's errors at ``score_thresh`` by
    :data:`IMAGE_ERRORS`, the detections scoring at least it by TIDE type, then the counted
    objects that none of them took."""
    confident = out.dets.scores >= score_thresh
    counts = [np.bincount(out.dets.images[confident & (out.det_type == code)],
                          minlength=out.num_images) for code in (CLS, LOC, BOTH, DUPE, BKG)]
    counts.append(np.bincount(out.gt.images[out.missed_at(score_thresh)],
                              minlength=out.num_images))
    return np.stack(counts, axis=1)


def draw_image_errors(pixels: np.ndarray, out: Outcomes, image: int, score_thresh: float,
                      names: list[str]):
    """One image (uint8 ``[H, W, 3]``, index ``image``) with its objects and its detections
    scoring at least ``score_thresh`` drawn: found objects thin, missed ones labelled
    ``missed``, difficult and crowd objects (and detections ignored on them) thin grey, then
    the detections by rising score, coloured and labelled by their TIDE type. Returns a PIL
    image."""
    objects = np.flatnonzero(out.gt.images == image)
    missed = out.missed_at(score_thresh)[objects]
    ignored = out.gt.ignore[objects]
    dets = np.flatnonzero((out.dets.images == image) & (out.dets.scores >= score_thresh))
    dets = dets[np.argsort(out.dets.scores[dets], kind="stable")]
    kinds = ["ignored" if i else "missed" if m else "object"
             for i, m in zip(ignored, missed, strict=True)]
    texts = [f"missed {names[c]}" if k == "missed" else None
             for k, c in zip(kinds, out.gt.classes[objects], strict=True)]
    for d in dets:
        code = int(out.det_type[d])
        kind = "ignored" if code == IGNORED else DETECTION_TYPES[code]
        name = f"{names[out.dets.classes[d]]} {out.dets.scores[d]:.2f}"
        kinds.append(kind)
        texts.append(None if kind == "ignored" else name if kind == "tp" else f"{kind} {name}")
    boxes = np.concatenate([xyxy(out.gt.boxes[objects]), xyxy(out.dets.boxes[dets])])
    thin = np.array([k in ("object", "ignored") for k in kinds], dtype=bool)
    return draw_boxes(pixels, boxes, [ERROR_COLOURS[k] for k in kinds], texts, thin)


def _draw_worst(ann: Annotations, out: Outcomes, folder: Path, score_thresh: float,
                max_images: int, reporter: Reporter, result: Analysis) -> None:
    """Draw the ``max_images`` images with the most errors (none without) into
    ``folder/images``, recording each drawing, skipped image and file in ``result``."""
    counts = image_errors(out, score_thresh)
    total = counts.sum(axis=1)
    worst = [int(i) for i in np.argsort(-total, kind="stable")[:max_images] if total[i] > 0]
    names, files = class_names(ann), drawing_names(ann)
    with reporter.task("drawing errors", total=len(worst)) as task:
        for i in worst:
            source = ann.image_path(ann.images[i])
            try:
                pixels = read_image(source)
            except DataError as e:
                log.warning("not drawn: %s", e)
                result.skipped.append((source, str(e)))
                task.update(advance=1)
                continue
            path = _save_drawing(draw_image_errors(pixels, out, i, score_thresh, names),
                                 folder / files[i])
            result.drawn.append(DrawnImage(source, path, dict(zip(
                IMAGE_ERRORS, (int(v) for v in counts[i]), strict=True))))
            result.written.append(path)
            task.update(advance=1)


def _save_drawing(image, path: Path) -> Path:
    """Write a PIL image atomically, JPEG (quality 95) for ``.jpg`` and PNG otherwise, tagged
    as an error drawing; a file there that is not one is refused (InputError) and kept."""
    prepare_output_file(path, ERROR_DRAWING, what="error drawing")
    return save_image(image, path, ERROR_DRAWING_SOFTWARE)


def _check_settings(score_thresh: float, max_images: int, max_dets: int) -> None:
    if (isinstance(score_thresh, bool) or not isinstance(score_thresh, (int, float, np.number))
            or not math.isfinite(score_thresh)):
        raise InputError(f"the score threshold must be a finite number, got {score_thresh!r}")
    for value, what, least in ((max_images, "the number of images to draw", 0),
                               (max_dets, "the detections per image (max_dets)", 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise InputError(f"{what} must be an integer >= {least}, got {value!r}")
