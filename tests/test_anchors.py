"""Anchors: the original's 9 base anchors bit for bit, the grid, and the coverage report."""

import json

import pytest
import torch

from frcnn_cli.analysis.coverage import coverage, suggest_anchors, with_anchors
from frcnn_cli.analysis.objects import ObjectSet
from frcnn_cli.config import load_recipe
from frcnn_cli.model.anchors import (
    AnchorGenerator,
    base_anchor_table,
    generate_anchors,
    to_continuous,
)

# py-faster-rcnn lib/rpn/generate_anchors.py, the table it quotes (inclusive, 1-based).
ORIGINAL = [[-83, -39, 100, 56], [-175, -87, 192, 104], [-359, -183, 376, 200],
            [-55, -55, 72, 72], [-119, -119, 136, 136], [-247, -247, 264, 264],
            [-35, -79, 52, 96], [-79, -167, 96, 184], [-167, -343, 184, 360]]


def test_nine_base_anchors_match_the_original_table():
    anchors = generate_anchors(16, [0.5, 1, 2], [8, 16, 32])
    assert anchors.tolist() == ORIGINAL


def test_continuous_anchors_keep_size_and_centre_on_the_first_cell():
    cont = to_continuous(generate_anchors())
    assert cont[0].tolist() == [-84, -40, 100, 56]
    wh = torch.stack([cont[:, 2] - cont[:, 0], cont[:, 3] - cont[:, 1]], dim=1)
    assert wh.tolist()[:3] == [[184, 96], [368, 192], [736, 384]]
    centres = (cont[:, :2] + cont[:, 2:]) / 2
    assert torch.equal(centres, torch.full((9, 2), 8.0))  # centre of pixels 0..15
    # Ratio h/w is 0.5, 1, 2 up to the original's rounding; areas stay near scale^2 * 256.
    assert torch.allclose(wh[:, 1] / wh[:, 0], torch.tensor([0.5] * 3 + [1.0] * 3 + [2.0] * 3,
                                                        dtype=torch.float64), rtol=0.05)


def test_grid_shifts_base_anchors_place_by_place():
    grid = AnchorGenerator.from_recipe(load_recipe(None))  # stride 16, scales 8/16/32
    anchors = grid.grid([(3, 4)])
    assert anchors.shape == (3 * 4 * 9, 4)
    base = grid.bases[0]
    assert torch.equal(base, to_continuous(generate_anchors()).float())
    y, x = 2, 1  # place (y, x) holds anchors (y * W + x) * k ... + k - 1
    i = (y * 4 + x) * 9
    assert torch.equal(anchors[i:i + 9], base + torch.tensor([16.0, 32, 16, 32]))
    assert grid.grid([(3, 4)]) is anchors  # cached per size and device


def _objects(boxes, labels, size=(64, 64)):
    """Objects in an image the recipe does not resize (original pixels = resized ones)."""
    boxes = torch.tensor(boxes, dtype=torch.float32)
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double()
    return ObjectSet(boxes, torch.tensor([size] * len(boxes)), torch.tensor(labels), areas,
                     ["a", "b"])


def test_coverage_counts_best_anchor_iou_per_class_and_size():
    recipe = load_recipe(None, ["anchors.scales=[2]", "anchors.ratios=[1]"])
    # 32 px anchors on a 64 px image: only the 4 inside anchors count (border rule).
    objects = _objects([[8, 8, 40, 40],      # exactly an anchor: IoU 1
                        [16, 16, 48, 48],    # between four anchors: IoU 576 / 1472 = 0.39
                        [0, 0, 6, 6]],       # tiny corner object: IoU 36 / 1024 < 0.3
                       [1, 1, 2])
    report = coverage(objects, [2], [1], recipe)
    assert report["all"]["objects"] == 3
    assert report["per_class"]["a"]["positive"] == pytest.approx(0.5)
    assert report["per_class"]["a"]["best_only"] == pytest.approx(0.5)
    assert report["per_class"]["b"]["missed"] == pytest.approx(1.0)
    assert report["per_size"]["small"]["objects"] == 1  # COCO: small is below 32^2 px
    assert report["per_size"]["medium"]["objects"] == 2
    assert report["per_class_size"]["b"]["large"]["objects"] == 0


