"""Synthetic shapes: deterministic, honest boxes, sizes and emptiness as promised."""

from __future__ import annotations

import numpy as np

from frcnn_cli.data.annotations import load_annotations
from frcnn_cli.data.images import read_image
from frcnn_cli.data.synth import SynthConfig, draw_image


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
            mask, (x, y, w, h) = _shape_mask(shape, cfg, rng)
            x0, y0, x1, y1 = int(x), int(y), int(x + w), int(y + h)
            assert mask[y0:y1, x0:x1].sum() == mask.sum()
            inner = mask[y0:y1, x0:x1]
            assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()
            if shape == "square":
                assert inner.all()
