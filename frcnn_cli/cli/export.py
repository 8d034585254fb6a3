"""``frcnn export``: ONNX and TorchScript files of a checkpoint, checked against PyTorch."""

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


def export(
    checkpoint: Annotated[Path, typer.Argument(help="Model checkpoint (RUN/model.pt).",
                                               dir_okay=False, show_default=False)],
    fmt: Annotated[Format, typer.Option(
        "--format", "-f", help="onnx (onnxruntime) or torchscript (torch.jit.load).",
        show_default=False)],
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

    Example: [bold]frcnn export runs/a/model.pt --format onnx --out model.onnx[/]
    """
    from frcnn_cli.files import prepare_output_file, require_file

    require_file(checkpoint, "checkpoint")
    if opset is not None and fmt is not Format.onnx:
        raise InputError("--opset is for --format onnx")
    if check_images and not check:
        raise InputError("--check-image and --no-check exclude each other")
    for image in check_images or []:
        require_file(image, "--check-image")
    prepare_output_file(out, [checkpoint, *(check_images or [])], "--out file")

    from frcnn_cli import load_model

    model = load_model(checkpoint)
    console.info(f"{checkpoint}: recipe {model.recipe.name}, {model.recipe.model.backbone}, "
                 f"{model.num_classes} classes")

    from frcnn_cli.export import export_bytes, load_exported

    name = {"onnx": f"ONNX (opset {opset or 18})", "torchscript": "TorchScript"}[fmt.value]
    console.info(f"exporting to {name} ...")
    blob = export_bytes(model, fmt.value, opset, checkpoint=checkpoint.name)
    if check:
        _check(model, load_exported(fmt.value, blob), check_images, f"the {name} file")
    from frcnn_cli.files import atomic_open

    with atomic_open(out, "wb") as f:
        f.write(blob)
    console.info(f"[bold green]wrote[/] {out} ({len(blob) / 2**20:.1f} MiB)")


def _check(model, run, check_images: list[Path] | None, what: str) -> None:
    """Compare ``run`` with ``model`` and print the table; raise ExportError if they differ."""
    from frcnn_cli.export import verify
    from frcnn_cli.export.capture import ExportError

    results = verify.check_export(model, run, verify.check_images(check_images or []))
    console.table(f"{what} against PyTorch", ["image", "size", "PyTorch", "exported",
                                              "box diff (px)", "score diff", "agree"],
                  [[r.image, f"{r.height}x{r.width}", r.detections, r.exported,
                    f"{r.max_box_diff:.2g}", f"{r.max_score_diff:.2g}",
                    "yes" if r.ok else "[bold red]NO[/]"] for r in results])
    bad = [r for r in results if not r.ok]
    if bad:
        r = bad[0]
        raise ExportError(f"{what} disagrees with the PyTorch model on {r.image} "
                          f"({r.exported} vs {r.detections} detections, {r.unmatched} "
                          f"unmatched, box diff {r.max_box_diff:.3g} px, score diff "
                          f"{r.max_score_diff:.3g}); nothing written")
    if not any(r.detections for r in results):
        console.info("[yellow]note:[/] the model detects nothing in these images, so only the "
                     "empty case was compared; pass --check-image with pictures of its classes")


def register(app: typer.Typer) -> None:
    app.command("export", rich_help_panel=PANEL)(export)
