"""``frcnn export`` as one library call.

    report = run_export(ExportArgs("runs/a/model.pt", "onnx", "model.onnx"))

:func:`run_export` checks the arguments and the output before any slow work, loads the
checkpoint, compresses its head (``--svd``), writes an ONNX or TorchScript file (INT8 with
``--int8``, calibrated on the user's images) after comparing it with the PyTorch model, or the
compressed checkpoint, and returns what there is to print. A failed comparison raises
:class:`CheckFailed` (an ExportError, exit 1) carrying the report so far: nothing is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frcnn_cli.errors import ExportError, InputError
from frcnn_cli.export import DEFAULT_CALIB_IMAGES
from frcnn_cli.progress import SILENT, Reporter

PathLike = str | os.PathLike
FORMATS = ("onnx", "torchscript", "checkpoint")


@dataclass
class ExportArgs:
    """What ``frcnn export`` was asked (the options of its ``--help``)."""

    checkpoint: PathLike
    fmt: str
    out: PathLike
    opset: int | None = None
    check_images: list[PathLike] = field(default_factory=list)
    check: bool = True
    int8: bool = False
    calibrate: PathLike | None = None
    calib_images: int | None = None
    svd: int | None = None
    svd_fc7: int | None = None
    data: PathLike | None = None
    device: str = "cpu"

    def refuse_conflicts(self) -> None:
        """InputError for options that do not go together, and inputs that are missing."""
        from frcnn_cli.files import require_file

        require_file(self.checkpoint, "checkpoint")
        onnx, checkpoint = self.fmt == "onnx", self.fmt == "checkpoint"
        refusals = [
            (self.opset is not None and not onnx, "--opset is for --format onnx"),
            (self.check_images and not self.check,
             "--check-image and --no-check exclude each other"),
            (checkpoint and self.check_images, "--check-image compares an ONNX or TorchScript "
             "file; a checkpoint is the PyTorch model itself"),
            (self.svd is None and self.svd_fc7 is not None, "--svd-fc7 goes with --svd K"),
            (self.svd is None and self.data is not None, "--data goes with --svd K"),
            (self.svd is None and checkpoint,
             "--format checkpoint writes a compressed checkpoint: give --svd K"),
            (self.int8 and not onnx, "--int8 writes an ONNX file (onnxruntime runs its INT8 "
             "layers): give --format onnx"),
            (self.int8 and self.calibrate is None, "--int8 needs --calibrate ANN.json: the "
             "images of your data set the INT8 ranges"),
            (not self.int8 and (self.calibrate is not None or self.calib_images is not None),
             "--calibrate and --calib-images go with --int8")]
        for refused, message in refusals:
            if refused:
                raise InputError(message)
        for image in self.check_images:
            require_file(image, "--check-image")
        for path, what in ((self.data, "dataset"), (self.calibrate, "--calibrate dataset")):
            if path is not None:
                require_file(path, what)


@dataclass
class ExportReport:
    """What :func:`run_export` did: the model's ``recipe``, ``backbone`` and ``classes``;
    ``svd`` (the compression report) and the ``svd_data`` it was scored on; the exported
    file's check against PyTorch (``agreement``: one row per image; with ``--int8`` the fp32
    file's, and ``int8``, by objects); how many images ``calibrated`` it out of the set's
    ``calibration_set``; the file written and its ``size``."""

    recipe: str = ""
    backbone: str = ""
    classes: int = 0
    svd: Any = None
    svd_data: Any = None
    agreement: list = field(default_factory=list)
    int8: Any = None
    calibrated: int = 0
    calibration_set: int = 0
    checked: bool = True
    out: Path | None = None
    size: int = 0
    svd_ranks: tuple[int | None, int | None] = (None, None)


class CheckFailed(ExportError):
    """The written file did not detect what the model detects; ``report`` holds the check."""

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


def run_export(args: ExportArgs, reporter: Reporter = SILENT) -> ExportReport:
    """Run ``frcnn export`` as ``args`` says; see the module doc."""
    from frcnn_cli import load_model
    from frcnn_cli.files import prepare_output_file
    from frcnn_cli.outputs import EXPORT_KINDS

    if args.fmt not in FORMATS:
        raise InputError(f"unknown format '{args.fmt}'; use {', '.join(FORMATS)}")
    args.refuse_conflicts()
    kind = EXPORT_KINDS[args.fmt]
    inputs = [args.checkpoint, *args.check_images,
              *(p for p in (args.data, args.calibrate) if p)]
    prepare_output_file(args.out, kind, inputs, "--out file")
    model = load_model(args.checkpoint)
    if args.fmt != "checkpoint":  # before any slow work
        from frcnn_cli.export.capture import check_one_graph

        check_one_graph(model, str(args.checkpoint))
    report = ExportReport(model.recipe.name, model.recipe.model.backbone, model.num_classes,
                          checked=args.check, out=Path(args.out))
    if args.svd is not None:
        model = _compress(model, args, kind, report, reporter)
    if args.fmt == "checkpoint":  # with --svd, checked above
        from frcnn_cli.export.svd import save_compressed

        report.size = save_compressed(model, args.checkpoint, args.out).stat().st_size
        report.svd_ranks = (model.recipe.model.svd_fc6, model.recipe.model.svd_fc7)
        return report
    blob = _exported(model, args, kind, report)
    from frcnn_cli.files import atomic_open

    with atomic_open(args.out, "wb") as f:
        f.write(blob)
    report.size = len(blob)
    return report


def _compress(model, args: ExportArgs, kind, report: ExportReport, reporter: Reporter):
    """fc6/fc7 by truncated SVD, the head timed (with ``--data`` both models scored)."""
    from frcnn_cli.devices import resolve_device
    from frcnn_cli.export import svd as truncated

    fc7 = args.svd if args.svd_fc7 is None else args.svd_fc7
    truncated.check_ranks(model, args.svd, fc7)  # before any slow work
    device = resolve_device(args.device)
    if args.data is not None:
        from frcnn_cli.data.usable import open_dataset
        from frcnn_cli.files import prepare_output_file

        report.svd_data = open_dataset(args.data, "eval")
        prepare_output_file(args.out, kind, report.svd_data.image_files(), "--out file")
    model, report.svd = truncated.compress_and_measure(model, args.svd, fc7, report.svd_data,
                                                       device, reporter)
    return model


def _exported(model, args: ExportArgs, kind, report: ExportReport) -> bytes:
    """The ONNX or TorchScript file's bytes, checked (unless ``--no-check``)."""
    from frcnn_cli.export import export_bytes, load_exported

    extra: dict[str, Any] = {"checkpoint": Path(args.checkpoint).name}
    if args.svd is not None:  # the file says its head is an approximation
        extra["svd"] = {"fc6": model.recipe.model.svd_fc6, "fc7": model.recipe.model.svd_fc7}
    if args.int8:
        return _int8(model, args, kind, report, extra)
    blob = export_bytes(model, args.fmt, args.opset, **extra)
    if args.check:
        from frcnn_cli.export import verify

        report.agreement = verify.check_export(model, load_exported(args.fmt, blob),
                                               verify.check_images(args.check_images))
        bad = [r for r in report.agreement if not r.ok]
        if bad:
            r = bad[0]
            raise CheckFailed(f"the {args.fmt} file disagrees with the PyTorch model on "
                              f"{r.image} ({r.exported} vs {r.detections} detections, "
                              f"{r.unmatched} unmatched, box diff {r.max_box_diff:.3g} px, "
                              f"score diff {r.max_score_diff:.3g}); nothing written", report)
    return blob


