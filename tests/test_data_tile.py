"""`frcnn data tile`: the tile windows, box clipping, ignore regions, empty tiles, refusals."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from PIL import Image

from frcnn_cli.data.annotations import Annotations, load_annotations
from frcnn_cli.data.tiling import (
    DEFAULT_MIN_VISIBLE,
    DEFAULT_NEGATIVES,
    DEFAULT_OVERLAP,
    Tile,
    Window,
    check_tiling,
    choose_negatives,
    crop_to_window,
    plan_tiles,
    tile_starts,
    tile_windows,
)
from frcnn_cli.errors import InputError


def test_tile_starts_hand_worked():
    # 1000 px, 400 px tiles, overlap 100 px: a step of 300, the last tile shifted to end at 1000
    assert tile_starts(1000, 400, 0.25) == [0, 300, 600]
    # overlap round(0.2 * 512) = 102 px, step 410; the last tile starts at 1000 - 512 = 488
    assert tile_starts(1000, 512, 0.2) == [0, 410, 488]
    assert tile_starts(400, 400, 0.25) == [0]  # no longer than a tile: not cut
    assert tile_starts(130, 400, 0.25) == [0]
    assert tile_starts(401, 400, 0.25) == [0, 1]
    assert tile_starts(700, 400, 0.25) == [0, 300]  # 300 is also where the last one starts
    assert tile_starts(1000, 400, 0.0) == [0, 400, 600]


def test_windows_row_by_row_never_padded_and_a_small_image_is_one_window():
    assert tile_windows(300, 200, 128, 0.25) == [
        Window(0, 0, 128, 128), Window(96, 0, 128, 128), Window(172, 0, 128, 128),
        Window(0, 72, 128, 128), Window(96, 72, 128, 128), Window(172, 72, 128, 128)]
    assert tile_windows(100, 80, 128, 0.25) == [Window(0, 0, 100, 80)]
    # a side no longer than the tile is not cut: the tiles take its length
    assert tile_windows(300, 90, 128, 0.25) == [Window(0, 0, 128, 90), Window(96, 0, 128, 90),
                                                Window(172, 0, 128, 90)]


@pytest.mark.parametrize("width,height,size,overlap", [(1000, 777, 256, 0.2), (513, 2000, 512,
                                                        0.1), (3001, 97, 100, 0.5)])
def test_windows_cover_the_image_and_hold_every_object_up_to_the_overlap_whole(
        width, height, size, overlap):
    windows = tile_windows(width, height, size, overlap)
    covered = np.zeros((height, width), bool)
    for w in windows:
        assert w.x >= 0 and w.y >= 0
        assert w.x + w.width <= width and w.y + w.height <= height
        assert w.width == min(size, width) and w.height == min(size, height)
        covered[w.y:w.y + w.height, w.x:w.x + w.width] = True
    assert covered.all()
    o = round(overlap * size)
    rng = np.random.default_rng(0)
    bw, bh = rng.uniform(1, min(o, width), 500), rng.uniform(1, min(o, height), 500)
    boxes = np.stack([rng.uniform(0, width - bw), rng.uniform(0, height - bh), bw, bh], axis=1)
    best = np.max([crop_to_window(boxes, w)[1] for w in windows], axis=0)
    assert (best == 1.0).all()


def test_bad_sizes_and_overlaps_are_refused():
    for size, overlap in ((31, 0.2), (512, -0.1), (512, 1.0), (512, float("nan")), (32, 0.99)):
        with pytest.raises(InputError):
            check_tiling(size, overlap)
    check_tiling(32, 0.0)


def test_crop_to_window_hand_worked():
    window = Window(100, 0, 100, 100)
    boxes = np.array([[90, 10, 20, 10],    # half inside, on the left edge
                      [120, 20, 10, 10],   # whole
                      [195, 95, 10, 10],   # a quarter, bottom right corner
                      [0, 0, 50, 50],      # outside
                      [150, 50, 0, 10]])   # no area
    clipped, visible = crop_to_window(boxes, window)
    assert clipped[:3].tolist() == [[0, 10, 10, 10], [20, 20, 10, 10], [95, 95, 5, 5]]
    assert visible.tolist() == [0.5, 1.0, 0.25, 0.0, 0.0]
    # a box held whole keeps its numbers exactly, without x2 - x1 rounding
    clipped, visible = crop_to_window(np.array([[100.1, 0.1, 0.2, 0.3]]), window)
    assert clipped[0].tolist() == [100.1 - 100, 0.1, 0.2, 0.3] and visible[0] == 1.0


def _pattern(h, w):
    """Pixels that tell where they came from: red = x % 256, green = y % 256, blue = x // 256."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, xx // 256], axis=2).astype(np.uint8)


