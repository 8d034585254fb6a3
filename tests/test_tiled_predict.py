"""Tiled prediction and evaluation: a 2000 px image whose small objects vanish when the whole
image is shrunk to the network's input, and the commands' --tile options on a real model.

The detector of the first tests is a stand-in with the one property that matters here: like a
CNN, it cannot see an object a few pixels wide. It shrinks each image it is given by the
model's own resize rule (the ``shapes`` recipe: 256 px) and reports every bright blob at
least :data:`SEEN` pixels wide there, in the input image's pixels, as ``model.detect`` does.
Training a real detector on 2000 px images takes minutes (benchmarks/large_images.py does).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_cli import load_model
from frcnn_cli.config import load_recipe
from frcnn_cli.data.annotations import Annotations, load_annotations
from frcnn_cli.data.images import read_image
from frcnn_cli.data.tiling import tile_windows
from frcnn_cli.evaluation.inference import evaluate_model
from frcnn_cli.evaluation.predict import find_images, plan_outputs, predict_files
from frcnn_cli.geometry import resized_shape
from frcnn_cli.inference.tiled import Tiling, detect_tiled
from frcnn_cli.model.transform import resize_image
from frcnn_cli.progress import Reporter, Task

SEEN = 6  # pixels: the stand-in's smallest visible blob, in its resized input
SIZE = 2000
TILE, OVERLAP = 256, 0.25  # windows every 192 px: seams at x, y = 256, 448, ...


class BlobDetector(torch.nn.Module):
    """``detect(images)``: the bright blobs at least SEEN px wide after the recipe's resize."""

    classes = [{"id": 1, "name": "square"}]

    def __init__(self):
        super().__init__()
        self.recipe = load_recipe("shapes")  # input 256 x 256, test NMS 0.3
        self.calls = []  # (number of images, their sizes, the storage they are views of)

    def detect(self, images, score_thresh=None):
        import cv2

        self.calls.append((len(images), [tuple(im.shape[-2:]) for im in images],
                           {im.untyped_storage().data_ptr() for im in images}))
        out = []
        for image in images:
            h, w = image.shape[-2:]
            nh, nw = resized_shape(h, w, self.recipe.input.min_size, self.recipe.input.max_size)
            small = (resize_image(image, (nh, nw))[0] > 0.5).numpy().astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(small, connectivity=4)
            boxes = [[x, y, x + bw, y + bh] for x, y, bw, bh, _ in stats[1:n]
                     if min(bw, bh) >= SEEN]
            boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            boxes *= torch.tensor([w / nw, h / nh, w / nw, h / nh])
            out.append({"boxes": boxes, "scores": torch.full((len(boxes),), 0.9),
                        "labels": torch.ones(len(boxes), dtype=torch.int64)})
        return out


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """A 2000 x 2000 image of 80 white squares of 12-40 px on black, 8 of them across tile
    seams, as a one-image dataset."""
    folder = tmp_path_factory.mktemp("large")
    rng = np.random.default_rng(0)
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    taken = np.zeros((SIZE, SIZE), bool)
    boxes = []
    seams = [(256 - 10, 300), (600, 448 - 15), (1216 - 20, 1216 - 20), (640 - 5, 1000),
             (1000, 832 - 30), (1408 - 12, 200), (200, 1600 - 8), (1800, 1792 - 20)]
    while len(boxes) < 80:
        side = int(rng.integers(12, 41))
        x, y = seams[len(boxes)] if len(boxes) < len(seams) else rng.integers(0, SIZE - side, 2)
        if taken[max(y - 4, 0):y + side + 4, max(x - 4, 0):x + side + 4].any():
            continue
        taken[y:y + side, x:x + side] = True
        pixels[y:y + side, x:x + side] = 255
        boxes.append([int(x), int(y), side, side])
    Image.fromarray(pixels).save(folder / "large.png")
    anns = [{"id": i, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3],
             "iscrowd": 0} for i, b in enumerate(boxes, start=1)]
    (folder / "large.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "large.png", "width": SIZE, "height": SIZE}],
        "annotations": anns, "categories": [{"id": 1, "name": "square"}]}))
    return folder


def _truth(large):
    ann = load_annotations(large / "large.json")
    return torch.tensor([[x, y, x + w, y + h] for x, y, w, h in
                         (a["bbox"] for a in ann.annotations)], dtype=torch.float32)


class Recorder(Reporter):
    def __init__(self):
        self.tasks = []

    def task(self, description, total=None, completed=0):
        reporter = self

        class Counting(Task):
            def __init__(self):
                self.done = 0
                reporter.tasks.append((description, total, self))

            def update(self, completed=None, advance=0, **fields):
                self.done += advance

        return Counting()


