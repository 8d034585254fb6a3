"""eval, predict and proposal recall end to end on a detector trained briefly on shapes.

The model is trained for a few iterations only: these tests check the plumbing with real
numbers (file pixels, category ids, agreement between the commands), not accuracy.
"""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from frcnn_cli.cli.app import app
from frcnn_cli.data.annotations import load_annotations
from frcnn_cli.data.images import read_image
from frcnn_cli.data.transforms import resize
from frcnn_cli.evaluation.detections import load_detections
from frcnn_cli.evaluation.evaluate import evaluate_detections

THRESH = 0.1  # predict keeps less than eval (0.05) to test its threshold
SIZE = 160  # the model's input side; the shapes files are 128 px, so the loader resizes them


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def model_path(shapes_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    r = run("train", "--recipe", "shapes", "--train", shapes_data / "train.json", "--out", out,
            "--iters", 20, "--device", "cpu", "--seed", 0,
            "--set", "solver.images_per_batch=2", "--set", f"input.min_size={SIZE}",
            "--set", f"input.max_size={SIZE}", "--set", "data.num_workers=0")
    assert r.exit_code == 0, r.output
    return out / "model.pt"


@pytest.fixture(scope="module")
def resized_copy(shapes_data, tmp_path_factory):
    """The val set at the model's input size: resized exactly as the test loader would, saved
    losslessly, boxes scaled by 160 / 128. Detections on it must be 1.25x those on the
    original files."""
    ann = load_annotations(shapes_data / "val.json")
    folder = tmp_path_factory.mktemp("copy")
    (folder / "images").mkdir()
    images = []
    for im in ann.images:
        pixels, _, _ = resize(read_image(ann.image_path(im)), SIZE, SIZE)
        name = f"images/{im['id']}.png"
        Image.fromarray(pixels).save(folder / name)
        images.append({**im, "file_name": name, "width": SIZE, "height": SIZE})
    f = SIZE / 128
    anns = [{**a, "bbox": [v * f for v in a["bbox"]], "area": a["area"] * f * f}
            for a in ann.annotations]
    path = folder / "val.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": ann.categories}))
    return path


def by_image(dets):
    out = {}
    for d in sorted(dets, key=lambda d: (d["image_id"], -d["score"], d["bbox"])):
        out.setdefault(d["image_id"], []).append(d)
    return out