@pytest.fixture
def big_set(tmp_path):
    """data/ann.json: big.png (300 x 200, cut into 6 tiles of 128 at overlap 0.25) and
    small.png (100 x 80, not cut)."""
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(_pattern(200, 300)).save(data / "big.png")
    Image.fromarray(_pattern(80, 100)).save(data / "small.png")
    boxes = {1: [10, 10, 20, 20],    # A: in tile (0, 0) only
             2: [120, 30, 20, 10],   # B: 8/20 in (0, 0) -> ignore region; whole in (96, 0)
             3: [110, 40, 30, 10],   # C: 18/30 in (0, 0) -> kept clipped; whole in (96, 0)
             4: [250, 150, 20, 20]}  # D: whole in (172, 72) only
    anns = [{"id": i, "image_id": 1, "category_id": 7, "bbox": b, "difficult": int(i == 3)}
            for i, b in boxes.items()]
    anns.append({"id": 5, "image_id": 2, "category_id": 7, "bbox": [5, 5, 10, 10]})  # E
    (data / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "big.png", "width": 300, "height": 200},
                   {"id": 2, "file_name": "small.png", "width": 100, "height": 80}],
        "annotations": anns, "categories": [{"id": 7, "name": "car"}]}))
    return data / "ann.json"


def test_tile_cli_writes_tiles_boxes_and_ignore_regions(cli, big_set, tmp_path):
    out = tmp_path / "out" / "t.json"
    r = cli("data", "tile", big_set, "--size", 128, "--overlap", 0.25, "--negatives", "all",
            "--out", out)
    assert r.exit_code == 0, r.output
    assert "2 images -> 7 tiles (1 images kept whole), 6 objects kept, 1 cut to ignore " \
           "regions, 3 of 3 empty tiles kept" in " ".join(r.output.split())
    data = json.loads(out.read_text())
    images = {im["id"]: im for im in data["images"]}
    assert [(im["file_name"], im["width"], im["height"], im["tile"]) for im in data["images"]] \
        == [(f"t_tiles/big_{x}_{y}.png", 128, 128, {"source": "../data/big.png", "x": x, "y": y})
            for x, y in ((0, 0), (96, 0), (172, 0), (0, 72), (96, 72), (172, 72))] + \
        [("../data/small.png", 100, 80, {"source": "../data/small.png", "x": 0, "y": 0})]
    by_tile = {}
    for a in data["annotations"]:
        t = images[a["image_id"]]["tile"]
        by_tile.setdefault((t["source"].split("/")[-1], t["x"], t["y"]), []).append(a)
    keys = ("bbox", "iscrowd", "tile_cut", "difficult", "area")
    got = {k: [tuple(a.get(f) for f in keys) for a in v] for k, v in by_tile.items()}
    assert got == {
        ("big.png", 0, 0): [([10, 10, 20, 20], 0, None, 0, 400.0),
                             ([120, 30, 8, 10], 1, 1, 0, 80.0),
                             ([110, 40, 18, 10], 0, None, 1, 180.0)],
        ("big.png", 96, 0): [([24, 30, 20, 10], 0, None, 0, 200.0),
                              ([14, 40, 30, 10], 0, None, 1, 300.0)],
        ("big.png", 172, 72): [([78, 78, 20, 20], 0, None, 0, 400.0)],
        ("small.png", 0, 0): [([5, 5, 10, 10], 0, None, None, 100.0)]}
    assert [a["id"] for a in data["annotations"]] == list(range(1, 8))
    # the tiles are the source's pixels, cut where the records say
    source = _pattern(200, 300)
    for im in data["images"][:6]:
        x, y = im["tile"]["x"], im["tile"]["y"]
        tile = np.asarray(Image.open(out.parent / im["file_name"]))
        assert np.array_equal(tile, source[y:y + 128, x:x + 128])
    r = cli("data", "check", out)
    assert r.exit_code == 0, r.output


