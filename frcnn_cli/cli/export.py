"""``frcnn export``: ONNX and TorchScript files of a checkpoint, checked against PyTorch; with
``--svd``, of its head compressed by truncated SVD (also as a checkpoint), with the speed-up and
mAP change measured."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from frcnn_cli.cli import console
from frcnn_cli.errors import InputError

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
        "0.001); nothing is written if they disagree.")] = True,
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

    Example: [bold]frcnn export runs/a/model.pt --format onnx --out model.onnx[/]

    Example: [bold]frcnn export runs/a/model.pt --svd 1024 --svd-fc7 256 --data val.json
    --format checkpoint --out runs/a/model-svd.pt[/]
    """
    from frcnn_cli.files import prepare_output_file, require_file
    from frcnn_cli.outputs import EXPORT_KINDS

    kind = EXPORT_KINDS[fmt.value]

    require_file(checkpoint, "checkpoint")
    if opset is not None and fmt is not Format.onnx:
        raise InputError("--opset is for --format onnx")
    if check_images and not check:
        raise InputError("--check-image and --no-check exclude each other")
    if fmt is Format.checkpoint and check_images:
        raise InputError("--check-image compares an ONNX or TorchScript file; a checkpoint is "
                         "the PyTorch model itself")
    if svd is None:
        for flag, value in (("--svd-fc7", svd_fc7), ("--data", data)):
            if value is not None:
                raise InputError(f"{flag} goes with --svd K")
        if fmt is Format.checkpoint:
            raise InputError("--format checkpoint writes a compressed checkpoint: give --svd K")
    for image in check_images or []:
        require_file(image, "--check-image")
    if data is not None:
        require_file(data, "dataset")
    inputs = [checkpoint, *(check_images or []), *([data] if data else [])]
    prepare_output_file(out, kind, inputs, "--out file")

    from frcnn_cli import load_model

    model = load_model(checkpoint)
    if fmt is not Format.checkpoint:  # before any slow work
        from frcnn_cli.export.capture import check_one_graph

        check_one_graph(model, str(checkpoint))
    console.info(f"{checkpoint}: recipe {model.recipe.name}, {model.recipe.model.backbone}, "
                 f"{model.num_classes} classes")
    if svd is not None:
        from frcnn_cli.devices import resolve_device
        from frcnn_cli.export import svd as truncated

        fc7 = svd if svd_fc7 is None else svd_fc7
        truncated.check_ranks(model, svd, fc7)  # before any slow work
        torch_device = resolve_device(device)
        ann = None
        if data is not None:
            from frcnn_cli.data.usable import open_dataset

            ann = open_dataset(data, "eval")
            prepare_output_file(out, kind, ann.image_files(), "--out file")
        console.info(f"truncated SVD of fc6 (rank {svd})"
                     + (f" and fc7 (rank {fc7})" if fc7 else "") + " ...")
        model, report = truncated.compress_and_measure(model, svd, fc7, ann, torch_device,
                                                       console.reporter())
        _print_svd(report, ann)
    if fmt is Format.checkpoint:  # with --svd, checked above
        size = truncated.save_compressed(model, checkpoint, out).stat().st_size
        m = model.recipe.model
        console.info(("wrote", "bold green"), f" {out} ({size / 2**20:.1f} MiB; its recipe has "
                     f"model.svd_fc6={m.svd_fc6}, model.svd_fc7={m.svd_fc7})")
        return

    from frcnn_cli.export import export_bytes, load_exported

    name = {"onnx": f"ONNX (opset {opset or 18})", "torchscript": "TorchScript"}[fmt.value]
    console.info(f"exporting to {name} ...")
    extra = {"checkpoint": checkpoint.name}
    if svd is not None:  # the file says its head is an approximation
        extra["svd"] = {"fc6": model.recipe.model.svd_fc6, "fc7": model.recipe.model.svd_fc7}
    blob = export_bytes(model, fmt.value, opset, **extra)
    if check:
        _check(model, load_exported(fmt.value, blob), check_images, f"the {name} file")
    from frcnn_cli.files import atomic_open

    with atomic_open(out, "wb") as f:
        f.write(blob)
    console.info(("wrote", "bold green"), f" {out} ({len(blob) / 2**20:.1f} MiB)")


def _check(model, run, check_images: list[Path] | None, what: str) -> None:
    """Compare ``run`` with ``model`` and print the table; raise ExportError if they differ."""
    from frcnn_cli.export import verify
    from frcnn_cli.export.capture import ExportError

    results = verify.check_export(model, run, verify.check_images(check_images or []))
    console.table(f"{what} against PyTorch", ["image", "size", "PyTorch", "exported",
                                              "box diff (px)", "score diff", "agree"],
                  [[r.image, f"{r.height}x{r.width}", r.detections, r.exported,
                    f"{r.max_box_diff:.2g}", f"{r.max_score_diff:.2g}",
                    "yes" if r.ok else ("NO", "bold red")] for r in results])
    bad = [r for r in results if not r.ok]
    if bad:
        r = bad[0]
        raise ExportError(f"{what} disagrees with the PyTorch model on {r.image} "
                          f"({r.exported} vs {r.detections} detections, {r.unmatched} "
                          f"unmatched, box diff {r.max_box_diff:.3g} px, score diff "
                          f"{r.max_score_diff:.3g}); nothing written")
    if not any(r.detections for r in results):
        console.info(("note:", "yellow"), " the model detects nothing in these images, so only the "
                     "empty case was compared; pass --check-image with pictures of its classes")


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
