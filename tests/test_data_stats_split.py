"""`frcnn data stats` numbers after the recipe's resize, and `frcnn data split`."""

from __future__ import annotations

import json

import pytest

from frcnn_cli.analysis.stats import dataset_stats
from frcnn_cli.config import load_recipe
from frcnn_cli.data.annotations import Annotations, load_annotations
from frcnn_cli.data.split import split_annotations


def _dataset():
    images = [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
              {"id": 2, "file_name": "b.jpg", "width": 100, "height": 400},
              {"id": 3, "file_name": "c.jpg", "width": 50, "height": 50}]
    anns = [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 20, 10]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 40, 40], "difficult": 1},
            {"id": 3, "image_id": 2, "category_id": 5, "bbox": [0, 0, 100, 100]},
            {"id": 4, "image_id": 2, "category_id": 5, "bbox": [0, 0, 0, 5]}]
    cats = [{"id": 5, "name": "e"}, {"id": 2, "name": "b"}]
    return Annotations(images, anns, cats)


def test_stats_after_resize():
    st = dataset_stats(_dataset(), load_recipe(None, ["input.min_size=200",
                                                      "input.max_size=400"]))
    # image 1: 100 -> 200 (x2); image 2: 400 long side capped -> x1
    assert st.box_widths.tolist() == [40, 80, 100]
    assert st.box_heights.tolist() == [20, 80, 100]
    assert st.aspect_ratios.tolist() == [0.5, 1.0, 1.0]
    assert st.invalid_boxes == 1 and st.images_without_objects == 1
    assert st.objects_per_image.tolist() == [2, 2, 0]
    assert [(c["name"], c["objects"], c["images"], c["difficult"]) for c in st.classes] == \
        [("b", 1, 1, 1), ("e", 3, 2, 0)]
    assert st.coco_sizes == {"small": 1, "medium": 1, "large": 1}  # 200, 1600, 10000 px²


def test_stats_cli_with_plots_and_json(cli, shapes_data, tmp_path):
    r = cli("data", "stats", shapes_data / "train.json", "--recipe", "shapes", "--plot",
            tmp_path / "plots", "--json", tmp_path / "stats.json")
    assert r.exit_code == 0, r.output
    assert "24 images" in r.output and "circle" in r.output
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == \
        ["aspect_ratios.png", "box_sizes.png", "classes.png", "objects_per_image.png"]
    data = json.loads((tmp_path / "stats.json").read_text())
    assert data["images"] == 24 and data["resize"] == {"min_size": 256, "max_size": 256}
    # 128 px images doubled to 256: the smallest box is still at least 8 % of the side
    assert data["distributions"]["box width"]["min"] >= 0.08 * 256 - 2


def test_split_is_deterministic_and_keeps_classes_on_both_sides():
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in range(1, 21)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 5, 5]} for i in range(1, 21)]
    # a rare class in two images only, and one in a single image
    anns += [{"id": 100, "image_id": 3, "category_id": 2, "bbox": [1, 1, 2, 2]},
             {"id": 101, "image_id": 17, "category_id": 2, "bbox": [1, 1, 2, 2]},
             {"id": 102, "image_id": 9, "category_id": 3, "bbox": [1, 1, 2, 2]}]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    ann = Annotations(images, anns, cats)
    for seed in range(6):
        train, val = split_annotations(ann, 0.25, seed)
        assert len(val.images) == 5 and len(train.images) == 15
        assert {3, 17} & {im["id"] for im in val.images}
        assert {3, 17} & {im["id"] for im in train.images}
        assert sorted(im["id"] for im in train.images + val.images) == list(range(1, 21))
    a, b = split_annotations(ann, 0.25, 4), split_annotations(ann, 0.25, 4)
    assert a[1].images == b[1].images


def test_split_cli(cli, shapes_data, tmp_path):
    r = cli("data", "split", shapes_data / "train.json", "--val-fraction", 0.25, "--seed", 1,
            "--out", tmp_path / "parts")
    assert r.exit_code == 0, r.output
    train = load_annotations(tmp_path / "parts/train.json")
    val = load_annotations(tmp_path / "parts/val.json")
    assert len(train.images) == 18 and len(val.images) == 6
    assert all(val.image_path(im).is_file() for im in val.images)
    first = (tmp_path / "parts/val.json").read_bytes()
    cli("data", "split", shapes_data / "train.json", "--val-fraction", 0.25, "--seed", 1,
        "--out", tmp_path / "again")
    assert json.loads((tmp_path / "again/val.json").read_bytes())["images"] == \
        json.loads(first)["images"]
    r = cli("data", "split", tmp_path / "parts/train.json", "--val-fraction", 0.5,
            "--out", tmp_path / "parts")
    assert r.exit_code == 2 and "same file as the input" in r.output


@pytest.mark.parametrize("fraction", [0, 1.5])
def test_split_rejects_bad_fraction(cli, shapes_data, tmp_path, fraction):
    r = cli("data", "split", shapes_data / "train.json", "--val-fraction", fraction,
            "--out", tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output