def test_tile_keeps_at_most_the_ratio_of_empty_tiles(cli, big_set, tmp_path):
    r = cli("data", "tile", big_set, "--size", 128, "--overlap", 0.25, "--negatives", 0,
            "--out", tmp_path / "a.json")
    assert r.exit_code == 0, r.output
    assert len(load_annotations(tmp_path / "a.json").images) == 4  # 3 tiles with objects + small
    # 4 tiles with objects (the small image counts) x 0.5 = 2 of the 3 empty tiles
    r = cli("data", "tile", big_set, "--size", 128, "--overlap", 0.25, "--negatives", 0.5,
            "--out", tmp_path / "b.json")
    assert r.exit_code == 0 and "2 of 3 empty tiles kept" in r.output
    assert len(load_annotations(tmp_path / "b.json").images) == 6


def _tile(objects, whole=False):
    return Tile({"id": 1}, Window(0, 0, 8, 8), [{"iscrowd": 0}] * objects, whole)


def test_choose_negatives_seeded_ratio_and_whole_images_always_kept():
    tiles = [_tile(1) for _ in range(10)] + [_tile(0) for _ in range(20)] + [_tile(0, True)]
    for t, n in zip(tiles[10:30], range(20), strict=True):
        t.window = Window(n, 0, 8, 8)
    kept = choose_negatives(tiles, 0.5, seed=3)
    empty = [t for t in kept if not t.has_objects and not t.whole]
    assert len(kept) == 10 + 5 + 1 and len(empty) == 5
    assert [t.window for t in choose_negatives(tiles, 0.5, seed=3)] == [t.window for t in kept]
    others = {tuple(t.window.x for t in choose_negatives(tiles, 0.5, seed=s)
                    if not t.has_objects and not t.whole) for s in range(5)}
    assert len(others) > 1  # the seed chooses
    assert kept == [t for t in tiles if t in kept]  # tile order kept
    assert len(choose_negatives(tiles, None, seed=0)) == 31
    assert len(choose_negatives(tiles, 0, seed=0)) == 11
    # a tile holding only ignore regions has no object: it is an empty tile
    assert not Tile({"id": 1}, Window(0, 0, 8, 8), [{"iscrowd": 1, "tile_cut": 1}], False
                    ).has_objects


