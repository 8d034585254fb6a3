"""``frcnn predict``: finding images, naming outputs safely, mapping labels, drawing."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_cli.config import load_recipe
from frcnn_cli.errors import InputError
from frcnn_cli.evaluation.detections import to_coco_results
from frcnn_cli.evaluation.draw import class_colour, draw_detections, text_colour
from frcnn_cli.evaluation.predict import find_images, plan_outputs, predict_files

CLASSES = [{"id": 3, "name": "person"}, {"id": 7, "name": "car"}]


def test_to_coco_results_maps_labels_and_rounds():
    # x1 y1 x2 y2 = 10 20 50 80 -> xywh 10 20 40 60; label 2 -> classes[1] -> category id 7
    r = to_coco_results(np.array([[10, 20, 50, 80]]), np.array([0.9]), np.array([2]), 42,
                        CLASSES)
    assert r == [{"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 40.0, 60.0],
                  "score": 0.9}]
    # 1e-4 px and 6 decimals: within 1e-3 px and 1e-5 of the model's numbers
    r = to_coco_results(np.array([[1.23456789, 2.0, 3.98765432, 4.5]]),
                        np.array([0.123456789]), np.array([1]), 1, CLASSES)
    assert r[0]["bbox"] == [1.2346, 2.0, 2.7531, 2.5] and r[0]["score"] == 0.123457
    assert r[0]["category_id"] == 3


def write_png(path, size=(40, 30), colour=(90, 90, 90)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_find_images_walks_folders_and_skips_output(tmp_path):
    src = tmp_path / "imgs"
    for rel in ["b.png", "a.jpg", "sub/c.png", ".hidden/d.png", "notes.txt", "pred/old.png"]:
        if rel.endswith(".txt"):
            (src / rel).write_text("x")
        else:
            write_png(src / rel)
    single = write_png(tmp_path / "one.bmp")
    found = find_images([src, single], exclude=src / "pred")
    assert [(f.relative_to(tmp_path).as_posix(), n.as_posix()) for f, n in found] == [
        ("imgs/a.jpg", "a.jpg"), ("imgs/b.png", "b.png"), ("imgs/sub/c.png", "sub/c.png"),
        ("one.bmp", "one.bmp")]
    with pytest.raises(InputError, match="input not found"):
        find_images([tmp_path / "missing"])


def test_plan_outputs_dedupes_and_never_overwrites_inputs(tmp_path):
    a, b = write_png(tmp_path / "x" / "im.png"), write_png(tmp_path / "y" / "im.png")
    gif = tmp_path / "x" / "anim.gif"
    Image.new("RGB", (8, 8)).save(gif)
    jobs = plan_outputs([(a, Path("im.png")), (b, Path("im.png")), (gif, Path("anim.gif"))],
                        tmp_path / "out")
    assert [j.output.name for j in jobs] == ["im.png", "im-2.png", "anim.png"]
    assert [j.image_id for j in jobs] == [1, 2, 3]
    # --out equal to the folder of an input image: refused before anything runs
    with pytest.raises(InputError, match="would replace the input image"):
        plan_outputs([(a, Path("im.png"))], tmp_path / "x")


def test_colours_and_drawing():
    assert class_colour(1) != class_colour(2)
    assert text_colour((255, 255, 25)) == (0, 0, 0) and text_colour((0, 0, 128)) == (255,) * 3
    pixels = np.full((60, 80, 3), 128, np.uint8)
    drawn = np.asarray(draw_detections(pixels, np.array([[10.0, 20.0, 50.0, 55.0]]),
                                       np.array([2]), np.array([0.87]), CLASSES))
    assert drawn.shape == pixels.shape and (pixels == 128).all()  # input untouched
    # the box's lower edge is drawn in car's colour; the middle of the box is not
    assert tuple(drawn[55, 30]) == class_colour(2)
    assert tuple(drawn[40, 30]) == (128, 128, 128)


class FakeModel(torch.nn.Module):
    """Answers every image with two boxes: a car at 0.9 and a person at 0.3."""

    classes = CLASSES

    def __init__(self):
        super().__init__()
        self.recipe = load_recipe("shapes")  # roi_heads.score_thresh 0.05
        self.seen = []

    def detect(self, images, score_thresh=None):
        assert images[0].dtype == torch.uint8 and images[0].shape == (3, 30, 40)  # the file
        self.seen.append(score_thresh)
        return [{"boxes": torch.tensor([[2.0, 2.0, 20.0, 12.0], [1.0, 1.0, 5.0, 5.0]]),
                 "scores": torch.tensor([0.9, 0.3]), "labels": torch.tensor([2, 1])}
                for _ in images]


def test_predict_files_skips_unreadable_and_filters_scores(tmp_path):
    good = write_png(tmp_path / "in" / "good.png")
    bad = tmp_path / "in" / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    jobs = plan_outputs(find_images([tmp_path / "in"]), tmp_path / "out")
    model = FakeModel()
    report = predict_files(model, jobs, "cpu", score_thresh=0.5)
    assert [p.name for p in report.written] == ["good.png"]
    assert len(report.skipped) == 1 and report.skipped[0][0] == bad
    assert "bad.jpg" in report.skipped[0][1]
    assert report.detections == [{"image_id": 2, "category_id": 7, "bbox": [2.0, 2.0, 18.0, 10.0],
                                  "score": 0.9, "file_name": str(good), "category_name": "car"}]
    assert Image.open(tmp_path / "out" / "good.png").size == (40, 30)
    # the model is asked for the recipe's threshold, or a lower one the user gives
    assert model.seen == [0.05]
    predict_files(model, jobs[1:], "cpu", score_thresh=0.01)
    assert model.seen[-1] == 0.01


def test_an_unreadable_image_inside_a_batch_leaves_every_answer_with_its_image(
        trained_shapes, shapes_four, tmp_path):
    """A batch holding an image that cannot be decoded answers in the batch's order: the
    skipped one in its place, each detection with the image it was made on."""
    from frcnn_cli import load_model
    from frcnn_cli.data.annotations import load_annotations
    from frcnn_cli.inference.images import ImageSource
    from frcnn_cli.inference.loop import detect_images

    ann = load_annotations(shapes_four)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    files = [ann.image_path(ann.images[0]), broken, *(ann.image_path(im) for im in ann.images[1:3])]
    source = ImageSource.of_files(list(enumerate(files, start=1)), skip_unreadable=True)
    found = list(detect_images(load_model(trained_shapes), source, batch_size=4))
    assert [d.index for d in found] == [0, 1, 2, 3]
    assert [d.item.path for d in found] == files
    assert [d.skipped is not None for d in found] == [False, True, False, False]
    assert [(d.width, d.height) for d in found] == [(128, 128), (0, 0), (128, 128), (128, 128)]
    assert all(d.output is not None for d in found if d.skipped is None)
