"""eval, predict and proposal recall end to end on a detector trained briefly on shapes.

The model is trained for a few iterations only: these tests check the plumbing with real
numbers (file pixels, category ids), not accuracy. That every path gives the same detections
is tests/test_one_path.py's.
"""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from frcnn_cli.cli.app import app
from frcnn_cli.data.annotations import load_annotations
from frcnn_cli.evaluation.detections import load_detections
from frcnn_cli.evaluation.evaluate import evaluate_detections


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def model_path(trained_shapes):
    return trained_shapes


def by_image(dets):
    out = {}
    for d in sorted(dets, key=lambda d: (d["image_id"], -d["score"], d["bbox"])):
        out.setdefault(d["image_id"], []).append(d)
    return out


def test_eval_checkpoint(model_path, shapes_four, tmp_path):
    out, dets, plots = tmp_path / "eval.json", tmp_path / "dets.json", tmp_path / "plots"
    r = run("eval", model_path, "--data", shapes_four, "--json", out, "--save-detections", dets,
            "--plot", plots, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "VOC2007 11-point" in r.output  # the recipe's eval.metric
    for name in ("circle", "square", "triangle", "mAP"):
        assert name in r.output
    result = json.loads(out.read_text())
    assert result["metric"] == "voc07" and set(result["per_class"]) == {
        "circle", "square", "triangle"}
    # the model learnt these images: an untrained model, or boxes, labels or category ids
    # mapped wrongly anywhere between the model and the file, score near 0
    assert result["mAP"] > 0.8, result

    ann = load_annotations(shapes_four)
    saved = load_detections(dets)
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
    r = run("eval", "--detections", dets, "--data", shapes_four, "--json", again)
    assert r.exit_code == 0 and json.loads(again.read_text()) == result
    assert (plots / "pr_all.png").stat().st_size > 0


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
    from frcnn_cli.data.usable import match_classes as check_classes

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
