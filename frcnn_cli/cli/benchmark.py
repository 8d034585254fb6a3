"""``frcnn benchmark``: inference latency per stage, FLOPs and memory, against torchvision."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from frcnn_cli.cli import console, options
from frcnn_cli.errors import InputError

PANEL = "Export and speed"


class Compare(str, Enum):
    torchvision = "torchvision"


def benchmark(
    checkpoint: Annotated[Optional[Path], typer.Argument(  # noqa: UP045 (Typer needs Optional)
        help="Model checkpoint (RUN/model.pt); or give --recipe.", dir_okay=False,
        show_default=False)] = None,
    recipe: options.OptionalRecipe = None,
    overrides: options.Overrides = None,
    classes: Annotated[int, typer.Option(
        "--classes", min=1, help="With --recipe: object classes (VOC: 20).")] = 20,
    device: Annotated[str, typer.Option(
        "--device", "-d", help="cpu, cuda or cuda:N.")] = "cpu",
    precision: options.PrecisionOption = options.Precision.fp32,
    image_size: Annotated[str, typer.Option(
        "--image-size", metavar="HxW", help="Size of the test image before the model's "
        "resize.")] = "375x500",
    image: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--image", help="Time on this picture instead of a synthetic one.", dir_okay=False)]
        = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first.")] = 2,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed runs per model.")] = 10,
    compare: Annotated[Optional[Compare], typer.Option(  # noqa: UP045
        "--compare", help="Also time torchvision's FasterRCNN built to the same recipe, "
        "interleaved in this process, and print ours / torchvision.")] = None,
    json_out: options.JsonOut = None,
) -> None:
    """Time inference stage by stage: preprocess, backbone, RPN and proposals,
    RoI pooling and head, postprocess; total, images/s, GFLOPs, achieved
    GFLOP/s and peak memory. One image, batch 1, medians over --runs.

    With --recipe no checkpoint is needed: random weights (no download).

    Example: [bold]frcnn benchmark --recipe voc07-vgg16-joint --compare torchvision[/]

    Example: [bold]frcnn benchmark runs/a/model.pt -d cuda --precision fp16 --json t.json[/]
    """
    import torch

    from frcnn_cli.devices import resolve_device
    from frcnn_cli.export.benchmark import BenchmarkArgs, run_benchmark

    if precision is options.Precision.fp16 and resolve_device(device).type == "cpu":
        console.info(("note:", "yellow"), " fp16 on the CPU is emulated and slow; bf16 is the "
                     "CPU's reduced precision")
    args = BenchmarkArgs(checkpoint, recipe, overrides or [], classes, image,
                         _parse_size(image_size), device, precision.value, warmup, runs,
                         compare is not None, json_out)
    result, source, model = run_benchmark(args, console.reporter())
    console.info(f"{source}: {model.recipe.model.backbone}, {model.num_classes} classes; "
                 f"image {result.image_size[0]}x{result.image_size[1]}, {result.device}, "
                 f"{result.precision}, {torch.get_num_threads()} threads")
    _report(result)
    if json_out is not None:
        console.info(f"wrote {json_out}")


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--image-size takes HxW, e.g. 375x500, got '{text}'") from None
    if h < 2 or w < 2:
        raise InputError(f"--image-size sides must be at least 2 pixels, got '{text}'")
    return h, w


def _report(result) -> None:
    from frcnn_cli.export.benchmark import STAGE_TITLES

    ours = result.models[0]
    compare = len(result.models) > 1
    columns = ["stage", "frcnn (ms)"] + (["torchvision (ms)", "ratio"] if compare else [])
    rows = []
    for stage in (*ours.stages, None):
        row = [STAGE_TITLES[stage] if stage else "total", ours.median(stage) * 1000]
        if compare:
            row += [result.models[1].median(stage) * 1000, result.ratio(stage)]
        rows.append(row)
    console.table(f"median of {result.runs} runs after {result.warmup} warm-up "
                  f"({result.device}, {result.precision})", columns, rows)
    rows = []
    for m in result.models:
        d = m.to_dict()
        rows.append([m.name, d["images_per_s"], d["gflops"], d["gflops_per_s"],
                     d["peak_memory_mib"], m.detections])
    console.table(None, ["model", "images/s", "GFLOPs", "GFLOP/s", "peak memory (MiB)",
                         "detections"], rows)
    console.info(f"GFLOPs by part ({ours.name}): " + ", ".join(
        f"{k} {v / 1e9:.1f}" for k, v in ours.part_flops.items()) + f"; memory: "
                 f"{result.memory_kind}")
    if compare:
        console.info("ratio frcnn / torchvision (median total time): ",
                     (f"{result.ratio():.3f}", "bold"))


def register(app: typer.Typer) -> None:
    app.command("benchmark", rich_help_panel=PANEL)(benchmark)
