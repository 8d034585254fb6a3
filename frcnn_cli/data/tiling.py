"""Cutting large images into overlapping tiles: the tile windows, and a tiled dataset.

An image larger than the tile size S in a side is cut along that side into S-pixel windows
that overlap by ``round(overlap * S)`` pixels; the last window of a row or column is shifted
inward to end at the image's border, so no tile is padded (it overlaps its neighbour more).
A side no larger than S is not cut: an image no larger than S in both sides is one window,
the whole image. :func:`tile_windows` is the one place this rule lives: ``frcnn data tile``
cuts training images with it and tiled prediction (``frcnn_cli.inference.tiled``) cuts the
images it runs on with it, so both see the same tiles.

Consecutive windows overlap by at least the overlap, so an object no larger than the overlap
in a side lies whole in some window along that side: an object seen truncated at one tile's
inner edge is seen whole by a neighbour.

``frcnn data tile`` (:func:`tile_dataset`) writes each window of a cut image as a lossless PNG
(the pixels tiled prediction cuts from the decoded image, with no second round of JPEG loss)
into ``<OUT stem>_tiles/`` beside OUT.json; an image that is not cut is referenced where it
is. Boxes are clipped to the tile: a box with at least ``min_visible`` of its area inside is
kept; a box cut below that is kept as an ignore region, ``iscrowd: 1`` and ``tile_cut: 1``
(COCO's flag for regions that count neither as an object nor as background). Each image entry
records ``"tile": {"source": <source file_name>, "x": left, "y": top}``. Tiles without an
object are kept at a ratio: at most ``negatives`` of them per tile with objects, chosen with a
seed; images that are not cut are always kept.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_cli.data.annotations import Annotations, relative_name, save_annotations
from frcnn_cli.data.images import MAX_PIXELS, image_size, opencv, read_image
from frcnn_cli.errors import DataError, InputError
from frcnn_cli.files import prepare_output_file
from frcnn_cli.outputs import dataset_kind
from frcnn_cli.progress import SILENT, Reporter

log = logging.getLogger("frcnn")

DEFAULT_OVERLAP = 0.2  # of the tile side, SAHI's default: objects up to 0.2 S lie whole somewhere
DEFAULT_MIN_VISIBLE = 0.5  # share of a cut box's area a tile must hold to keep it as an object
# Empty tiles kept per tile with objects. Tiles with objects already hold most of the
# background the detector samples its negatives from (75 % of the paper's RoI minibatch);
# empty tiles add the scenes with no object at all (water, fields, blank paper) that most of
# a large image is at prediction time. One in six tiles empty keeps them seen without
# spending most iterations on them.
DEFAULT_NEGATIVES = 0.2
MIN_TILE_SIZE = 32
# How many times the tiles may cover each pixel on average before a tiling is refused unless
# asked for (--many-tiles): an overlap of 0.2 covers it about 1.6 times, 0.5 four times; 25
# is an overlap near 0.8, where a typo (0.99 for 0.09) makes thousands of tiles per image.
MAX_COVERAGE = 25
_PNG_COMPRESSION = 1  # zlib level: the fast end; the pixels are the same at any level


@dataclass(frozen=True)
class Window:
    """A tile: its left and top pixel in the image, its width and height."""

    x: int
    y: int
    width: int
    height: int


def check_tiling(size: int, overlap: float) -> None:
    """Raise InputError for a tile size or an overlap :func:`tile_windows` cannot use."""
    if not isinstance(size, int) or size < MIN_TILE_SIZE:
        raise InputError(f"--size must be a whole number of pixels, at least {MIN_TILE_SIZE}, "
                         f"got {size}")
    if not (math.isfinite(overlap) and 0 <= overlap < 1):
        raise InputError(f"--overlap is a fraction of the tile side in [0, 1), got {overlap}")
    if size - overlap_pixels(size, overlap) < 1:
        raise InputError(f"--overlap {overlap} leaves no step between {size} px tiles; "
                         "choose a smaller overlap")


def overlap_pixels(size: int, overlap: float) -> int:
    """The overlap of neighbouring tiles in pixels (the least; the last tiles overlap more)."""
    return round(overlap * size)


def tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Start pixels of the tiles along one side of ``length`` pixels: ``[0]`` when it is no
    longer than ``size``, else every ``size - overlap px`` and the last at ``length - size``."""
    if length <= size:
        return [0]
    step = size - overlap_pixels(size, overlap)
    return [*range(0, length - size, step), length - size]


