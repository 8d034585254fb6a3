"""``frcnn eval``: VOC07, VOC and COCO mAP of a checkpoint or of a detections file, the RPN's
proposal recall, and proposal files compared by recall."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from frcnn_cli.cli import console, options
from frcnn_cli.errors import InputError

PANEL = "Evaluation"


class Metric(str, Enum):
    voc07 = "voc07"
    voc = "voc"
    coco = "coco"


def evaluate(
    checkpoint: Annotated[Optional[Path], typer.Argument(  # noqa: UP045 (Typer needs Optional)
        help="Model checkpoint (RUN/model.pt); leave out with --detections. With "
        "--compare-proposals: the first proposals file.", show_default=False)] = None,
    more_files: Annotated[Optional[list[Path]], typer.Argument(  # noqa: UP045
        help="With --compare-proposals: the other proposals files.", metavar="PROPOSALS",
        show_default=False)] = None,
    data: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--data", help="Dataset to evaluate on (COCO JSON).", dir_okay=False,
        show_default=False)] = None,
    detections: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--detections", help="Score these detections (COCO results JSON: image_id, "
        "category_id, bbox \\[x, y, w, h] in file pixels, score) instead of running a model.",
        dir_okay=False)] = None,
    metric: Annotated[Optional[Metric], typer.Option(  # noqa: UP045
        "--metric", "-m", help="voc07: 11-point AP at IoU 0.5 (the paper's); voc: area AP at "
        "IoU 0.5; coco: AP at IoU 0.5:0.95 by pycocotools. Default: the checkpoint recipe's "
        "eval.metric, voc07 for --detections.")] = None,
    json_out: options.JsonOut = None,
    plot: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--plot", help="Folder for PNG curves: precision-recall per class (pr_<class>.png, "
        "pr_all.png), or recall.png with --proposals.", file_okay=False)] = None,
    save_detections: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--save-detections", help="Also write the model's detections (COCO results JSON) to "
        "this file, for 'frcnn eval --detections' later.", dir_okay=False)] = None,
    proposals: Annotated[bool, typer.Option(
        "--proposals", help="Report the RPN's proposal recall at IoU 0.5 and 0.7 for the top "
        "300/1000/2000 proposals instead of mAP (the paper's Section 4); writes recall.json and "
        "recall.png (to --json and --plot, default: the checkpoint's folder).")] = False,
    proposal_file: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--proposal-file", help="Detect on this proposals file's boxes (frcnn propose, for "
        "this dataset) instead of the checkpoint's own proposals: its RPN's, or Selective "
        "Search run on each image for a detector trained on it.", dir_okay=False,
        show_default=False)] = None,
    compare_proposals: Annotated[bool, typer.Option(
        "--compare-proposals", help="Compare the proposals files given in place of the "
        "checkpoint (frcnn propose: RPN or Selective Search) by recall at IoU 0.5 and 0.7 and "
        "average recall for 100/300/1000/2000 per image; --json and --plot (recall_vs_iou.png, "
        "recall_vs_proposals.png) write them.")] = False,
    device: options.Device = "auto",
    precision: options.PrecisionOption = options.Precision.fp32,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "-b", min=1, help="Images per forward pass. One gives exactly the "
        "detections of predict, the Python API and the exported files; more is faster on a "
        "GPU, and images padded together may move detections near their bottom and right "
        "edges by a little.")] = 1,
    tile: options.Tile = None,
    overlap: options.Overlap = None,
    tile_batch: options.TileBatch = None,
    max_detections: options.MaxDetections = None,
    many_tiles: options.ManyTiles = False,
    ignore_dataset_mismatch: options.IgnoreDatasetMismatch = False,
    max_pixels: options.MaxPixels = None,
    analyze: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--analyze", help="Also say why the mAP is what it is, into this folder: TIDE's error "
        "types as dAP (errors.json), the confusion matrix at --score-thresh with precision, "
        "recall and F1 per class (confusion.json, confusion.png), and the images with the most "
        "errors drawn (images/).", file_okay=False, show_default=False)] = None,
    score_thresh: Annotated[Optional[float], typer.Option(  # noqa: UP045
        "--score-thresh", min=0.0, max=1.0, help="With --analyze: the score a deployment keeps "
        "detections at, for the confusion matrix and the drawings \\[default: 0.5].",
        show_default=False)] = None,
    max_dets: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--max-dets", min=1, help="COCO metric: the detections per image pycocotools scores "
        "\\[default: 100]; the model keeps roi_heads.detections_per_img first (--set it on the "
        "checkpoint's recipe to keep more).", show_default=False)] = None,
) -> None:
    """Evaluate a model (or saved detections) on a dataset: per-class AP and mAP.

    VOC metrics follow the devkit: detections by falling score, each matched
    to the highest-IoU object of its class; IoU > 0.5 counts; difficult and
    crowd objects are ignored; a second detection of an object is a false
    positive. Classes without objects show n/a and are left out of the mean.
    COCO numbers are pycocotools' own.

    Example: [bold]frcnn eval runs/a/model.pt --data demo/val.json --plot runs/a/plots[/]

    Example: [bold]frcnn eval --detections dets.json --data demo/val.json --metric coco[/]

    Example: [bold]frcnn eval runs/a/model.pt --data demo/val.json --analyze runs/a/why[/]

    Example: [bold]frcnn eval runs/a/model.pt --data demo/val.json --proposals[/]

    A Fast R-CNN detector trained on Selective Search proposals runs the
    search on each image (or reads --proposal-file); the seconds per image of
    the proposals and of the network are printed.

    Example: [bold]frcnn eval --data demo/val.json --compare-proposals ss.pt rpn.pt --plot p/[/]

    Example: [bold]frcnn eval runs/tiles/model.pt --data aerial/val.json --tile 800[/]
    """
    from frcnn_cli.evaluation.run import EvalArgs, run_eval
    from frcnn_cli.inference.tiled import tiling_from_options

    compare = [p for p in (checkpoint, *(more_files or [])) if p is not None]
    if more_files and not compare_proposals:
        raise InputError(f"eval takes one checkpoint (got {len(compare)} paths); proposal "
                         "files are compared with --compare-proposals")
    args = EvalArgs(
        data, None if compare_proposals else checkpoint, detections,
        metric.value if metric is not None else None, json_out, plot, save_detections,
        proposals, proposal_file, compare if compare_proposals else None,
        ignore_dataset_mismatch, device, precision.value, batch_size,
        tiling_from_options(tile, overlap, tile_batch, max_detections, many_tiles), max_pixels,
        analyze, score_thresh, max_dets)
    report = run_eval(args, console.reporter())
    if report is None:  # under torchrun, a process other than the main one
        return
    if report.comparison is not None:
        _comparison_tables(report.comparison, args.compare, report.data)
    elif report.recall is not None:
        _recall_table(report.recall, report.data)
    else:
        if report.tiled:
            console.tiled_table(report.tiled, args.tiling, f"score >= {report.score_thresh:g}")
        _result_tables(report.result, report.data)
        if report.analysis is not None:
            _analysis_tables(report.analysis)
        console.proposal_timing(report.source)
    if report.saved_detections is not None:
        console.info(f"saved {report.saved_detections} detections")
    _written(report.written)


def _written(paths: list[Path]) -> None:
    """Each file written, pictures counted by folder."""
    pictures: dict[Path, int] = {}
    for path in paths:
        if Path(path).suffix.lower() in (".png", ".jpg"):
            pictures[Path(path).parent] = pictures.get(Path(path).parent, 0) + 1
        else:
            console.info(f"wrote {path}")
    for folder, n in pictures.items():
        console.info(f"wrote {n} picture(s) in {folder}")


def _result_tables(result, data: Path) -> None:
    from frcnn_cli.evaluation.evaluate import METRIC_TITLES

    rows = [[name, result.objects.get(name, 0), result.detections.get(name, 0), ap]
            for name, ap in result.per_class.items()]
    scored = [ap for ap in result.per_class.values() if ap is not None]
    rows.append(["mAP", sum(result.objects.values()), sum(result.detections.values()),
                 result.mAP])
    console.table(f"{METRIC_TITLES[result.metric]} on {data} ({result.num_images} images)",
                  ["class", "objects", "detections", "AP"], rows)
    left_out = len(result.per_class) - len(scored)
    if left_out:
        console.info(f"{left_out} class(es) without objects show n/a and are left out of the "
                     f"mean of {len(scored)}")
    if result.metric == "coco":  # two rows of six fit an 80-column terminal
        for kind in ("AP", "AR"):
            names = [n for n in result.summary if n.startswith(kind)]
            console.table(f"COCO {kind} (pycocotools)", names,
                          [[result.summary[n] for n in names]])


def _analysis_tables(analysis) -> None:
    """TIDE's error table, the confusion matrix and each class at the score threshold."""
    errors, matrix = analysis.errors, analysis.confusion
    console.table(f"where the AP is lost (TIDE, AP50 {errors.ap50:.4f}): what fixing each "
                  "kind of error alone would add", ["error", "the detection", "dAP (points)",
                                                    "count"],
                  [[name, what, 100 * dap, n] for name, what, dap, n in analysis.error_rows()])
    header, rows = analysis.matrix_rows()
    console.table(f"confusion at score >= {matrix.score_thresh:g} (rows: truth, columns: "
                  "detections)", header, rows)
    console.table(f"each class at score >= {matrix.score_thresh:g}",
                  ["class", "precision", "recall", "F1", "best F1", "at score"],
                  [[name, c["precision"], c["recall"], c["f1"], c["best_f1"],
                    c["best_f1_thresh"]] for name, c in matrix.per_class().items()])
    for file, reason in analysis.skipped:
        console.info(("note:", "yellow"), f" not drawn: {file}: {reason}")
    if analysis.drawn:
        console.info(f"the {len(analysis.drawn)} images with the most errors are drawn in "
                     f"{analysis.drawn[0].drawing.parent}")


