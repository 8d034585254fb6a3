"""``frcnn predict``: detections on image files, drawn and saved as JSON."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from frcnn_cli.cli import console, options

PANEL = "Evaluation"

log = logging.getLogger("frcnn")


def predict(
    checkpoint: Annotated[Path, typer.Argument(help="Model checkpoint (RUN/model.pt).",
                                               dir_okay=False, show_default=False)],
    inputs: Annotated[list[Path], typer.Argument(
        help="Image files and folders (walked for .jpg, .png, .bmp, .tif, .webp, ...).",
        metavar="IMAGE_OR_DIR...", show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Output folder: detections.json and one drawing per image.",
        file_okay=False, show_default=False)],
    score_thresh: Annotated[float, typer.Option(
        "--score-thresh", "-t", min=0.0, max=1.0,
        help="Keep detections scoring at least this (drawn and saved).")] = 0.5,
    tile: options.Tile = None,
    overlap: options.Overlap = None,
    tile_batch: options.TileBatch = None,
    max_detections: options.MaxDetections = None,
    many_tiles: options.ManyTiles = False,
    max_pixels: options.MaxPixels = None,
    device: options.Device = "auto",
    precision: options.PrecisionOption = options.Precision.fp32,
) -> None:
    """Detect objects in images; write OUT/detections.json and annotated copies.

    detections.json is a COCO results list with file names and class names:
    image_id (1, 2, ... in input order), file_name, category_id, category_name,
    bbox \\[x, y, w, h] in the file's pixels, score.
    Drawings keep the input's name (FOLDER/a/b.jpg -> OUT/a/b.jpg). An --out
    folder that would replace an input image is refused; an --out inside an
    input folder is not walked. Unreadable images are skipped and listed.
    With --tile S the model runs on overlapping S x S tiles of each image;
    boxes and drawings are the whole image's (tile about the recipe's input
    size, or the size a model was trained on with frcnn data tile).

    A Fast R-CNN detector trained on Selective Search proposals runs the
    search on each image; the seconds per image of the search and of the
    network are printed.

    Example: [bold]frcnn predict runs/a/model.pt demo/images --out preds/ --score-thresh 0.6[/]

    Example: [bold]frcnn predict runs/tiles/model.pt ortho.tif --out preds/ --tile 800[/]
    """
    from frcnn_cli.evaluation.predict import PredictArgs, run_predict
    from frcnn_cli.inference.tiled import tiling_from_options

    tiling = tiling_from_options(tile, overlap, tile_batch, max_detections, many_tiles)
    report = run_predict(PredictArgs(checkpoint, inputs, out, score_thresh, tiling, max_pixels,
                                     device, precision.value), console.reporter())
    if report is None:  # under torchrun, a process other than the main one
        return
    for source, reason in report.skipped:
        log.warning("skipped: %s", reason if str(source) in reason else f"{source}: {reason}")
    if tiling is not None:
        console.tiled_table(report.images, tiling, f"score >= {score_thresh:g}")
    console.info(f"{len(report.detections)} detections in {len(report.written)} image(s) "
                 f"-> {report.detections_file} and drawings in {out}")
    if report.skipped:
        log.warning("skipped %d unreadable image(s) of %d (listed above)", len(report.skipped),
                    report.jobs)
    console.proposal_timing(report.source)


def register(app: typer.Typer) -> None:
    app.command("predict", rich_help_panel=PANEL)(predict)
