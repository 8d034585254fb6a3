"""INT8 ONNX exports (frcnn export --int8 --calibrate): calibrated on the user's images, checked
against the fp32 model by objects, and run by eval and predict like any export."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from frcnn_cli import load_model
from frcnn_cli.data.annotations import load_annotations
from frcnn_cli.evaluation.inference import evaluate_model
from frcnn_cli.evaluation.predict import find_images, plan_outputs, predict_files
from frcnn_cli.export import int8, verify
from frcnn_cli.inference.exported import load_exported_model

CALIB = 8


@pytest.fixture(scope="module")
def fp32(shapes_exports):
    """The fp32 ONNX file of the trained shapes model, as bytes."""
    return shapes_exports["onnx"].read_bytes()


@pytest.fixture(scope="module")
def int8_run(trained_shapes, shapes_data, fp32, tmp_path_factory):
    """``frcnn export --int8`` of the trained shapes model, calibrated on 8 of the 24 training
    images (the fp32 file comes from the ``fp32`` fixture rather than a second export):
    ``(path, output)``."""
    from typer.testing import CliRunner

    import frcnn_cli.export
    from frcnn_cli.cli.app import app

    out = tmp_path_factory.mktemp("int8") / "model-int8.onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(frcnn_cli.export, "export_bytes", lambda *a, **k: fp32)
        result = CliRunner().invoke(app, [
            "export", str(trained_shapes), "--format", "onnx", "--int8", "--calibrate",
            str(shapes_data / "train.json"), "--calib-images", str(CALIB), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_int8_export_says_what_it_is_and_what_it_was_calibrated_on(int8_run, shapes_data):
    path, output = int8_run
    assert "calibrated on 8 of the 24 images" in output and "agree" in output
    assert "wrote" in output
    detector = load_exported_model(path)
    assert detector.precision == "int8" and detector.recipe_known
    calibration = json.loads(detector.metadata["calibration"])
    ids = [im["id"] for im in load_annotations(shapes_data / "train.json").images]
    assert calibration["dataset"] == "train.json" and calibration["method"] == "minmax"
    assert calibration["image_ids"] == [ids[i] for i in (0, 3, 6, 9, 12, 15, 18, 21)]
    assert json.loads(detector.metadata["fp32_layers"]) == [
        "roi_heads.bbox_pred", "roi_heads.cls_score", "rpn.head.bbox_pred",
        "rpn.head.cls_logits"]


def test_int8_keeps_the_prediction_layers_in_fp32(int8_run):
    """The convolutions and fc6/fc7 carry int8 weights; the RPN's 1x1 convs and the class and
    box layers keep their fp32 weights, as measured (benchmarks/int8.py --sensitivity)."""
    proto = onnx.load(int8_run[0])
    dtypes = {i.name: i.data_type for i in proto.graph.initializer}
    int8_weights = {n for n, t in dtypes.items() if t == onnx.TensorProto.INT8}
    for name in ("backbone.body.0", "rpn.head.conv", "roi_heads.box_head.fc6",
                 "roi_heads.box_head.fc7"):
        assert any(name in w for w in int8_weights), name
    for name in ("rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.cls_score",
                 "roi_heads.bbox_pred"):
        assert dtypes[f"model.{name}.weight"] == onnx.TensorProto.FLOAT, name


def test_int8_export_round_trips_eval_and_predict(int8_run, trained_shapes, shapes_four,
                                                  tmp_path, one_thread):
    model = load_model(trained_shapes)
    detector = load_exported_model(int8_run[0])
    expected = evaluate_model(model, shapes_four).mAP
    got = evaluate_model(detector, shapes_four).mAP
    assert expected > 0.8 and abs(got - expected) <= 0.05, (got, expected)
    found = find_images(sorted((shapes_four.parent / "images" / "train").iterdir())[:4])
    want = predict_files(model, plan_outputs(found, tmp_path / "fp32"), score_thresh=0.3)
    report = predict_files(detector, plan_outputs(found, tmp_path / "int8"), score_thresh=0.3)
    assert len(report.written) == 4 and all(p.is_file() for p in report.written)
    names = {c["name"] for c in model.classes}
    assert report.detections and {d["category_name"] for d in report.detections} <= names
    # the drawn detections are the checkpoint's by the export check's standard
    agreement = verify.Int8Agreement([verify.closeness(_as_tensors(want, f), _as_tensors(
        report, f)) for f, _ in found])
    assert agreement.confident > 0 and agreement.ok, agreement.describe()


def _as_tensors(report, file):
    """One image's detections of a predict report as (boxes x1 y1 x2 y2, scores, labels)."""
    rows = [d for d in report.detections if d["file_name"] == str(file)]
    boxes = torch.tensor([d["bbox"] for d in rows], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return (boxes, torch.tensor([d["score"] for d in rows]),
            torch.tensor([d["category_id"] for d in rows]))


def test_calibration_is_deterministic(fp32, trained_shapes, shapes_data, one_thread):
    assert int8.spread(24, 8) == [0, 3, 6, 9, 12, 15, 18, 21]
    assert int8.spread(5, 8) == [0, 1, 2, 3, 4]
    calib, check = int8.calibration_and_check(24, 8, check=4)
    assert not set(calib) & set(check) and len(check) == 4
    assert int8.calibration_and_check(3, 8, check=2) == ([0, 1, 2], [0, 1])
    model = load_model(trained_shapes)
    ann = load_annotations(shapes_data / "train.json")
    images = [im for _, im in int8.read_images(ann, int8.spread(len(ann.images), 4))]
    first = int8.quantize(fp32, model, images, int8.Calibration("train.json", [1, 2, 3, 4]))
    again = int8.quantize(fp32, model, images, int8.Calibration("train.json", [1, 2, 3, 4]))
    assert first == again
    other = int8.quantize(fp32, model, images[:2], int8.Calibration("train.json", [1, 2]))
    assert _scales(other) != _scales(first)  # the images do set the ranges


def _scales(data: bytes) -> dict[str, np.ndarray]:
    proto = onnx.load_from_string(data)
    return {i.name: numpy_helper.to_array(i).tolist() for i in proto.graph.initializer
            if i.name.endswith("_scale")}


def corrupt(data: bytes) -> bytes:
    """The INT8 file with each int8 weight tensor's values reversed: same ranges and sizes,
    wrong weights."""
    proto = onnx.load_from_string(data)
    for i, tensor in enumerate(proto.graph.initializer):
        if tensor.data_type == onnx.TensorProto.INT8:
            values = numpy_helper.to_array(tensor)
            broken = values.reshape(-1)[::-1].reshape(values.shape).copy()
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(broken, tensor.name))
    return proto.SerializeToString()