def _comparison_tables(comparison, files: list[Path], data: Path) -> None:
    summary = comparison.to_dict()
    names = [f.name for f in files]
    names = [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name
             for f in files]  # two files of one name: runs/a/p.pt, runs/b/p.pt
    counts = [str(n) for n in comparison.top_n]
    for key, title in (("0.5", "recall at IoU 0.5"), ("0.7", "recall at IoU 0.7"),
                       (None, "average recall, IoU 0.5:0.95")):
        rows = []
        for name, source in zip(names, summary["sources"], strict=True):
            values = source["recall"][key] if key else source["average_recall"]
            seconds = source["seconds_per_image"]
            rows.append([name, source["method"], *[values[n] for n in counts],
                         f"{seconds:.3g}" if seconds is not None else "n/a"])
        console.table(f"{title} on {data} ({summary['num_objects']} objects, "
                      f"{summary['num_images']} images), by proposals per image",
                      ["file", "method", *counts, "s/image"], rows)
    used = [f"{name} {source['proposals_per_image'][counts[-1]]:.0f}"
            for name, source in zip(names, summary["sources"], strict=True)]
    console.info(f"proposals per image at most (mean): {', '.join(used)}")


def _recall_table(rec, data: Path) -> None:
    rows = [[n, rec.recall_at(n, 0.5), rec.recall_at(n, 0.7), rec.average_recall[n],
             round(rec.mean_proposals[n])] for n in rec.top_n]
    console.table(f"RPN proposal recall on {data} ({rec.num_objects} objects, "
                  f"{rec.num_images} images)",
                  ["proposals", "recall@0.5", "recall@0.7", "AR@0.5:0.95", "per image"], rows)


def register(app: typer.Typer) -> None:
    app.command("eval", rich_help_panel=PANEL)(evaluate)
