"""``frcnn anchors``: the RPN's base anchors, and how well they cover a dataset's objects."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from frcnn_cli.cli import console, options
from frcnn_cli.errors import InputError

log = logging.getLogger("frcnn")


def _numbers(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got '{text}'") \
            from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
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
    with their width and height in frcnn's continuous coordinates. An FPN
    recipe (or torchvision-style anchors) shows each level's anchors at its
    first place, and --data adds the objects each level learns.

    With --data, each object is resized as the recipe resizes its image
    and gets its best IoU with the anchors the RPN trains on: at or above
    rpn.fg_iou_thresh (0.7) are positives by the threshold, from
    rpn.bg_iou_thresh (0.3) up they learn only as an object's best anchor,
    below it they are nearly missed. Shares per class and size bucket, then
    anchor sets that put more objects at or above rpn.fg_iou_thresh. Boxes
    that training ignores (not finite, without area, outside their image)
    are left out, with a warning. When the objects are small for the stride
    (median side under 4 strides after the resize), it also tries larger
    inputs (input.min_size and input.max_size x1.5, x2, x3) with the recipe's
    anchors and the best set fitted there, states their cost in pixels per
    image, and says what to set.

    Example: [bold]frcnn anchors --recipe shapes --data demo/train.json[/]
    """
    from frcnn_cli import config
    from frcnn_cli.analysis.coverage import with_anchors
    from frcnn_cli.model.anchors import original_anchors
    from frcnn_cli.model.backbones import is_pyramid

    r = config.load_recipe(recipe, overrides or [])
    if is_pyramid(r.model.backbone) and (stride or base_size or scales):
        raise InputError(f"{r.model.backbone} lays anchors of anchors.sizes on its levels; "
                         "--stride, --base-size and --scales shape single-map anchors (try "
                         "--set \"anchors.sizes=[16,32,64,128,256]\")")
    r = with_anchors(r, stride, base_size, _numbers(scales, "--scales"),
                     _numbers(ratios, "--ratios"))
    result = _print_base_anchors(r) if original_anchors(r) else _print_level_anchors(r)

    if data is not None:
        from frcnn_cli.analysis.coverage import anchor_coverage, scale_advice
        from frcnn_cli.data.usable import open_dataset

        ann = open_dataset(data, "anchors")
        report, suggestions = anchor_coverage(ann, r)
        _print_coverage(report, suggestions, data, r)
        advice = scale_advice(ann, r)
        _print_scale_advice(advice, report["fg_iou_thresh"])
        result["coverage"] = report
        result["suggestions"] = suggestions
        result["input_scale"] = advice

    if json_out is not None:
        from frcnn_cli.files import prepare_output_file, write_result
        from frcnn_cli.outputs import ANCHORS

        write_result(prepare_output_file(json_out, ANCHORS, [data], "--json file"), ANCHORS,
                     result)
        console.info(f"wrote {json_out}")


def _print_base_anchors(r) -> dict:
    from frcnn_cli.model.anchors import base_anchor_table

    a = r.anchors
    table = base_anchor_table(a.base_size, a.ratios, a.scales)
    console.table(f"{len(table)} base anchors (stride {a.stride}, base size {a.base_size}; "
                  "x1 y1 x2 y2 inclusive, 1-based)",
                  ["#", "ratio", "scale", "x1", "y1", "x2", "y2", "width", "height"],
                  [[i, f"{b.ratio:g}", f"{b.scale:g}", *[f"{v:g}" for v in b.inclusive],
                    f"{b.width:g}", f"{b.height:g}"] for i, b in enumerate(table)])
    return {"stride": a.stride, "base_size": a.base_size, "scales": a.scales,
            "ratios": a.ratios, "base_anchors": [b.inclusive for b in table],
            "base_anchors_continuous": [b.continuous for b in table]}


