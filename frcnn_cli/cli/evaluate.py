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
) -> None:
    """Evaluate a model (or saved detections) on a dataset: per-class AP and mAP.

    VOC metrics follow the devkit: detections by falling score, each matched
    to the highest-IoU object of its class; IoU > 0.5 counts; difficult and
    crowd objects are ignored; a second detection of an object is a false
    positive. Classes without objects show n/a and are left out of the mean.
    COCO numbers are pycocotools' own.

    Example: [bold]frcnn eval runs/a/model.pt --data demo/val.json --plot runs/a/plots[/]

    Example: [bold]frcnn eval --detections dets.json --data demo/val.json --metric coco[/]

    Example: [bold]frcnn eval runs/a/model.pt --data demo/val.json --proposals[/]

    A Fast R-CNN detector trained on Selective Search proposals runs the
    search on each image (or reads --proposal-file); the seconds per image of
    the proposals and of the network are printed.

    Example: [bold]frcnn eval --data demo/val.json --compare-proposals ss.pt rpn.pt --plot p/[/]

    Example: [bold]frcnn eval runs/tiles/model.pt --data aerial/val.json --tile 800[/]
    """
    from frcnn_cli.evaluation.tiled import tiling_from_options
    from frcnn_cli.files import prepare_output_dir, prepare_output_file, require_file
    from frcnn_cli.outputs import DETECTIONS, EVAL_RESULT, PLOT, RECALL_RESULT

    tiling = tiling_from_options(tile, overlap, tile_batch, max_detections, many_tiles)
    if tiling is not None and (detections is not None or proposals):
        raise InputError(f"--tile runs the model's detector; drop "
                         f"{'--detections' if detections is not None else '--proposals'}")
    if detections is not None and max_pixels is not None:
        raise InputError("--max-pixels caps the images the model runs on; --detections runs "
                         "none")
    if tiling is not None and batch_size != 1:
        raise InputError("with --tile, --tile-batch sets the tiles per forward pass; drop "
                         "--batch-size")

    if data is None:
        raise InputError("eval needs --data ANN.json, the dataset to evaluate on")
    if ignore_dataset_mismatch and not (compare_proposals or proposal_file is not None):
        raise InputError("--ignore-dataset-mismatch applies to proposal files: "
                         "--proposal-file or --compare-proposals")
    if compare_proposals:
        from frcnn_cli.cli.proposal_eval import compare

        given = [flag for flag, v in (("--detections", detections), ("--metric", metric),
                                      ("--save-detections", save_detections),
                                      ("--proposals", proposals),
                                      ("--proposal-file", proposal_file),
                                      ("--precision", precision is not options.Precision.fp32),
                                      ("--tile", tiling is not None))
                 if v]
        if given:
            raise InputError(f"--compare-proposals compares proposal files; drop "
                             f"{', '.join(given)}")
        compare([p for p in (checkpoint, *(more_files or [])) if p is not None], data,
                json_out, plot, ignore_dataset_mismatch)
        return
    if more_files:
        raise InputError(f"eval takes one checkpoint (got {1 + len(more_files)} paths); "
                         "proposal files are compared with --compare-proposals")
    if proposal_file is not None and (checkpoint is None or proposals):
        raise InputError("--proposal-file gives a checkpoint's detector its proposals: "
                         + ("give the checkpoint" if checkpoint is None else
                            "drop --proposals (compare proposal files with "
                            "--compare-proposals)"))
    if (checkpoint is None) == (detections is None):
        raise InputError("give a checkpoint or --detections DETS.json (exactly one of them)")
    if detections is not None and (proposals or save_detections is not None
                                   or precision is not options.Precision.fp32):
        flag = ("--proposals" if proposals else "--save-detections"
                if save_detections is not None else "--precision")
        raise InputError(f"{flag} needs a checkpoint: it runs the model")
    if proposals and save_detections is not None:
        raise InputError("--proposals runs only the RPN; drop --save-detections")
    if proposals and metric is not None:
        raise InputError("--proposals reports recall, not a detection metric; drop --metric")

    require_file(data, "dataset")
    inputs = [p for p in (checkpoint, data, detections, proposal_file) if p is not None]
    if checkpoint is not None:
        require_file(checkpoint, "checkpoint")
    if proposal_file is not None:
        require_file(proposal_file, "--proposal-file")
    if proposals:
        folder = checkpoint.parent
        json_out = json_out or folder / "recall.json"
        png = (plot or folder) / "recall.png"
        prepare_output_file(json_out, RECALL_RESULT, inputs, "--json file")
        prepare_output_file(png, PLOT, inputs, "recall plot")
    else:
        if json_out is not None:
            prepare_output_file(json_out, EVAL_RESULT, inputs, "--json file")
        if save_detections is not None:
            prepare_output_file(save_detections, DETECTIONS, inputs, "--save-detections file")
        if plot is not None:
            prepare_output_dir(plot, inputs, "--plot folder")

    from frcnn_cli.data.usable import open_dataset

    if checkpoint is not None:  # a broken checkpoint is named before any image is read
        from frcnn_cli.checkpoint import load_checkpoint

        load_checkpoint(checkpoint)
    ann = open_dataset(data, "eval" if detections is None else "score")
    # the dataset's images are inputs too: no output may replace one
    for path, kind, what in ((json_out, RECALL_RESULT if proposals else EVAL_RESULT,
                              "--json file"),
                             (save_detections, DETECTIONS, "--save-detections file")):
        if path is not None:
            prepare_output_file(path, kind, ann.image_files(), what)
    if plot is not None and not proposals:
        from frcnn_cli.evaluation.evaluate import class_names
        from frcnn_cli.evaluation.plots import pr_plot_names

        prepare_output_dir(plot, inputs, "--plot folder",
                           writes=[(n, PLOT) for n in pr_plot_names(class_names(ann))])
    if detections is not None:
        from frcnn_cli.evaluation.detections import read_detections
        from frcnn_cli.evaluation.evaluate import evaluate_detections

        dets = read_detections(detections, ann)
        result = evaluate_detections(ann, dets, (metric or Metric.voc07).value,
                                     source=str(detections))
        _report(result, data, json_out, plot)
        return

    from frcnn_cli import load_model
    from frcnn_cli.data.images import MAX_PIXELS
    from frcnn_cli.devices import autocast, resolve_device

    torch_device = resolve_device(device)
    autocast(torch_device, precision.value)  # fp16 on a CPU is refused before any work
    model = load_model(checkpoint, device=torch_device)
    if proposals and model.proposal_source:
        raise InputError(f"{checkpoint} is a Fast R-CNN detector trained on "
                         f"{model.proposal_source['method']} proposals, without a trained RPN "
                         "to measure; compare proposal files with --compare-proposals")
    if tiling is not None and (model.proposal_source or proposal_file is not None):
        raise InputError("--tile runs the model's own RPN on each tile; a detector on external "
                         "proposals (or --proposal-file) cannot be tiled")
    max_pixels = max_pixels or MAX_PIXELS
    if proposals:
        from frcnn_cli.evaluation.inference import evaluate_proposals
        from frcnn_cli.evaluation.plots import plot_recall_curve
        from frcnn_cli.files import write_result
        from frcnn_cli.outputs import RECALL_RESULT

        rec = evaluate_proposals(model, ann, torch_device, console.reporter(), batch_size,
                                 precision=precision.value, max_pixels=max_pixels)
        _recall_table(rec, data)
        write_result(json_out, RECALL_RESULT, {"checkpoint": str(checkpoint), "data": str(data),
                              **rec.to_dict()})
        plot_recall_curve(rec, png)
        console.info(f"wrote {json_out} and {png}")
        return

    from frcnn_cli.cli.proposal_eval import timing
    from frcnn_cli.evaluation.detections import save_detections as write_detections
    from frcnn_cli.evaluation.inference import evaluate_model
    from frcnn_cli.proposals.sources import proposals_for

    chosen = metric.value if metric is not None else model.recipe.eval.metric
    dets: list = []
    source = proposals_for(model, proposal_file, ann, ignore_dataset_mismatch)
    tiled: list = []
    result = evaluate_model(model, ann, chosen, torch_device, console.reporter(), batch_size,
                            detections=dets, precision=precision.value, proposals=source,
                            tiling=tiling, max_pixels=max_pixels, tiled_images=tiled)
    if tiling is not None:
        from frcnn_cli.cli.predict import tiled_table

        tiled_table(tiled, tiling,
                    f"score >= {model.recipe.roi_heads.score_thresh:g}")
    if save_detections is not None:
        write_detections(save_detections, dets)
        console.info(f"wrote {len(dets)} detections to {save_detections}")
    _report(result, data, json_out, plot)
    timing(source)


def _report(result, data: Path, json_out: Path | None, plot: Path | None) -> None:
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
    if json_out is not None:
        from frcnn_cli.files import write_result
        from frcnn_cli.outputs import EVAL_RESULT

        write_result(json_out, EVAL_RESULT, result.to_dict())
        console.info(f"wrote {json_out}")
    if plot is not None:
        from frcnn_cli.evaluation.plots import plot_pr_curves

        written = plot_pr_curves(result, plot)
        console.info(f"wrote {len(written)} precision-recall plots to {plot}")


def _recall_table(rec, data: Path) -> None:
    rows = [[n, rec.recall_at(n, 0.5), rec.recall_at(n, 0.7), rec.average_recall[n],
             round(rec.mean_proposals[n])] for n in rec.top_n]
    console.table(f"RPN proposal recall on {data} ({rec.num_objects} objects, "
                  f"{rec.num_images} images)",
                  ["proposals", "recall@0.5", "recall@0.7", "AR@0.5:0.95", "per image"], rows)


def register(app: typer.Typer) -> None:
    app.command("eval", rich_help_panel=PANEL)(evaluate)
