"""Synthetic shapes: deterministic, honest boxes, sizes and emptiness as promised."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from frcnn_cli.data.annotations import load_annotations
from frcnn_cli.data.images import read_image
from frcnn_cli.data.synth import SynthConfig, draw_image, synthesize
from frcnn_cli.errors import InputError


def test_same_seed_gives_byte_identical_json(cli, tmp_path):
    for name in ("a", "b"):
        r = cli("data", "synth", tmp_path / name, "--train", 12, "--val", 4, "--size", 96,
                "--seed", 7)
        assert r.exit_code == 0, r.output
    for split in ("train", "val"):
        assert (tmp_path / "a" / f"{split}.json").read_bytes() == \
            (tmp_path / "b" / f"{split}.json").read_bytes()
    r = cli("data", "synth", tmp_path / "c", "--train", 12, "--val", 4, "--size", 96,
            "--seed", 8)
    assert (tmp_path / "a/train.json").read_bytes() != (tmp_path / "c/train.json").read_bytes()


def test_workers_do_not_change_the_result(tmp_path):
    from frcnn_cli.data.synth import synthesize

    synthesize(tmp_path / "one", train=70, val=0, size=64, seed=1, workers=1)
    synthesize(tmp_path / "two", train=70, val=0, size=64, seed=1, workers=2)
    assert (tmp_path / "one/train.json").read_bytes() == (tmp_path / "two/train.json").read_bytes()


def test_shapes_data_fixture_is_loadable(shapes_data):
    ann = load_annotations(shapes_data / "train.json")
    assert len(ann.images) == 24 and [c["name"] for c in ann.classes] == \
        ["circle", "square", "triangle"]
    image = ann.images[0]
    pixels = read_image(ann.image_path(image))
    assert pixels.shape == (128, 128, 3)
    assert len(load_annotations(shapes_data / "val.json").images) == 8


def test_boxes_sizes_visibility_and_empty_images():
    cfg = SynthConfig(size=256, num_classes=3)
    sides, empty, counts = [], 0, np.zeros(4, int)
    for i in range(150):
        image, objects = draw_image(cfg, np.random.default_rng([0, 1, i]))
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        empty += not objects
        for o in objects:
            x, y, w, h = o["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 256 and y + h <= 256
            sides.append(max(w, h))
            counts[o["category_id"]] += 1
    assert 0 < empty < 30
    assert min(counts[1:]) > 50  # all three classes well represented
    # sides from 8 % to 50 % of the image, within rasterisation and the stretch of a few shapes
    assert 17 <= min(sides) <= 30 and 120 <= max(sides) <= 150


def test_box_is_the_drawn_extent():
    """The box touches the shape's pixels on all four sides and holds all of them."""
    from frcnn_cli.data.synth import SHAPES, _shape_mask

    cfg = SynthConfig(size=128)
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        for _ in range(5):
            (left, top, window), (x, y, w, h) = _shape_mask(shape, cfg, rng)
            mask = np.zeros((128, 128), bool)
            mask[top:top + window.shape[0], left:left + window.shape[1]] = window
            x0, y0, x1, y1 = int(x), int(y), int(x + w), int(y + h)
            assert mask[y0:y1, x0:x1].sum() == mask.sum()
            inner = mask[y0:y1, x0:x1]
            assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()
            if shape == "square":
                assert inner.all()


def test_default_output_is_unchanged(tmp_path):
    """The demo's numbers rest on these exact images: the boxes of a small set, as written
    before large images came (an OpenCV that rasterises differently changes them too)."""
    synthesize(tmp_path / "s", train=24, val=0, size=96, seed=0, num_classes=6, workers=1)
    data = json.loads((tmp_path / "s/train.json").read_text())
    assert data.pop("frcnn") == {"written_by": "data synth"}  # the mark came later
    assert hashlib.sha256((json.dumps(data, indent=2) + "\n").encode()).hexdigest() == \
        "11fa0ca816c8b995ce5b4785eee29f73a225b90c1534b7ecf207f0fd8aebb251"


def test_large_images_with_many_small_objects():
    cfg = SynthConfig(size=800, num_classes=3, max_objects=80, min_side=12 / 800,
                      max_side=30 / 800)
    counts, sides = [], []
    for i in range(4):
        image, objects = draw_image(cfg, np.random.default_rng([0, 1, i]))
        assert image.shape == (800, 800, 3)
        counts.append(len(objects))
        for o in objects:
            x, y, w, h = o["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 800 and y + h <= 800
            sides += [w, h]
    assert max(counts) > 30 and max(counts) <= 80
    # 12 to 30 px, stretched by up to 13 % for the shapes that stretch
    assert 10 <= min(sides) <= 14 and 28 <= max(sides) <= 35


def test_crowded_images_keep_the_placement_rules():
    """Many objects on a small image, where placements are refused often: no two boxes
    overlap above IoU 0.3, and the objects are those the rules (70 % visible) placed, pinned
    by their boxes."""
    import json

    from torchvision.ops import box_iou

    cfg = SynthConfig(size=128, num_classes=6, max_objects=40, min_side=10 / 128,
                      max_side=60 / 128)
    drawn = [draw_image(cfg, np.random.default_rng([0, 1, i]))[1] for i in range(3)]
    assert [len(objects) for objects in drawn] == [23, 38, 6]
    for objects in drawn[:2]:
        b = torch.tensor([o["bbox"] for o in objects])
        b[:, 2:] += b[:, :2]
        iou = box_iou(b, b) - torch.eye(len(b))
        assert iou.max() <= 0.3
    assert hashlib.sha256(json.dumps(drawn).encode()).hexdigest() == \
        "4b0f35e058ee268dfd4650e06ee572cbbdea1b40211f0a12008c59e8779133f2"


def test_large_options_through_the_cli_and_their_refusals(cli, tmp_path):
    r = cli("data", "synth", tmp_path / "big", "--train", 2, "--val", 0, "--size", 500,
            "--objects", 40, "--min-object", 12, "--max-object", 24, "--seed", 1)
    assert r.exit_code == 0, r.output
    ann = load_annotations(tmp_path / "big/train.json")
    assert [(im["width"], im["height"]) for im in ann.images] == [(500, 500)] * 2
    assert all(max(a["bbox"][2:]) <= 28 for a in ann.annotations)
    assert max(len(ann.objects(im["id"])) for im in ann.images) > 5  # more than the default
    for args in (("--objects", 0), ("--min-object", 30, "--max-object", 20),
                 ("--min-object", 3), ("--max-object", 499)):
        r = cli("data", "synth", tmp_path / "bad", "--size", 500, *args)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    with pytest.raises(InputError, match="--min-object"):
        synthesize(tmp_path / "bad", size=100, min_object=60)  # above the default 50 px max