def test_plan_counts_objects_larger_than_the_overlap_or_the_tile():
    ann = Annotations([{"id": 1, "file_name": "x.png", "width": 1000, "height": 400}],
                      [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30],
                        "area": 900.0, "iscrowd": 0},   # smaller than the overlap: whole
                       {"id": 2, "image_id": 1, "category_id": 1, "bbox": [310, 10, 100, 30],
                        "area": 3000.0, "iscrowd": 0},  # wider than the 80 px overlap
                       {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 900, 300],
                        "area": 270000.0, "iscrowd": 0},  # far larger than a tile
                       {"id": 4, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 4],
                        "area": 0.0, "iscrowd": 0}],
                      [{"id": 1, "name": "a"}])
    tiles, summary = plan_tiles(ann, 400, 0.2, 0.5)
    assert [t.window.x for t in tiles] == [0, 320, 600]
    assert summary.whole_nowhere == 2 and summary.only_ignored == 1 and summary.degenerate == 1
    assert summary.overlap_px == 80
    notes = summary.notes()
    assert len(notes) == 3 and notes[0].startswith("2 object(s) lie whole in no tile")
    assert "(80 px)" in notes[0] and notes[1].startswith("1 object(s) are under --min-visible")
    # object 2 (x 310..410) is wider than the 80 px overlap and crosses it: 90 % in tile 0
    # (0..400) and 90 % in tile 1 (320..720), whole in neither; object 3 is at most 44 % in a
    # tile, so an ignore region in each
    assert [(a["bbox"], a["iscrowd"]) for t in tiles[:2] for a in t.annotations
            if a["id"] == 2] == [([310, 10, 90, 30], 0), ([0, 10, 90, 30], 0)]
    assert all(a.get("tile_cut") == 1 for t in tiles for a in t.annotations if a["id"] == 3)


def test_refusals_are_one_line_exit_2(cli, big_set, tmp_path):
    def refused(*args, match):
        r = cli("data", "tile", big_set, *args)
        assert r.exit_code == 2 and match in r.output and "Traceback" not in r.output, r.output

    out = tmp_path / "t.json"
    refused("--size", 16, "--out", out, match="at least 32")
    refused("--size", 128, "--overlap", 1, "--out", out, match="[0, 1)")
    refused("--size", 128, "--min-visible", 0, "--out", out, match="(0, 1]")
    refused("--size", 128, "--negatives", "some", "--out", out, match="number or 'all'")
    refused("--size", 128, "--negatives", -1, "--out", out, match="0 or more")
    refused("--size", 128, "--out", big_set, match="same file as the input")
    refused("--size", 128, "--out", big_set.parent / "big.png", match="same file as the input")
    refused("--size", 128, "--max-pixels", 1000, "--out", out, match="cap of 1,000")
    assert not out.exists() and not (tmp_path / "t_tiles").exists()
    (tmp_path / "t_tiles").mkdir()
    (tmp_path / "t_tiles" / "mine.png").write_bytes(b"x")
    refused("--size", 128, "--out", out, match="already exists and holds files")
    assert (tmp_path / "t_tiles" / "mine.png").read_bytes() == b"x"


def test_a_failure_leaves_no_tiles_and_no_json(cli, big_set, tmp_path):
    data = json.loads(big_set.read_text())
    data["images"].append({"id": 3, "file_name": "gone.png", "width": 300, "height": 200})
    data["images"].append({"id": 4, "file_name": "big.png", "width": 299, "height": 200})
    (big_set.parent / "gone.json").write_text(json.dumps({**data, "images": data["images"][:3]}))
    (big_set.parent / "size.json").write_text(json.dumps(
        {**data, "images": data["images"][:2] + data["images"][3:]}))
    for name, match in (("gone.json", "image not found"), ("size.json", "JSON says 299x200")):
        r = cli("data", "tile", big_set.parent / name, "--size", 128, "--negatives", "all",
                "--out", tmp_path / "o" / "t.json")
        assert r.exit_code == 2 and match in r.output, r.output
        # refused as the dataset is read, before any output
        assert not (tmp_path / "o").exists()


def test_cli_defaults_are_the_library_defaults():
    from frcnn_cli.cli.data import tile
    from frcnn_cli.data.images import MAX_PIXELS

    defaults = {n: p.default for n, p in inspect.signature(tile).parameters.items()}
    assert defaults["overlap"] == DEFAULT_OVERLAP
    assert defaults["min_visible"] == DEFAULT_MIN_VISIBLE
    assert float(defaults["negatives"]) == DEFAULT_NEGATIVES
    assert defaults["max_pixels"] == MAX_PIXELS
