"""Option types shared by several commands, so each is spelled and documented once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Recipe = Annotated[str, typer.Option(
    "--recipe", "-r", help="Recipe name (see [bold]frcnn recipe list[/]) or path to a YAML file.")]
OptionalRecipe = Annotated[Optional[str], typer.Option(  # noqa: UP045 (Typer needs Optional)
    "--recipe", "-r", help="Recipe name (see [bold]frcnn recipe list[/]) or path to a YAML file.")]
Overrides = Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
    "--set", "-s", metavar="KEY=VALUE",
    help="Override a recipe key, e.g. [bold]--set solver.lr=0.01[/] (repeatable).")]
Device = Annotated[str, typer.Option(
    "--device", "-d", help="auto (CUDA when present), cpu, cuda or cuda:N.")]
JsonOut = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--json", help="Also write the result as JSON to this file.", dir_okay=False)]

# Tiled prediction (predict, eval). None: the library's default, named in the help.
Tile = Annotated[Optional[int], typer.Option(  # noqa: UP045
    "--tile", metavar="S", show_default=False,
    help="Run the model on overlapping S x S tiles of each image (at least 32 px) and merge "
    "their detections in the whole image's pixels: for images much larger than the recipe's "
    "input, with small objects. An image no larger than S is one tile.")]
Overlap = Annotated[Optional[float], typer.Option(  # noqa: UP045
    "--overlap", show_default=False,
    help="With --tile: overlap of neighbouring tiles, a fraction of S in [0, 1) \\[default: "
    "0.2]; an object no larger than the overlap lies whole in some tile.")]
TileBatch = Annotated[Optional[int], typer.Option(  # noqa: UP045
    "--tile-batch", min=1, show_default=False,
    help="With --tile: tiles per forward pass \\[default: 4]; memory grows with it, not with "
    "the image.")]
MaxDetections = Annotated[Optional[int], typer.Option(  # noqa: UP045
    "--max-detections", min=1, show_default=False,
    help="With --tile: detections kept per image after merging \\[default: 1000]; each tile "
    "keeps the recipe's roi_heads.detections_per_img.")]
MaxPixels = Annotated[Optional[int], typer.Option(  # noqa: UP045
    "--max-pixels", min=1, show_default=False,
    help="Refuse images with more pixels than this \\[default: 2^30, e.g. 32768 x 32768]; "
    "decoding takes 3 bytes a pixel.")]
