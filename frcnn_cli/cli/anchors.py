"""``frcnn anchors``: the RPN's base anchors, and how well they cover a dataset's objects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from frcnn_cli.cli import console, options


def _numbers(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got '{text}'") \
            from None
    if not values or any(v <= 0 for v in values):
        raise typer.BadParameter(f"{what} must be positive numbers, got '{text}'")
    return values


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def anchors(
    recipe: options.OptionalRecipe = None,
    overrides: options.Overrides = None,
    stride: Annotated[Optional[int], typer.Option(  # noqa: UP045 (Typer needs Optional)
        "--stride", help="Feature stride in pixels (default: the recipe's, else 16).",
        min=1)] = None,
    scales: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--scales", help="Comma-separated scales times the base size, e.g. 8,16,32.")] = None,
    ratios: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--ratios", help="Comma-separated aspect ratios h/w, e.g. 0.5,1,2.")] = None,
    base_size: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--base-size", help="Side of the base anchor (default: the stride).", min=1)] = None,
    data: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--data", help="COCO JSON: report how well the anchors cover its objects.",
        dir_okay=False)] = None,
    json_out: options.JsonOut = None,
) -> None:
    """Print the base anchors; with --data, how well they cover a dataset's objects.

    Base anchors are shown as the original implementation writes them:
    inclusive 1-based pixels ([-83, -39, 100, 56] first for the paper's),
    with their width and height in frcnn's continuous coordinates.

    With --data, each object is resized as the recipe resizes its image
    and gets its best IoU with the anchors the RPN trains on:
    >= 0.7 are positives by the threshold, 0.3-0.7 learn only as an
    object's best anchor, < 0.3 are nearly missed. Shares per class and
    size bucket, then anchor sets that put more objects at >= 0.7.

    Example: [bold]frcnn anchors --recipe shapes --data demo/train.json[/]
    """
    from frcnn_cli import config
    from frcnn_cli.model.anchors import generate_anchors, to_continuous

    r = config.load_recipe(recipe, overrides or [])
    a = r.anchors
    changes = {}
    if stride is not None:
        changes["stride"] = stride
        changes["base_size"] = base_size or stride
    if base_size is not None:
        changes["base_size"] = base_size
    if scales is not None:
        changes["scales"] = _numbers(scales, "--scales")
    if ratios is not None:
        changes["ratios"] = _numbers(ratios, "--ratios")
    if changes:
        r = r.model_copy(update={"anchors": a.model_copy(update=changes)})
        a = r.anchors

    base = generate_anchors(a.base_size, a.ratios, a.scales)
    cont = to_continuous(base)
    k = len(a.scales)
    rows = []
    for i, (box, c) in enumerate(zip(base.tolist(), cont.tolist(), strict=True)):
        rows.append([i, f"{a.ratios[i // k]:g}", f"{a.scales[i % k]:g}",
                     *[f"{v:g}" for v in box], f"{c[2] - c[0]:g}", f"{c[3] - c[1]:g}"])
    console.table(f"{len(base)} base anchors (stride {a.stride}, base size {a.base_size}; "
                  "x1 y1 x2 y2 inclusive, 1-based)",
                  ["#", "ratio", "scale", "x1", "y1", "x2", "y2", "width", "height"], rows)
    result: dict = {"stride": a.stride, "base_size": a.base_size, "scales": a.scales,
                    "ratios": a.ratios, "base_anchors": base.tolist(),
                    "base_anchors_continuous": cont.tolist()}

    if data is not None:
        from frcnn_cli.data.annotations import load_annotations
        from frcnn_cli.model.coverage import ObjectSet, coverage, suggest_anchors

        objects = ObjectSet.from_annotations(load_annotations(data), r)
        report = coverage(objects, a.scales, a.ratios, r)
        rows = []
        for name, by_size in report["per_class_size"].items():
            for bucket, s in [*by_size.items(), ("all", report["per_class"][name])]:
                if s["objects"]:
                    rows.append([name, bucket, s["objects"], _pct(s["positive"]),
                                 _pct(s["best_only"]), _pct(s["missed"])])
        for bucket, s in [*report["per_size"].items(), ("all", report["all"])]:
            if s["objects"]:
                rows.append(["all", bucket, s["objects"], _pct(s["positive"]),
                             _pct(s["best_only"]), _pct(s["missed"])])
        console.table(f"best-anchor IoU of the objects of {data} (resized to shorter side "
                      f"{r.input.min_size}, at most {r.input.max_size})",
                      ["class", "size", "objects", ">= 0.7", "0.3-0.7", "< 0.3"], rows)
        suggestions = suggest_anchors(objects, r)
        if suggestions:
            console.table("anchor sets with more objects at IoU >= 0.7",
                          ["scales", "ratios", "k", ">= 0.7", "why"],
                          [[",".join(f"{v:g}" for v in s["scales"]),
                            ",".join(f"{v:g}" for v in s["ratios"]), s["anchors_per_place"],
                            _pct(s["positive"]), s["why"]] for s in suggestions])
        else:
            console.info("no simple change of scales or ratios covers more objects")
        result["coverage"] = report
        result["suggestions"] = suggestions

    if json_out is not None:
        from frcnn_cli.files import prepare_output_file, write_json

        write_json(prepare_output_file(json_out, [data]), result)
        console.info(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.command("anchors", rich_help_panel="Data")(anchors)