def test_tiles_find_the_small_objects_that_the_whole_image_loses(large):
    from torchvision.ops import box_iou

    model = BlobDetector()
    image = torch.from_numpy(read_image(large / "large.png")).permute(2, 0, 1)
    truth = _truth(large)
    whole = model.detect([image])[0]
    assert len(whole["boxes"]) == 0  # 12-40 px squares are 1.5-5 px at 256 px: nothing seen

    model.calls.clear()
    recorder = Recorder()
    tiling = Tiling(TILE, OVERLAP, tile_batch=4)
    windows = tile_windows(SIZE, SIZE, TILE, OVERLAP)
    with recorder.task("tiles", total=len(windows)) as task:
        tiled = detect_tiled(model, image, tiling, task=task)
    # every object once, whole (those across seams too), in the image's pixels
    assert len(tiled["boxes"]) == len(truth) == 80
    iou = box_iou(tiled["boxes"], truth)
    assert (iou.max(dim=1).values > 0.99).all() and (iou.max(dim=0).values > 0.99).all()
    # memory: at most 4 tiles of at most 256 px per forward pass, views of the decoded image
    assert len(windows) == 121 and sum(n for n, _, _ in model.calls) == 121
    assert max(n for n, _, _ in model.calls) == 4
    assert {s for _, sizes, _ in model.calls for s in sizes} == {(256, 256)}
    assert set().union(*(p for _, _, p in model.calls)) == {image.untyped_storage().data_ptr()}
    assert recorder.tasks[0][2].done == 121  # the progress bar counts tiles
    # the tile batch changes the memory, not the result
    one = detect_tiled(model, image, Tiling(TILE, OVERLAP, tile_batch=1))
    assert torch.equal(one["boxes"], tiled["boxes"])
    # at most max_detections are kept, the best first
    assert len(detect_tiled(model, image, Tiling(TILE, OVERLAP, max_detections=30))[
        "boxes"]) == 30


def test_eval_and_predict_tiled_against_whole(large, tmp_path, caplog, monkeypatch):
    ann = load_annotations(large / "large.json")
    model = BlobDetector()
    whole = evaluate_model(model, ann, "voc07")
    images = []
    recorder = Recorder()
    tiled = evaluate_model(model, ann, "voc07", tiling=Tiling(TILE, OVERLAP), reporter=recorder,
                           tiled_images=images)
    assert whole.mAP == 0.0 and tiled.mAP == 1.0
    assert [(r.name, r.width, r.tiles, r.detections) for r in images] == [
        ("large.png", SIZE, 121, 80)]
    assert recorder.tasks[0][1] == recorder.tasks[0][2].done == 121  # the bar: tiles

    # COCO's metric scores at most 100 detections per image (--max-dets): said when an image
    # has more
    with caplog.at_level("WARNING", logger="frcnn"):
        evaluate_model(model, ann, "coco", tiling=Tiling(TILE, OVERLAP))
        assert "maxDets" not in caplog.text  # 80 detections
        evaluate_model(model, ann, "coco", tiling=Tiling(TILE, OVERLAP), max_dets=50)
    assert "best 50 detections of an image (its maxDets: --max-dets) and an image here has 80" \
        in caplog.text

    jobs = plan_outputs(find_images([large / "large.png"]), tmp_path / "out")
    report = predict_files(model, jobs, "cpu", 0.5, tiling=Tiling(TILE, OVERLAP))
    assert len(report.detections) == 80 and report.images[0].tiles == 121
    assert report.images[0].name == "large.png"
    assert Image.open(tmp_path / "out" / "large.png").size == (SIZE, SIZE)  # the whole image
    boxes = np.array([d["bbox"] for d in report.detections])
    truth = np.array([a["bbox"] for a in ann.annotations])
    assert sorted(map(tuple, boxes.round().astype(int))) == sorted(map(tuple, truth))
    # an image over --max-pixels is skipped, with the cap named
    report = predict_files(model, jobs, "cpu", 0.5, tiling=Tiling(TILE), max_pixels=10**6)
    assert report.written == [] and "cap of 1,000,000" in report.skipped[0][1]


def test_options_need_tile_and_sane_values(cli):
    from frcnn_cli.data.images import MAX_PIXELS
    from frcnn_cli.data.tiling import DEFAULT_OVERLAP
    from frcnn_cli.errors import InputError
    from frcnn_cli.inference.tiled import (
        DEFAULT_MAX_DETECTIONS,
        DEFAULT_TILE_BATCH,
        tiling_from_options,
    )

    assert tiling_from_options(None) is None
    assert tiling_from_options(512) == Tiling(512, 0.2, 4, 1000)
    # the defaults --help states are the library's
    for command in ("predict", "eval"):
        text = " ".join(cli(command, "--help").output.replace("│", " ").split())
        for default in (DEFAULT_OVERLAP, DEFAULT_TILE_BATCH, DEFAULT_MAX_DETECTIONS):
            assert f"[default: {default}]" in text
        assert MAX_PIXELS == 2**30 and "[default: 2^30," in text
    with pytest.raises(InputError, match="--overlap applies to tiled prediction; add --tile"):
        tiling_from_options(None, overlap=0.3)
    with pytest.raises(InputError, match="--tile must be a whole number of pixels, at least 32"):
        tiling_from_options(16)
    with pytest.raises(InputError, match="--overlap is a fraction"):
        tiling_from_options(256, overlap=1.0)