def test_suggestions_beat_the_recipe():
    recipe = load_recipe(None, ["anchors.scales=[8]", "anchors.ratios=[1]"])
    boxes = [[x, y, x + s, y + s] for s in (20, 40) for x in (30, 60) for y in (30, 60)]
    objects = _objects(boxes, [1] * len(boxes), size=(160, 160))
    suggestions = suggest_anchors(objects, recipe)
    assert suggestions and suggestions[0]["positive"] > 0
    assert all(s["positive"] > 0 for s in suggestions)
    assert suggestions == sorted(suggestions, key=lambda s: -s["positive"])


def test_cli_prints_table_and_writes_json(cli, tmp_path):
    out = tmp_path / "a.json"
    r = cli("anchors", "--json", out)
    assert r.exit_code == 0, r.output
    assert "-83" in r.output and "376" in r.output
    data = json.loads(out.read_text())
    assert data["base_anchors"] == ORIGINAL
    assert data["base_anchors_continuous"][0] == [-84, -40, 100, 56]


def test_cli_coverage_report(cli, shapes_data, tmp_path):
    out = tmp_path / "cov.json"
    r = cli("anchors", "--recipe", "shapes", "--data", shapes_data / "train.json",
            "--json", out)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    total = data["coverage"]["all"]
    assert total["objects"] > 0
    assert total["positive"] + total["best_only"] + total["missed"] == pytest.approx(1.0)
    assert "circle" in data["coverage"]["per_class"]


def test_cli_options_override_recipe_and_reject_bad_numbers(cli, tmp_path):
    out = tmp_path / "a.json"
    r = cli("anchors", "--stride", "8", "--scales", "4", "--ratios", "1", "--json", out)
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["base_anchors"] == [[-11.0, -11.0, 20.0, 20.0]]
    r = cli("anchors", "--scales", "8,x")
    assert r.exit_code == 2 and "comma-separated" in r.output
    for bad in ("8,nan", "inf", "0"):
        r = cli("anchors", "--ratios", bad)
        assert r.exit_code == 2 and "positive numbers" in r.output, bad


def test_base_anchor_table_names_each_anchors_ratio_scale_and_size():
    table = base_anchor_table(16, [0.5, 1, 2], [8, 16, 32])
    assert [b.inclusive for b in table] == ORIGINAL
    assert [(b.ratio, b.scale) for b in table[:4]] == [(0.5, 8), (0.5, 16), (0.5, 32), (1, 8)]
    assert (table[0].width, table[0].height) == (184, 96)
    assert table[0].continuous == [-84, -40, 100, 56]


def test_options_patch_the_recipes_anchors():
    recipe = load_recipe(None)
    assert with_anchors(recipe) is recipe
    r = with_anchors(recipe, stride=8, scales=[4], ratios=[1])
    assert (r.anchors.stride, r.anchors.base_size, r.anchors.scales, r.anchors.ratios) == \
        (8, 8, [4], [1])  # the base anchor follows the stride unless given
    assert with_anchors(recipe, stride=8, base_size=12).anchors.base_size == 12
    assert recipe.anchors.stride == 16 and recipe.anchors.scales == [8, 16, 32]  # unchanged