def _print_level_anchors(r) -> dict:
    from frcnn_cli.model.anchors import anchor_table

    rows = anchor_table(r)
    levels = list(dict.fromkeys(row["level"] for row in rows))
    console.table(f"{len(rows) // len(levels)} anchors per place on each of {len(levels)} "
                  f"levels ({r.anchors.style} style; x1 y1 x2 y2 continuous, at the first place)",
                  ["level", "stride", "ratio", "size", "x1", "y1", "x2", "y2", "width", "height"],
                  [[row["level"], row["stride"], f"{row['ratio']:g}", f"{row['size']:g}",
                    *[f"{v:g}" for v in row["box"]], f"{row['box'][2] - row['box'][0]:g}",
                    f"{row['box'][3] - row['box'][1]:g}"] for row in rows])
    return {"style": r.anchors.style, "ratios": r.anchors.ratios,
            "levels": [{"name": name, "stride": next(x["stride"] for x in rows
                                                     if x["level"] == name),
                        "anchors": [x["box"] for x in rows if x["level"] == name],
                        "sizes": sorted({x["size"] for x in rows if x["level"] == name})}
                       for name in levels]}


def _print_coverage(report: dict, suggestions: list[dict], data: Path, recipe) -> None:
    from frcnn_cli.model.anchors import original_anchors

    fg, bg = f"{report['fg_iou_thresh']:g}", f"{report['bg_iou_thresh']:g}"
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
                  f"{recipe.input.min_size}, at most {recipe.input.max_size})",
                  ["class", "size", "objects", f">= {fg}", f"{bg}-{fg}", f"< {bg}"], rows)
    levels = report["per_level"]
    if len(levels) > 1:
        console.table("objects by the level of their best anchor (the level whose RPN outputs "
                      "learn them)",
                      ["level", "stride", "anchor sizes", "objects", f">= {fg}", f"{bg}-{fg}",
                       f"< {bg}"],
                      [[name, s["stride"], ",".join(f"{v:g}" for v in s["sizes"]), s["objects"],
                        _pct(s["positive"]), _pct(s["best_only"]), _pct(s["missed"])]
                       for name, s in levels.items()])
    if suggestions:
        console.table(f"anchor sets with more objects at IoU >= {fg}",
                      ["scales", "ratios", "k", f">= {fg}", "why"],
                      [[",".join(f"{v:g}" for v in s["scales"]),
                        ",".join(f"{v:g}" for v in s["ratios"]), s["anchors_per_place"],
                        _pct(s["positive"]), s["why"]] for s in suggestions])
    elif not original_anchors(recipe):
        console.info("anchor suggestions cover the paper's single-map anchors only")
    else:
        console.info("no simple change of scales or ratios covers more objects")


def _anchor_set(best: dict) -> str:
    return (f"{','.join(f'{v:g}' for v in best['scales'])} x "
            f"{','.join(f'{v:g}' for v in best['ratios'])}")


def _print_scale_advice(advice: dict, fg: float) -> None:
    if not advice["small"]:
        return
    rows = [[f"{s['min_size']}/{s['max_size']}", f"{s['pixels'] / 1e6:.2f} M",
             f"{s['cost']:.2g}x", _pct(s["positive"]), _pct(s["best"]["positive"]),
             _anchor_set(s["best"])] for s in advice["scales"]]
    console.table(f"objects small for stride {advice['stride']} (median side "
                  f"{advice['median_side']:.0f} px after the resize): larger inputs, with "
                  f"the shares at IoU >= {fg:g} of the recipe's anchors and of the best set",
                  ["min/max size", "pixels/image", "cost", "recipe's", "best",
                   "best set (scales x ratios)"], rows)
    now, chosen = advice["scales"][0], advice["advice"]
    if chosen is None:
        console.info("a larger input does not cover the objects much better; keep the "
                     "input and use the anchor sets above")
        return
    from rich.markup import escape

    best = chosen["best"]
    sets = (f"--set input.min_size={chosen['min_size']} --set input.max_size="
            f"{chosen['max_size']} --set \"anchors.scales=["
            f"{','.join(f'{v:g}' for v in best['scales'])}]\" --set \"anchors.ratios=["
            f"{','.join(f'{v:g}' for v in best['ratios'])}]\"")
    console.info(f"advice: train with {escape(sets)}: {_pct(best['positive'])} of the objects "
                 f"at IoU >= {fg:g} instead of {_pct(now['best']['positive'])}, for "
                 f"{chosen['cost']:.2g}x the pixels per image (time and memory grow about as "
                 "much)")


def register(app: typer.Typer) -> None:
    app.command("anchors", rich_help_panel="Data")(anchors)