# ---------------------------------------------------------------- the commands, a real model


def test_predict_tile_on_a_trained_model(cli, trained_shapes, shapes_data, tmp_path):
    ann = load_annotations(shapes_data / "val.json")
    path = ann.image_path(ann.images[0])  # 128 px: 9 tiles of 64 px at overlap 0.25
    r = cli("predict", trained_shapes, path, "--out", tmp_path / "out", "--tile", 64,
            "--overlap", 0.25, "--tile-batch", 2, "--score-thresh", 0.05, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "tiled: 64 px tiles, overlap 0.25" in r.output and path.name in r.output
    saved = json.loads((tmp_path / "out" / "detections.json").read_text())
    model = load_model(trained_shapes)
    image = torch.from_numpy(read_image(path)).permute(2, 0, 1)
    with torch.inference_mode():
        expected = detect_tiled(model, image, Tiling(64, 0.25), score_thresh=0.05)
    keep = expected["scores"] >= 0.05
    assert len(saved) == int(keep.sum()) > 0
    got = np.array([d["bbox"] for d in saved])
    want = expected["boxes"][keep].numpy()
    np.testing.assert_allclose(got[:, :2], want[:, :2], atol=1e-3)
    np.testing.assert_allclose(got[:, :2] + got[:, 2:], want[:, 2:], atol=1e-3)
    assert Image.open(tmp_path / "out" / path.name).size == (128, 128)


def test_eval_tile_no_larger_than_the_images_is_whole_image_eval(cli, trained_shapes,
                                                                    shapes_data, tmp_path):
    val = shapes_data / "val.json"
    runs = {}
    for name, extra in (("whole", []), ("one tile", ["--tile", 128]),
                        ("tiles", ["--tile", 64, "--max-detections", 50])):
        dets = tmp_path / f"{name}.json"
        r = cli("eval", trained_shapes, "--data", val, "--save-detections", dets, "--device",
                "cpu", *extra)
        assert r.exit_code == 0, r.output
        runs[name] = (r.output, json.loads(dets.read_text()))
    assert runs["whole"][1] == runs["one tile"][1]  # a 128 px image in 128 px tiles: itself
    assert "128 px tiles" in runs["one tile"][0]
    # 64 px tiles: 9 per image, other detections, at most 50 per image
    assert "64 px tiles" in runs["tiles"][0] and runs["tiles"][1] != runs["whole"][1]
    per_image = {}
    for d in runs["tiles"][1]:
        per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
    assert max(per_image.values()) <= 50


def test_tile_options_refused_where_they_cannot_apply(cli, trained_shapes, shapes_data,
                                                     tmp_path):
    val = shapes_data / "val.json"
    for args, message in (
            (["--overlap", 0.3], "--overlap applies to tiled prediction; add --tile S"),
            (["--tile", 8], "--tile must be a whole number of pixels, at least 32"),
            (["--tile", 64, "--proposals"], "--proposals reports the RPN's recall; drop --tile"),
            (["--tile", 64, "--batch-size", 2], "drop --batch-size")):
        r = cli("eval", trained_shapes, "--data", val, "--device", "cpu", *args)
        assert r.exit_code == 2 and message in r.output, r.output
    r = cli("eval", "--detections", tmp_path / "d.json", "--data", val, "--tile", 64)
    assert r.exit_code == 2 and "--tile needs a checkpoint: it runs the model" in r.output
    r = cli("eval", trained_shapes, "--data", val, "--device", "cpu", "--max-pixels", 1000)
    assert r.exit_code == 2 and "more than the cap of 1,000" in r.output


def test_a_dataset_of_images_smaller_than_the_tile_keeps_its_annotations(large):
    """Tiled evaluation reads each record's width and height for the progress bar, and the
    file's header where a record lacks them."""
    ann = load_annotations(large / "large.json")
    record = {k: v for k, v in ann.images[0].items() if k not in ("width", "height")}
    bare = Annotations([record], ann.annotations, ann.categories, ann.root)
    recorder = Recorder()
    evaluate_model(BlobDetector(), bare, "voc07", tiling=Tiling(1000, 0.2), reporter=recorder)
    assert recorder.tasks[0][1] == 9  # 2000 px in 1000 px tiles at overlap 0.2: 3 x 3
