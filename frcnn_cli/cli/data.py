"""``frcnn data``: make, convert, check, describe and split datasets (COCO JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from frcnn_cli.cli import console

data_app = typer.Typer(help="Make, convert, check, describe and split datasets (COCO JSON).",
                       no_args_is_help=True)


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder.", file_okay=False)],
    train: Annotated[int, typer.Option("--train", help="Training images.", min=0)] = 200,
    val: Annotated[int, typer.Option("--val", help="Validation images.", min=0)] = 50,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.", min=32)] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the "
                                      "same files.")] = 0,
    classes: Annotated[int, typer.Option("--classes", help="Shape classes: circle, square, "
                                         "triangle, cross, diamond, star (first K).",
                                         min=1, max=6)] = 3,
) -> None:
    """Synthesise a detection set of coloured shapes on textured backgrounds.

    Writes OUT/train.json, OUT/val.json and OUT/images/.
    Shapes have sides from 8 % to 50 % of the image and overlap, each staying
    at least 60 % visible; some images have no object.
    Boxes are the shapes' full extents. The same seed gives byte-identical JSON.

    Example: [bold]frcnn data synth demo/ --train 200 --val 50 --size 256 --seed 0[/]
    """
    from frcnn_cli.data.synth import synthesize

    paths = synthesize(out, train=train, val=val, size=size, seed=seed, num_classes=classes,
                       reporter=console.reporter())
    console.info(f"wrote {paths['train']} ({train} images) and {paths['val']} ({val} images)")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data", rich_help_panel="Data")