def _int8(model, args: ExportArgs, kind, report: ExportReport, extra: dict) -> bytes:
    """The INT8 file, calibrated on ``--calibrate``'s images and checked by objects."""
    from frcnn_cli.data.usable import open_dataset
    from frcnn_cli.export.int8 import export_int8
    from frcnn_cli.files import prepare_output_file

    ann = open_dataset(args.calibrate, "eval")
    prepare_output_file(args.out, kind, ann.image_files(), "--out file")
    count = args.calib_images or DEFAULT_CALIB_IMAGES
    result = export_int8(model, ann, count, check=args.check,
                         check_paths=[str(p) for p in args.check_images], opset=args.opset,
                         **extra)
    report.calibrated = len(result.calibration.image_ids)
    report.calibration_set = len(ann.images)
    if not args.check:
        return result.data
    report.agreement, report.int8 = result.fp32_check, result.int8_check
    bad = [r for r in result.fp32_check if not r.ok]
    if bad:
        raise CheckFailed(f"the fp32 ONNX file disagrees with the PyTorch model on "
                          f"{bad[0].image}; nothing written", report)
    if not result.int8_check.ok:
        raise CheckFailed(f"the INT8 file does not detect what the model detects: "
                          f"{result.int8_check.describe()}; nothing written", report)
    return result.data