@pytest.mark.parametrize(("fg", "bg", "a", "b"), [
    (0.7, 0.3, (0.5, 0.5, 0.0), (0.0, 0.0, 1.0)),   # the paper's thresholds
    (0.35, 0.3, (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),  # IoU 0.39 is positive at 0.35
    (0.7, 0.4, (0.5, 0.0, 0.5), (0.0, 0.0, 1.0)),   # and nearly missed below 0.4
])
def test_coverage_uses_the_recipes_rpn_thresholds(fg, bg, a, b):
    recipe = load_recipe(None, ["anchors.scales=[2]", "anchors.ratios=[1]",
                                f"rpn.fg_iou_thresh={fg}", f"rpn.bg_iou_thresh={bg}"])
    objects = _objects([[8, 8, 40, 40], [16, 16, 48, 48], [0, 0, 6, 6]], [1, 1, 2])
    report = coverage(objects, [2], [1], recipe)
    assert (report["fg_iou_thresh"], report["bg_iou_thresh"]) == (fg, bg)
    for name, expected in (("a", a), ("b", b)):
        got = report["per_class"][name]
        assert (got["positive"], got["best_only"], got["missed"]) == pytest.approx(expected)


def test_cli_coverage_headers_and_json_say_the_thresholds(cli, shapes_data, tmp_path):
    out = tmp_path / "cov.json"
    r = cli("anchors", "--recipe", "shapes", "--set", "rpn.fg_iou_thresh=0.6", "--data",
            shapes_data / "train.json", "--json", out)
    assert r.exit_code == 0, r.output
    assert ">= 0.6" in r.output and "0.3-0.6" in r.output and "0.7" not in r.output
    data = json.loads(out.read_text())
    assert (data["coverage"]["fg_iou_thresh"], data["coverage"]["bg_iou_thresh"]) == (0.6, 0.3)
    # the suggestions beat the recipe's share at the same threshold
    assert all(s["positive"] > data["coverage"]["all"]["positive"]
               for s in data["suggestions"])


def test_cli_coverage_leaves_out_boxes_training_ignores(cli, shapes_data, tmp_path):
    dataset = json.loads((shapes_data / "train.json").read_text())
    objects = sum(not a.get("iscrowd", 0) for a in dataset["annotations"])
    width = dataset["images"][0]["width"]
    for a, bbox in zip(dataset["annotations"], [[float("nan"), 5, 10, 10],
                                                [5, 5, float("inf"), 10],
                                                [5, 5, 0, 10],
                                                [width + 1, 5, 10, 10]], strict=False):
        a["bbox"] = bbox
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(dataset))  # json writes NaN and Infinity, and reads them
    out = tmp_path / "cov.json"
    r = cli("anchors", "--recipe", "shapes", "--data", broken, "--json", out)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # rich wraps long lines
    # the dataset door leaves them out, as it does for training and evaluation
    assert "3 degenerate boxes, 1 box outside image left out" in text, text
    assert "frcnn data check" in text
    report = json.loads(out.read_text())["coverage"]
    assert report["all"]["objects"] == objects - 4
    total = report["all"]
    assert total["positive"] + total["best_only"] + total["missed"] == pytest.approx(1.0)


# torchvision's AnchorGenerator for fasterrcnn_resnet50_fpn: sizes 32..512, one per level
TORCHVISION_P2 = [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]


def test_fpn_anchors_are_torchvisions_level_by_level():
    from torchvision.models.detection.anchor_utils import AnchorGenerator as Torchvision
    from torchvision.models.detection.image_list import ImageList

    recipe = load_recipe("coco-r50-fpn")
    ours = AnchorGenerator.from_recipe(recipe, (4, 8, 16, 32, 64))
    assert ours.bases[0].tolist() == TORCHVISION_P2
    theirs = Torchvision(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    # a 160 x 224 batch: P6 is 3 x 4, which torchvision strides by 160 // 3 and 224 // 4
    maps = [(40, 56), (20, 28), (10, 14), (5, 7), (3, 4)]
    images = ImageList(torch.zeros(1, 3, 160, 224), [(150, 200)])
    expected = theirs(images, [torch.zeros(1, 1, h, w) for h, w in maps])[0]
    assert torch.equal(ours.grid(maps, torch.tensor([160, 224])), expected)
    paper = AnchorGenerator.from_recipe(load_recipe("coco-r50-fpn", ["anchors.style=paper"]),
                                        (4, 8, 16, 32, 64))
    centres = (paper.bases[0][:, :2] + paper.bases[0][:, 2:]) / 2
    assert torch.equal(centres, torch.full((3, 2), 2.0))  # the centre of P2's first cell


def test_coverage_per_level_counts_each_object_on_its_best_anchors_level():
    recipe = load_recipe("coco-r50-fpn", ["input.min_size=256", "input.max_size=256"])
    objects = _objects([[4, 4, 36, 36],        # P2's 32 px anchor at (20, 20): IoU 1
                        [0, 0, 128, 128],      # P4's 128 px anchor at (64, 64): IoU 1
                        [100, 100, 160, 160]],  # 60 px: P3's 64 px anchor, IoU 0.88
                       [1, 1, 2], size=(256, 256))
    report = coverage(objects, recipe.anchors.scales, recipe.anchors.ratios, recipe)
    levels = report["per_level"]
    assert list(levels) == ["P2", "P3", "P4", "P5", "P6"]
    assert [levels[n]["objects"] for n in levels] == [1, 1, 1, 0, 0]
    assert levels["P2"]["positive"] == 1.0 and levels["P4"]["sizes"] == [128.0]
    assert report["all"]["positive"] == 1.0
    assert suggest_anchors(objects, recipe) == []  # single-map anchors only


def test_cli_prints_fpn_anchors_per_level(cli, tmp_path):
    out = tmp_path / "a.json"
    r = cli("anchors", "--recipe", "coco-r50-fpn", "--json", out)
    assert r.exit_code == 0, r.output
    assert "P6" in r.output and "torchvision style" in r.output
    data = json.loads(out.read_text())
    assert [lv["name"] for lv in data["levels"]] == ["P2", "P3", "P4", "P5", "P6"]
    assert data["levels"][0]["anchors"] == TORCHVISION_P2
    assert data["levels"][4]["stride"] == 64 and data["levels"][4]["sizes"] == [512]
    r = cli("anchors", "--recipe", "coco-r50-fpn", "--scales", "1,2")
    assert r.exit_code == 2 and "anchors.sizes" in r.output


def _dots(side, image=256, count=30):
    """3 images of ``image`` px, each with ``count`` ``side`` px squares at random places."""
    import numpy as np

    from frcnn_cli.data.annotations import Annotations

    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"{i}.png", "width": image, "height": image}
              for i in (1, 2, 3)]
    anns = [{"id": 1 + k + count * (i - 1), "image_id": i, "category_id": 1,
             "bbox": [*rng.uniform(0, image - side, 2).round(1).tolist(), side, side]}
            for i in (1, 2, 3) for k in range(count)]
    return Annotations(images, anns, [{"id": 1, "name": "dot"}])