def tile_windows(width: int, height: int, size: int, overlap: float = DEFAULT_OVERLAP
                 ) -> list[Window]:
    """The tiles of a ``width`` x ``height`` image, row by row (see the module doc)."""
    check_tiling(size, overlap)
    return [Window(x, y, min(size, width), min(size, height))
            for y in tile_starts(height, size, overlap)
            for x in tile_starts(width, size, overlap)]


def count_tiles(sizes: list[tuple[int, int]], size: int, overlap: float,
                many_tiles: bool = False) -> int:
    """The tiles of images of ``sizes`` ``[(width, height)]``, logged; InputError, unless
    ``many_tiles``, when they would cover the images' pixels more than :data:`MAX_COVERAGE`
    times over (an overlap close to 1 makes thousands of tiles of a small image)."""
    tiles = covered = 0
    for width, height in sizes:
        windows = tile_windows(int(width), int(height), size, overlap)
        tiles += len(windows)
        covered += sum(w.width * w.height for w in windows)
    pixels = sum(int(w) * int(h) for w, h in sizes)
    if not many_tiles and pixels and covered > MAX_COVERAGE * pixels:
        raise InputError(f"{size} px tiles at overlap {overlap:g} make {tiles:,} tiles of "
                         f"{len(sizes)} image(s), covering each pixel {covered / pixels:.0f} "
                         f"times over (more than {MAX_COVERAGE}); lower --overlap, or pass "
                         "--many-tiles if this is meant")
    log.info("%d image(s) -> %d tile(s) of %d px", len(sizes), tiles, size)
    return tiles


def crop_to_window(boxes: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(N, 4)`` ``[x, y, w, h]`` in image pixels -> the parts inside ``window`` in
    tile pixels ``(N, 4)`` and the share of each box's area they hold ``(N,)`` (0 for a box
    outside the tile or without area)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1 = np.clip(boxes[:, 0], window.x, window.x + window.width)
    y1 = np.clip(boxes[:, 1], window.y, window.y + window.height)
    x2 = np.clip(boxes[:, 0] + boxes[:, 2], window.x, window.x + window.width)
    y2 = np.clip(boxes[:, 1] + boxes[:, 3], window.y, window.y + window.height)
    inside = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = boxes[:, 2] * boxes[:, 3]
    visible = np.divide(inside, area, out=np.zeros_like(area), where=area > 0)
    clipped = np.stack([x1 - window.x, y1 - window.y, x2 - x1, y2 - y1], axis=1)
    # a box the tile holds whole keeps its own width and height (x2 - x1 may round them)
    whole = ((boxes[:, 0] >= window.x) & (boxes[:, 1] >= window.y) & (x2 == x1 + boxes[:, 2])
             & (y2 == y1 + boxes[:, 3]) & (area > 0))
    clipped[whole, 2:] = boxes[whole, 2:]
    visible[whole] = 1.0
    return clipped, visible


# --------------------------------------------------------------------------- the dataset


@dataclass
class Tile:
    """One tile of the output: its source image record, window and annotations (tile
    pixels, ids not yet given)."""

    image: dict[str, Any]
    window: Window
    annotations: list[dict[str, Any]]
    whole: bool  # the image is not cut: the tile is the source file itself

    @property
    def has_objects(self) -> bool:
        return any(not a.get("iscrowd") for a in self.annotations)


@dataclass
class TileSummary:
    """What :func:`tile_dataset` wrote; object counts are annotations in the output (an object
    in an overlap counts once per tile holding it)."""

    path: Path
    folder: Path
    images: int = 0
    whole_images: int = 0
    tiles: int = 0
    objects: int = 0
    ignore_regions: int = 0
    empty_tiles: int = 0
    empty_kept: int = 0
    degenerate: int = 0  # boxes without area, in no tile
    whole_nowhere: int = 0  # objects no tile holds whole: larger than the overlap
    only_ignored: int = 0  # objects below min_visible in every tile: ignore regions only
    overlap_px: int = 0

    def notes(self) -> list[str]:
        """What the user may want to change, one line each."""
        notes = []
        if self.whole_nowhere:
            notes.append(f"{self.whole_nowhere} object(s) lie whole in no tile: larger than the "
                         f"overlap ({self.overlap_px} px), they are cut wherever they are; a "
                         "larger --overlap keeps them whole")
        if self.only_ignored:
            notes.append(f"{self.only_ignored} object(s) are under --min-visible in every tile, "
                         "so only ignore regions: a larger --size keeps them")
        if self.degenerate:
            notes.append(f"{self.degenerate} box(es) without area left out; frcnn data check "
                         "lists them")
        return notes


