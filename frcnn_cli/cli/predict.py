"""``frcnn predict``: detections on image files, drawn and saved as JSON."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from frcnn_cli.cli import console, options
from frcnn_cli.errors import DataError, InputError

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
    from frcnn_cli.evaluation.predict import describe_suffixes, find_images, plan_outputs
    from frcnn_cli.evaluation.tiled import tiling_from_options
    from frcnn_cli.files import prepare_output_dir, require_file
    from frcnn_cli.outputs import DETECTIONS, DRAWING

    tiling = tiling_from_options(tile, overlap, tile_batch, max_detections, many_tiles)
    require_file(checkpoint, "checkpoint")
    found = find_images(inputs, exclude=out)
    if not found:
        raise InputError(f"no images found in {', '.join(map(str, inputs))} (looked for "
                         f"{describe_suffixes()})")
    jobs = plan_outputs(found, out)
    prepare_output_dir(out, inputs, "--out folder", writes=[
        ("detections.json", DETECTIONS), *((job.output.relative_to(out), DRAWING) for job in jobs)])

    from frcnn_cli import load_model
    from frcnn_cli.cli.proposal_eval import timing
    from frcnn_cli.data.images import MAX_PIXELS
    from frcnn_cli.devices import autocast, resolve_device
    from frcnn_cli.evaluation.detections import save_detections
    from frcnn_cli.evaluation.predict import predict_files
    from frcnn_cli.proposals.sources import proposals_for

    torch_device = resolve_device(device)
    autocast(torch_device, precision.value)  # fp16 on a CPU is refused before any work
    model = load_model(checkpoint, device=torch_device)
    search = proposals_for(model)  # Selective Search for a detector trained on it, else None
    if tiling is not None and search is not None:
        raise InputError("--tile runs the model's own RPN on each tile; a detector on "
                         "Selective Search proposals cannot be tiled")
    report = predict_files(model, jobs, torch_device, score_thresh, console.reporter(),
                           precision=precision.value, proposals=search, tiling=tiling,
                           max_pixels=max_pixels or MAX_PIXELS)
    for source, reason in report.skipped:
        log.warning("skipped: %s", reason if str(source) in reason else f"{source}: {reason}")
    if not report.written:
        first = report.skipped[0][1] if report.skipped else "no image"
        raise DataError(f"none of the {len(jobs)} image(s) could be read ({first}); nothing "
                        "written")
    if tiling is not None:
        tiled_table(report.images, tiling, f"score >= {score_thresh:g}")
    dets_path = save_detections(out / "detections.json", report.detections)
    console.info(f"{len(report.detections)} detections in {len(report.written)} image(s) "
                 f"-> {dets_path} and drawings in {out}")
    if report.skipped:
        log.warning("skipped %d unreadable image(s) of %d (listed above)", len(report.skipped),
                    len(jobs))
    timing(search)


def tiled_table(images, tiling, kept: str, rows: int = 20) -> None:
    """One row per image (the first ``rows``): its size, tiles and detections (``kept``
    says which)."""
    from rich.markup import escape

    console.table(f"tiled: {tiling.size} px tiles, overlap {tiling.overlap:g}, at most "
                  f"{tiling.max_detections} detections per image",
                  ["image", "width", "height", "tiles", f"detections ({kept})"],
                  [[escape(r.name), r.width, r.height, r.tiles, r.detections]
                   for r in images[:rows]])
    if len(images) > rows:
        console.info(f"... and {len(images) - rows} more image(s): "
                     f"{sum(r.tiles for r in images[rows:])} tiles, "
                     f"{sum(r.detections for r in images[rows:])} detections")


def register(app: typer.Typer) -> None:
    app.command("predict", rich_help_panel=PANEL)(predict)