def test_the_check_refuses_an_int8_file_with_broken_weights(trained_shapes, shapes_data, fp32,
                                                            tmp_path, cli, monkeypatch):
    import frcnn_cli.export

    real = int8.quantize
    monkeypatch.setattr(frcnn_cli.export, "export_bytes", lambda *a, **k: fp32)
    monkeypatch.setattr(int8, "quantize", lambda *a, **k: corrupt(real(*a, **k)))
    out = tmp_path / "broken.onnx"
    r = cli("export", trained_shapes, "--format", "onnx", "--int8", "--calibrate",
            shapes_data / "train.json", "--calib-images", 4, "--out", out)
    assert r.exit_code == 1, r.output
    assert "INT8 file does not detect what the model detects" in r.output
    assert "nothing written" in r.output and not out.exists()
    # --no-check writes it, and says that nothing was compared
    r = cli("export", trained_shapes, "--format", "onnx", "--int8", "--calibrate",
            shapes_data / "train.json", "--calib-images", 4, "--no-check", "--out", out)
    assert r.exit_code == 0 and "not checked" in r.output and out.is_file()


def test_int8_refuses_bad_requests(trained_shapes, shapes_data, tmp_path, cli):
    out = tmp_path / "m.onnx"
    ann = shapes_data / "train.json"
    for args, message in (
            (["--format", "onnx", "--int8"], "--int8 needs --calibrate"),
            (["--format", "torchscript", "--int8", "--calibrate", ann], "give --format onnx"),
            (["--format", "onnx", "--calibrate", ann], "go with --int8"),
            (["--format", "onnx", "--calib-images", 4], "go with --int8"),
            (["--format", "onnx", "--int8", "--calibrate", tmp_path / "no.json"], "not found")):
        r = cli("export", trained_shapes, *args, "--out", out)
        assert r.exit_code == 2 and message in r.output, (args, r.output)
    assert not out.exists()