def parse_negatives(text: str) -> float | None:
    """The ``--negatives`` value: a number of empty tiles per tile with objects, or ``all``
    (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--negatives takes a number or 'all', got {text!r}") from None


def tile_dataset(annotations: str | os.PathLike, out: str | os.PathLike, size: int,
                 overlap: float = DEFAULT_OVERLAP, min_visible: float = DEFAULT_MIN_VISIBLE,
                 negatives: float | None = DEFAULT_NEGATIVES, seed: int = 0,
                 max_pixels: int | None = MAX_PIXELS, reporter: Reporter = SILENT,
                 many_tiles: bool = False) -> TileSummary:
    """Cut the images of the COCO file ``annotations`` into tiles and write ``out`` (COCO)
    with the tile images in ``<out stem>_tiles/`` beside it; see the module doc.

    ``negatives``: empty tiles kept per tile with objects (None: all); ``many_tiles``: see
    :func:`count_tiles`, which counts the tiles (logged) before any is cut. Raises InputError
    for bad arguments, an ``out`` that would replace an input or a tile folder that already
    holds files, and DataError for images the dataset door refuses
    (:func:`frcnn_cli.data.usable.open_dataset`: unreadable, or another size than their
    record).
    """
    from frcnn_cli.data.usable import open_dataset

    check_tiling(size, overlap)
    if not (math.isfinite(min_visible) and 0 < min_visible <= 1):
        raise InputError(f"--min-visible is a share of a box's area in (0, 1], got {min_visible}")
    if negatives is not None and not (math.isfinite(negatives) and negatives >= 0):
        raise InputError(f"--negatives must be a number, 0 or more, or 'all', got {negatives}")
    ann = open_dataset(annotations, "tile")
    out = prepare_output_file(out, dataset_kind("data tile"),
                              inputs=[annotations, *ann.image_files()], what="--out")
    folder = out.parent / f"{out.stem}_tiles"
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"{folder} already exists and holds files; data tile never replaces "
                         "files: delete it or choose another --out")

    count_tiles([_size(ann, im) for im in ann.images], size, overlap, many_tiles)
    tiles, summary = plan_tiles(ann, size, overlap, min_visible)
    summary.path, summary.folder = out, folder
    kept = choose_negatives(tiles, negatives, seed)
    summary.empty_tiles = sum(not t.has_objects and not t.whole for t in tiles)
    summary.empty_kept = sum(not t.has_objects and not t.whole for t in kept)
    summary.whole_images = sum(t.whole for t in kept)
    result = _write_tiles(ann, kept, _tile_names(ann), folder, out, max_pixels, reporter)
    summary.tiles = len(result.images)
    summary.ignore_regions = sum(1 for a in result.annotations if a.get("tile_cut"))
    summary.objects = sum(1 for a in result.annotations if not a.get("iscrowd"))
    save_annotations(result, out, inputs=[annotations], written_by="data tile")
    return summary


def plan_tiles(ann: Annotations, size: int, overlap: float, min_visible: float
               ) -> tuple[list[Tile], TileSummary]:
    """Every tile of every image with its clipped annotations, before any pixel is read.

    An annotation keeps its other fields; ``area`` is scaled by the share inside the tile and
    ``segmentation`` is left out (it is not cut with the box)."""
    summary = TileSummary(Path(), Path(), images=len(ann.images),
                          overlap_px=overlap_pixels(size, overlap))
    tiles: list[Tile] = []
    for im in ann.images:
        width, height = _size(ann, im)
        objects = ann.objects(im["id"])
        boxes = np.array([a["bbox"] for a in objects], dtype=np.float64).reshape(-1, 4)
        degenerate = ~(boxes[:, 2] * boxes[:, 3] > 0)
        summary.degenerate += int(degenerate.sum())
        best = np.zeros(len(objects))
        windows = tile_windows(width, height, size, overlap)
        whole = len(windows) == 1
        for window in windows:
            clipped, visible = crop_to_window(boxes, window)
            best = np.maximum(best, visible)
            tile_anns = []
            for k in np.flatnonzero(visible > 0).tolist():  # the objects in this tile
                share = float(visible[k])
                a = {key: v for key, v in objects[k].items() if key != "segmentation"}
                a.update(bbox=clipped[k].tolist(), area=float(a.get("area", 0.0)) * share)
                if share < min_visible and not a.get("iscrowd"):
                    a.update(iscrowd=1, tile_cut=1)
                tile_anns.append(a)
            tiles.append(Tile(im, window, tile_anns, whole))
        crowd = np.array([bool(a.get("iscrowd")) for a in objects], dtype=bool)
        counted = ~degenerate & ~crowd
        summary.whole_nowhere += int((counted & (best < 1 - 1e-9)).sum())
        summary.only_ignored += int((counted & (best < min_visible)).sum())
    return tiles, summary


def choose_negatives(tiles: list[Tile], ratio: float | None, seed: int) -> list[Tile]:
    """The tiles to write: all with objects, all whole images, and at most ``ratio`` empty
    tiles per tile with objects drawn with ``seed`` (None: every empty tile), in tile order."""
    empty = [i for i, t in enumerate(tiles) if not t.has_objects and not t.whole]
    if ratio is not None:
        budget = math.floor(ratio * sum(t.has_objects for t in tiles) + 1e-9)
        empty = random.Random(seed).sample(empty, min(budget, len(empty)))
    chosen = set(empty)
    return [t for i, t in enumerate(tiles) if t.has_objects or t.whole or i in chosen]


def _size(ann: Annotations, im: dict[str, Any]) -> tuple[int, int]:
    if im.get("width") and im.get("height"):
        return int(im["width"]), int(im["height"])
    return image_size(ann.image_path(im))


def _tile_names(ann: Annotations) -> dict[Any, str]:
    """Image id -> the stem of its tiles' names: the file's stem, with the image id added
    where two images share a stem (``images/train/1.jpg`` and ``images/val/1.jpg``)."""
    stems = {im["id"]: Path(im["file_name"]).stem for im in ann.images}
    repeated = {s for s, n in Counter(stems.values()).items() if n > 1}
    return {i: f"{s}-id{i}" if s in repeated else s for i, s in stems.items()}


def _write_tiles(ann: Annotations, tiles: list[Tile], names: dict[Any, str], folder: Path,
                 out: Path, max_pixels: int | None, reporter: Reporter) -> Annotations:
    """Write the tiles' pixels into a temporary folder renamed to ``folder`` once all are
    written (an interrupted run leaves nothing), and return the dataset of ``tiles``."""
    cv2 = opencv()
    by_image: dict[Any, list[Tile]] = {}
    for t in tiles:
        by_image.setdefault(t.image["id"], []).append(t)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=out.parent))
    try:
        with reporter.task("tiling", total=len(ann.images)) as task:
            for im in ann.images:
                image_tiles = by_image.get(im["id"], [])
                pixels = None
                if any(not t.whole for t in image_tiles):
                    pixels = _read_checked(ann, im, max_pixels)
                for t in image_tiles:
                    source = relative_name(ann.image_path(im), out.parent)
                    record = {**im} if t.whole else {"file_name": "", "width": t.window.width,
                                                     "height": t.window.height}
                    record.update(id=len(images) + 1,
                                  tile={"source": source, "x": t.window.x, "y": t.window.y})
                    if t.whole:
                        record["file_name"] = source
                    else:
                        name = f"{names[im['id']]}_{t.window.x}_{t.window.y}.png"
                        w = t.window
                        crop = pixels[w.y:w.y + w.height, w.x:w.x + w.width, ::-1]
                        ok, buf = cv2.imencode(".png", np.ascontiguousarray(crop),
                                               [cv2.IMWRITE_PNG_COMPRESSION, _PNG_COMPRESSION])
                        if not ok:
                            raise DataError(f"cannot encode tile {name} of {ann.image_path(im)}")
                        (staging / name).write_bytes(buf.tobytes())
                        record["file_name"] = f"{folder.name}/{name}"
                    images.append(record)
                    for a in t.annotations:
                        anns.append({**a, "id": len(anns) + 1, "image_id": record["id"]})
                task.update(advance=1)
        if any(staging.iterdir()):
            if folder.exists():
                folder.rmdir()  # empty, checked before
            os.replace(staging, folder)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    return Annotations(images, anns, list(ann.categories), out.parent, None, dict(ann.extra))


def _read_checked(ann: Annotations, im: dict[str, Any], max_pixels: int | None) -> np.ndarray:
    path = ann.image_path(im)
    pixels = read_image(path, max_pixels)
    height, width = pixels.shape[:2]
    if im.get("width") and im.get("height") and (width, height) != (im["width"], im["height"]):
        raise DataError(f"image {path} is {width} x {height} pixels but its record says "
                        f"{im['width']} x {im['height']}; fix the sizes with: frcnn data check "
                        f"{ann.path} --fix OUT.json")
    return pixels