def test_eval_checkpoint(model_path, shapes_data, tmp_path):
    val = shapes_data / "val.json"
    out, dets, plots = tmp_path / "eval.json", tmp_path / "dets.json", tmp_path / "plots"
    r = run("eval", model_path, "--data", val, "--json", out, "--save-detections", dets,
            "--plot", plots, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "VOC2007 11-point" in r.output  # the recipe's eval.metric
    for name in ("circle", "square", "triangle", "mAP"):
        assert name in r.output
    result = json.loads(out.read_text())
    assert result["metric"] == "voc07" and set(result["per_class"]) == {
        "circle", "square", "triangle"}
    assert 0.0 <= result["mAP"] <= 1.0

    ann = load_annotations(val)
    saved = load_detections(dets)
    assert saved, "a model with the recipe's 0.05 threshold gives detections"
    sizes = {im["id"]: (im["width"], im["height"]) for im in ann.images}
    for d in saved:
        x, y, w, h = d["bbox"]
        W, H = sizes[d["image_id"]]
        assert min(x, y) >= 0 and x + w <= W + 1e-6 and y + h <= H + 1e-6  # file pixels
        assert d["category_id"] in (1, 2, 3) and 0.05 <= d["score"] <= 1
    assert max(len(v) for v in by_image(saved).values()) <= 100
    # the saved detections score the same again, in-process and through --detections
    assert evaluate_detections(ann, saved, "voc07").mAP == result["mAP"]
    again = tmp_path / "again.json"
    r = run("eval", "--detections", dets, "--data", val, "--json", again)
    assert r.exit_code == 0 and json.loads(again.read_text()) == result
    assert (plots / "pr_all.png").stat().st_size > 0


def test_boxes_are_mapped_back_to_file_pixels(model_path, shapes_data, resized_copy, tmp_path):
    small, large = tmp_path / "small.json", tmp_path / "large.json"
    for data, dets, js in ((shapes_data / "val.json", small, tmp_path / "s.json"),
                           (resized_copy, large, tmp_path / "l.json")):
        r = run("eval", model_path, "--data", data, "--save-detections", dets, "--json", js,
                "--metric", "voc", "--batch-size", 1, "--device", "cpu")
        assert r.exit_code == 0, r.output
    a, b = by_image(load_detections(small)), by_image(load_detections(large))
    assert a.keys() == b.keys()
    for image_id in a:
        assert len(a[image_id]) == len(b[image_id])
        for da, db in zip(a[image_id], b[image_id], strict=True):
            assert da["category_id"] == db["category_id"]
            assert db["score"] == pytest.approx(da["score"], abs=1e-4)
            np.testing.assert_allclose(db["bbox"], np.array(da["bbox"]) * SIZE / 128,
                                       atol=0.05)
    # IoU does not change with scale, so neither does AP
    assert json.loads((tmp_path / "l.json").read_text())["mAP"] == pytest.approx(
        json.loads((tmp_path / "s.json").read_text())["mAP"], abs=1e-6)


def test_predict_agrees_with_eval(model_path, resized_copy, tmp_path):
    folder = resized_copy.parent / "images"
    dets = tmp_path / "dets.json"
    r = run("eval", model_path, "--data", resized_copy, "--save-detections", dets,
            "--batch-size", 1, "--device", "cpu")
    assert r.exit_code == 0, r.output
    ann = load_annotations(resized_copy)
    name_of = {im["id"]: im["file_name"].split("/")[-1] for im in ann.images}
    expected = {}
    for d in load_detections(dets):
        if d["score"] >= THRESH:
            expected.setdefault(name_of[d["image_id"]], []).append(d)
    assert sum(map(len, expected.values())) >= 5, "too few detections to compare"

    out = tmp_path / "pred"
    r = run("predict", model_path, folder, "--out", out, "--score-thresh", THRESH,
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    predicted = json.loads((out / "detections.json").read_text())
    got = {}
    for d in predicted:
        assert d["category_name"] == {1: "circle", 2: "square", 3: "triangle"}[
            d["category_id"]]
        got.setdefault(d["file_name"].split("/")[-1], []).append(d)
    assert got.keys() == expected.keys()
    for name, exp in expected.items():
        exp = sorted(exp, key=lambda d: (-d["score"], d["bbox"]))
        mine = sorted(got[name], key=lambda d: (-d["score"], d["bbox"]))
        assert [d["category_id"] for d in mine] == [d["category_id"] for d in exp]
        np.testing.assert_allclose([d["bbox"] for d in mine], [d["bbox"] for d in exp],
                                   atol=0.05)
    # one drawing per image, same size, named as the input
    drawings = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert drawings == sorted(p.name for p in folder.iterdir())
    for name in expected:
        assert Image.open(out / name).size == (SIZE, SIZE)
        assert not np.array_equal(np.asarray(Image.open(out / name)),
                                  np.asarray(Image.open(folder / name)))


def test_predict_skips_unreadable_and_refuses_its_input_folder(model_path, shapes_data,
                                                                tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    first = sorted((shapes_data / "images").rglob("*.*"))[0]
    (src / first.name).write_bytes(first.read_bytes())
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    r = run("predict", model_path, src, "--out", tmp_path / "out", "--device", "cpu")
    assert r.exit_code == 0, r.output
    flat = "".join(r.output.split())  # the log handler wraps long paths
    assert "skipped:cannotdecodeimage" in flat and "broken.jpg" in flat
    assert "skipped1unreadableimage(s)of2" in flat
    assert (tmp_path / "out" / first.name).exists()

    before = (src / first.name).read_bytes()
    r = run("predict", model_path, src, "--out", src, "--device", "cpu")
    assert r.exit_code == 2 and "would replace the input image" in r.output
    assert (src / first.name).read_bytes() == before

    (src / first.name).unlink()
    r = run("predict", model_path, src, "--out", tmp_path / "out2", "--device", "cpu")
    assert r.exit_code == 2 and "none of the 1 image(s) could be read" in r.output


def test_proposal_recall(model_path, shapes_data):
    r = run("eval", model_path, "--data", shapes_data / "val.json", "--proposals",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "recall@0.5" in r.output and "2000" in r.output
    result = json.loads((model_path.parent / "recall.json").read_text())
    assert (model_path.parent / "recall.png").stat().st_size > 0
    assert result["top_n"] == [300, 1000, 2000]
    curves = [np.array(result["recall"][str(n)]) for n in (300, 1000, 2000)]
    for curve in curves:
        assert (np.diff(curve) <= 1e-12).all() and curve.min() >= 0 and curve.max() <= 1
    # more proposals never cover fewer objects
    assert (curves[0] <= curves[1] + 1e-12).all() and (curves[1] <= curves[2] + 1e-12).all()
    assert result["recall@0.5"]["2000"] == curves[2][0] > 0
    assert result["num_objects"] == sum(
        1 for a in load_annotations(shapes_data / "val.json").annotations
        if not a.get("difficult") and not a.get("iscrowd"))


def test_a_class_the_model_never_learned_is_named(caplog):
    from frcnn_cli.data.annotations import Annotations
    from frcnn_cli.evaluation.inference import check_classes

    model_classes = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    ann = Annotations(
        images=[{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64}],
        annotations=[{"id": 1, "image_id": 1, "category_id": c, "bbox": [0, 0, 9, 9]}
                     for c in (1, 3)],
        categories=model_classes + [{"id": 3, "name": "hexagon"}, {"id": 4, "name": "star"}])
    with caplog.at_level("WARNING", logger="frcnn"):
        check_classes(model_classes, ann)
    assert [r.getMessage() for r in caplog.records] == [
        "the model was not trained on 'hexagon', which the dataset has: it scores AP 0"]
