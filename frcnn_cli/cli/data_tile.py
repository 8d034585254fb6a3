"""``frcnn data tile``: cut large images into overlapping tiles for training (registered on
``frcnn data`` by :mod:`frcnn_cli.cli.data`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from frcnn_cli.cli import console, options


def tile(
    annotations: Annotated[Path, typer.Argument(help="COCO JSON file.", dir_okay=False)],
    size: Annotated[int, typer.Option("--size", help="Tile side in pixels (at least 32).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output COCO JSON file; the tiles go "
                                      "into <OUT stem>_tiles/ beside it.", dir_okay=False)],
    overlap: Annotated[float, typer.Option(
        "--overlap", help="Overlap of neighbouring tiles, a fraction of the side in [0, 1); "
        "an object no larger than overlap x size pixels lies whole in some tile.")] = 0.2,
    min_visible: Annotated[float, typer.Option(
        "--min-visible", help="A box cut by a tile edge stays an object when this share of "
        "its area is inside; below, it becomes an ignore region.")] = 0.5,
    negatives: Annotated[str, typer.Option(
        "--negatives", help="Empty tiles kept per tile with objects (a number, or 'all'). "
        "Tiles with objects already hold most of the background; empty ones add the "
        "object-free scenes a large image is mostly made of; 0.2 keeps about one tile in six "
        "empty. Keep 'all' for a set you evaluate on.")] = "0.2",
    seed: Annotated[int, typer.Option("--seed", help="Seed choosing the empty tiles.")] = 0,
    max_pixels: Annotated[int, typer.Option(
        "--max-pixels", help="Refuse images with more pixels than this; decoding takes 3 "
        "bytes a pixel.", min=1)] = 2**30,
    many_tiles: options.ManyTiles = False,
) -> None:
    """Cut images larger than --size into overlapping tiles, for training on large images
    with small objects (aerial, satellite, microscopy, documents).

    A side longer than SIZE is cut into SIZE-pixel tiles, the last one shifted
    inward (never padded); a side no longer is not cut, so an image no larger
    than SIZE stays whole (referenced, not copied). Tiles are written as lossless
    PNG: the same pixels tiled prediction cuts from the decoded image, without a
    second round of JPEG loss. A box cut below --min-visible becomes an ignore
    region (iscrowd 1, tile_cut 1); each image records "tile": {source, x, y}.

    Example: [bold]frcnn data tile aerial/train.json --size 800 --out aerial/train800.json[/]
    """
    from frcnn_cli.data.tiling import parse_negatives, tile_dataset

    s = tile_dataset(annotations, out, size, overlap=overlap, min_visible=min_visible,
                     negatives=parse_negatives(negatives), seed=seed, max_pixels=max_pixels,
                     reporter=console.reporter(), many_tiles=many_tiles)
    console.info(f"{s.images} images -> {s.tiles} tiles ({s.whole_images} images kept whole), "
                 f"{s.objects} objects kept, {s.ignore_regions} cut to ignore regions, "
                 f"{s.empty_kept} of {s.empty_tiles} empty tiles kept")
    for note in s.notes():
        console.info(("note:", "yellow"), f" {note}")
    written = s.folder.is_dir() and any(s.folder.iterdir())
    console.info(f"wrote {s.path}" + (f" and {s.folder}/" if written else
                                      " (every image kept whole: no tile files written)"))
