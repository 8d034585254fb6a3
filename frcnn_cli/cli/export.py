"""``frcnn export``: ONNX and TorchScript files of a checkpoint, checked against PyTorch; with
``--svd``, of its head compressed by truncated SVD (also as a checkpoint), with the speed-up and
mAP change measured."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from frcnn_cli.cli import console
from frcnn_cli.export import DEFAULT_CALIB_IMAGES

PANEL = "Export and speed"


class Format(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    checkpoint = "checkpoint"


def export(
    checkpoint: Annotated[Path, typer.Argument(help="Model checkpoint (RUN/model.pt).",
                                               dir_okay=False, show_default=False)],
    fmt: Annotated[Format, typer.Option(
        "--format", "-f", help="onnx (onnxruntime), torchscript (torch.jit.load), or checkpoint "
        "(a .pt that eval, predict and benchmark load; needs --svd).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.", dir_okay=False,
                                      show_default=False)],
    opset: Annotated[Optional[int], typer.Option(  # noqa: UP045 (Typer needs Optional)
        "--opset", min=18, help="ONNX opset version (default 18; onnxruntime 1.32 runs 18 "
        "to 21 with RoI max pooling).")] = None,
    check_images: Annotated[Optional[list[Path]], typer.Option(  # noqa: UP045
        "--check-image", help="Compare on this image instead of two synthetic ones "
        "(repeatable).", dir_okay=False)] = None,
    check: Annotated[bool, typer.Option(
        "--check/--no-check", help="Run the written file on two images of different sizes and "
        "compare with the PyTorch model (same detections, boxes within 0.01 px, scores within "
        "0.001; with --int8, the same objects found, on dataset images); nothing is written "
        "if they disagree. --no-check: for timing untrained networks, whose near-tied scores "
        "make any comparison meaningless.")] = True,
    int8: Annotated[bool, typer.Option(
        "--int8", help="ONNX with INT8 weights and activations (onnxruntime static "
        "quantization, QDQ, weights per channel), calibrated on --calibrate's images.")] = False,
    calibrate: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--calibrate", metavar="ANN.json", help="With --int8: the dataset (COCO JSON) whose "
        "images calibrate the activation ranges: your own data, as the model will see it.",
        dir_okay=False, show_default=False)] = None,
    calib_images: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--calib-images", min=1, metavar="N", help="With --int8: how many images of "
        f"--calibrate, spread evenly over its order (default {DEFAULT_CALIB_IMAGES}).",
        show_default=False)] = None,
    svd: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--svd", min=1, metavar="K", help="Truncated SVD of the head (Fast R-CNN Section 3.1): "
        "fc6 and fc7 each become two thinner layers of rank K; prints the head's speed-up. "
        "VGG16 and tiny heads only.", show_default=False)] = None,
    svd_fc7: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--svd-fc7", min=0, metavar="K", help="fc7's own rank with --svd (the paper: --svd 1024 "
        "--svd-fc7 256 for VGG16); 0 keeps fc7 whole.", show_default=False)] = None,
    data: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--data", help="With --svd: evaluate both models on this dataset (COCO JSON; the "
        "recipe's eval.metric) and print the mAP change.", dir_okay=False,
        show_default=False)] = None,
    device: Annotated[str, typer.Option(
        "--device", "-d", help="With --svd: where to time the head and run --data (cpu, cuda, "
        "cuda:N); the export itself runs on the CPU.")] = "cpu",
) -> None:
    """Export a checkpoint to ONNX or TorchScript, for images of any size.

    The whole detector (resize, normalisation, backbone, RPN with its NMS,
    RoI pooling, head, postprocess) is one graph for one [3, H, W] float
    image in 0..1 of any size, giving boxes (x1 y1 x2 y2 in the input's
    pixels), scores and labels; class names travel in the file's metadata
    (ONNX metadata_props; TorchScript extra file frcnn.json).

    Before writing, the file runs (onnxruntime or torch.jit) and is compared
    with the PyTorch model; if they disagree nothing is written and the
    command exits with 1 (a defect, not a usage error). Everything runs on
    the CPU.

    With --svd K, fc6 and fc7 are first replaced by truncated SVDs of rank K
    (fewer multiply-adds per RoI); the command times both heads on the
    recipe's test RoI count, prints the speed-up and parameter counts, with
    --data also both models' mAP, then exports the compressed model. Its
    --format checkpoint loads wherever a checkpoint does (the ranks are in its
    recipe: model.svd_fc6, model.svd_fc7).

    With --int8 (ONNX only), the file's convolutions and fc6/fc7 run in INT8
    on onnxruntime, calibrated on --calib-images images of --calibrate's
    dataset; the RPN's 1x1 convs and the class and box layers stay fp32. Its
    check compares with the PyTorch model by objects on dataset images the
    calibration did not use: confident detections found by both, their IoU
    and score differences, within tolerances INT8 meets. The file records
    that it is INT8 and what it was calibrated on.

    Example: [bold]frcnn export runs/a/model.pt --format onnx --out model.onnx[/]

    Example: [bold]frcnn export runs/a/model.pt --format onnx --int8 --calibrate
    train.json --out model-int8.onnx[/]

    Example: [bold]frcnn export runs/a/model.pt --svd 1024 --svd-fc7 256 --data val.json
    --format checkpoint --out runs/a/model-svd.pt[/]
    """
    from frcnn_cli.export.run import CheckFailed, ExportArgs, run_export

    args = ExportArgs(checkpoint, fmt.value, out, opset, list(check_images or []), check, int8,
                      calibrate, calib_images, svd, svd_fc7, data, device)
    try:
        report = run_export(args, console.reporter())
    except CheckFailed as failed:
        _print_checks(failed.report, fmt)
        raise
    console.info(f"{checkpoint}: recipe {report.recipe}, {report.backbone}, {report.classes} "
                 "classes")
    if report.svd is not None:
        _print_svd(report.svd, report.svd_data)
    if report.calibration_set:
        console.info(f"quantized to INT8, calibrated on {report.calibrated} of the "
                     f"{report.calibration_set} images of {calibrate}")
    _print_checks(report, fmt)
    if not report.checked:
        console.info(("not checked", "yellow"), " (--no-check): the file was not compared "
                     "with the PyTorch model")
    ranks = (f"; its recipe has model.svd_fc6={report.svd_ranks[0]}, "
             f"model.svd_fc7={report.svd_ranks[1]}" if fmt is Format.checkpoint else "")
    console.info(("wrote", "bold green"), f" {out} ({report.size / 2**20:.1f} MiB{ranks})")


def _print_checks(report, fmt: Format) -> None:
    """The exported file against PyTorch: per image (fp32), and by objects (INT8)."""
    if report.agreement:
        what = "the fp32 ONNX file" if report.int8 is not None else f"the {fmt.value} file"
        _print_agreement(report.agreement, f"{what} against PyTorch")
        if not any(r.detections for r in report.agreement):
            console.info(("note:", "yellow"), " the model detects nothing in these images, so "
                         "only the empty case was compared; pass --check-image with pictures of "
                         "its classes")
    if report.int8 is not None:
        _print_int8(report.int8)
        if not report.int8.confident:
            console.info(("note:", "yellow"), " the model detects nothing confidently on the "
                         "check images, so the INT8 check compared nothing; pass --check-image "
                         "with pictures of its classes")


def _print_agreement(results, title: str) -> None:
    console.table(title, ["image", "size", "PyTorch", "exported", "box diff (px)",
                          "score diff", "agree"],
                  [[r.image, f"{r.height}x{r.width}", r.detections, r.exported,
                    f"{r.max_box_diff:.2g}", f"{r.max_score_diff:.2g}",
                    "yes" if r.ok else ("NO", "bold red")] for r in results])


def _print_int8(agreement) -> None:
    console.table("the INT8 file against PyTorch fp32, by objects (scores >= 0.5)",
                  ["image", "size", "confident", "found by both", "mean IoU",
                   "max score diff"],
                  [[Path(c.image).name, f"{c.height}x{c.width}", c.confident, c.paired,
                    f"{c.iou_sum / c.pairs:.3f}" if c.pairs else "-",
                    f"{c.max_score_diff:.3f}"] for c in agreement.images])
    console.info(("agree" if agreement.ok else ("DISAGREE", "bold red")),
                 f": {agreement.describe()}")


def _print_svd(report, ann) -> None:
    """The layer table, the notes on ranks that save nothing, the head table, the mAP change."""
    console.table("Truncated SVD (Fast R-CNN Section 3.1)",
                  ["layer", "weight", "rank", "parameters", "after", "relative error"],
                  [[x.name, f"{x.out_features} x {x.in_features}", x.rank,
                    f"{x.parameters / 1e6:.2f} M", f"{x.parameters_svd / 1e6:.2f} M",
                    f"{x.relative_error:.3f}"] for x in report.layers])
    for x in report.layers:
        if x.rank >= x.break_even:
            console.info(("note:", "yellow"), f" {x.name} at rank {x.rank} has as many weights as "
                         f"the full layer or more; it saves work only below rank "
                         f"{x.break_even}")
    timing = report.timing
    rows = [[name, f"{report.parameters[key] / 1e6:.2f} M",
             f"{timing.median(key) * 1000:.2f}", f"{timing.speedup(key, 'full'):.2f}x"]
            for name, key in (("original", "full"), ("SVD", "svd"))]
    columns = ["model", "head parameters", "head ms", "speed-up"]
    if report.metric is not None:
        for row, key in zip(rows, ("full", "svd"), strict=True):
            value = report.maps[key]
            row.append(f"{value:.4f}" if value is not None else "n/a")
        columns.append(f"{report.metric} mAP")
    console.table(f"fc6+fc7 on {timing.rois} RoIs ({timing.device}, median of "
                  f"{len(timing.runs['full'])} interleaved runs)", columns, rows)
    if report.metric is not None:
        change = report.map_change
        console.info(f"mAP change: {change:+.4f} on {ann.path} ({len(ann.images)} images)"
                     if change is not None else "mAP change: n/a (no objects to score)")


def register(app: typer.Typer) -> None:
    app.command("export", rich_help_panel=PANEL)(export)