def test_small_objects_get_larger_inputs_tried_with_their_cost():
    from frcnn_cli.analysis.coverage import INPUT_SCALES, SCALE_GAIN, scale_advice

    recipe = load_recipe("shapes")  # stride 16, input 256 x 256, anchors 20..112 px
    advice = scale_advice(_dots(16), recipe)
    # 16 px squares at 256 px: one stride across, under SMALL_FOR_STRIDE = 4 strides
    assert advice["small"] and advice["median_side"] == pytest.approx(16)
    scales = advice["scales"]
    assert [s["factor"] for s in scales] == [1.0, *INPUT_SCALES]
    assert [s["min_size"] for s in scales] == [256, 384, 512, 768]
    assert [s["max_size"] for s in scales] == [256, 384, 512, 768]
    # the cost is the pixels per image: (factor)^2 for square images
    assert [s["pixels"] for s in scales] == [256 ** 2, 384 ** 2, 512 ** 2, 768 ** 2]
    assert [s["cost"] for s in scales] == pytest.approx([1, 2.25, 4, 9])
    # at 256 px no anchor reaches IoU 0.7 with a 16 px square (the smallest, 20 px, gives
    # 256 / 400 = 0.64 at best); a larger input does
    assert scales[0]["positive"] == 0.0
    assert scales[-1]["best"]["positive"] > 0.5
    chosen = advice["advice"]
    assert chosen is not None and chosen["factor"] > 1
    assert chosen["best"]["positive"] >= scales[0]["best"]["positive"] + SCALE_GAIN
    assert chosen["best"]["positive"] >= max(s["best"]["positive"] for s in scales) - 0.05
    # objects 5 strides across are not small: nothing is tried
    big = scale_advice(_dots(80), recipe)
    assert not big["small"] and big["scales"] == [] and big["advice"] is None


def test_cli_says_what_input_to_set_for_small_objects(cli, tmp_path):
    from frcnn_cli.data.annotations import save_annotations

    path = tmp_path / "dots.json"
    save_annotations(_dots(16), path)
    out = tmp_path / "anchors.json"
    r = cli("anchors", "--recipe", "shapes", "--data", path, "--json", out)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    chosen = json.loads(out.read_text())["input_scale"]["advice"]
    assert "objects small for stride 16 (median side 16 px" in text
    assert (f"advice: train with --set input.min_size={chosen['min_size']} --set "
            f"input.max_size={chosen['max_size']}") in text
    assert f"for {chosen['cost']:.2g}x the pixels per image" in text
