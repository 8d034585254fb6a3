"""Exported files as detectors (frcnn_cli.inference.exported): an ONNX or TorchScript export of a
trained shapes model runs through the evaluation, prediction and timing code unchanged, and
scores exactly the checkpoint's mAP."""

import json

import numpy as np
import onnx
import pytest
import torch

from frcnn_cli import load_model
from frcnn_cli.errors import InputError
from frcnn_cli.evaluation.inference import evaluate_model
from frcnn_cli.evaluation.predict import find_images, plan_outputs, predict_files
from frcnn_cli.inference.exported import exported_format, load_exported_model


@pytest.fixture(scope="module")
def onnx_file(shapes_exports):
    """The trained shapes model as ``frcnn export --format onnx`` writes it."""
    return shapes_exports["onnx"]


def test_eval_of_an_fp32_onnx_export_is_the_checkpoints(onnx_file, trained_shapes, shapes_four,
                                                        one_thread):
    model = load_model(trained_shapes)
    ours, theirs = [], []
    expected = evaluate_model(model, shapes_four, detections=ours)
    detector = load_exported_model(onnx_file)
    got = evaluate_model(detector, shapes_four, detections=theirs)
    assert expected.mAP > 0.8  # a model that finds the objects: the comparison means something
    assert got.mAP == expected.mAP
    assert got.per_class == expected.per_class
    assert len(theirs) == len(ours)
    for a, b in zip(ours, theirs, strict=True):  # same order: same detections, file pixels
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert np.allclose(a["bbox"], b["bbox"], atol=1e-3) and abs(a["score"] - b["score"]) < 1e-4
    meta = detector.metadata
    assert detector.recipe == model.recipe and detector.recipe_known
    assert detector.classes == model.classes and meta["precision"] == "fp32"
    assert json.loads(meta["score_thresh"]) == model.recipe.roi_heads.score_thresh


def test_predict_on_an_export_draws_the_checkpoints_detections(onnx_file, trained_shapes,
                                                              shapes_four, tmp_path, one_thread):
    images = shapes_four.parent / "images" / "train"
    found = find_images(sorted(images.iterdir())[:2])
    model = load_model(trained_shapes)
    want = predict_files(model, plan_outputs(found, tmp_path / "ckpt"), score_thresh=0.3)
    got = predict_files(load_exported_model(onnx_file), plan_outputs(found, tmp_path / "onnx"),
                        score_thresh=0.3)
    assert len(want.detections) > 0 and len(got.written) == 2
    assert [(d["file_name"], d["category_name"]) for d in got.detections] == [
        (d["file_name"], d["category_name"]) for d in want.detections]
    for a, b in zip(want.detections, got.detections, strict=True):
        assert np.allclose(a["bbox"], b["bbox"], atol=1e-3)
    assert all(d["score"] >= 0.3 for d in got.detections)


def test_detect_filters_the_files_output_as_the_model_would(onnx_file, trained_shapes,
                                                            one_thread):
    from frcnn_cli.export.verify import check_images

    model, detector = load_model(trained_shapes), load_exported_model(onnx_file)
    image = check_images()[1][1]
    full = detector.detect([image])[0]
    assert len(full["boxes"]) > 3
    cut = float(full["scores"][2])
    for kwargs in ({"score_thresh": cut}, {"detections_per_img": 2}):
        want = model.detect([image], **kwargs)[0]
        got = detector.detect([image], **kwargs)[0]
        assert len(got["boxes"]) == len(want["boxes"]) < len(full["boxes"])
        assert torch.allclose(got["boxes"], want["boxes"], atol=1e-3)
    # what the graph dropped at export is gone: asking for it is an error, not a silent subset
    with pytest.raises(InputError, match="at least 0.05"):
        detector.detect([image], score_thresh=0.01)
    with pytest.raises(InputError, match="at most 100 detections"):
        detector.detect([image], detections_per_img=101)
    with pytest.raises(InputError, match="rpn_only"):
        detector.detect([image], rpn_only=True)
    with pytest.raises(InputError, match="precision"), torch.autocast("cpu", torch.bfloat16):
        detector.detect([image])


def test_a_file_from_before_the_recipe_was_stored_still_loads(onnx_file, shapes_four, tmp_path,
                                                              one_thread):
    proto = onnx.load(onnx_file)
    kept = [p for p in proto.metadata_props
            if p.key not in ("recipe_config", "score_thresh", "detections_per_img", "precision")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(proto, old)
    detector = load_exported_model(old)
    assert not detector.recipe_known and detector.recipe.name == "shapes"
    assert detector.precision == "fp32" and detector.score_thresh is None
    assert evaluate_model(detector, shapes_four).mAP == evaluate_model(
        load_exported_model(onnx_file), shapes_four).mAP


def test_exported_format_tells_exports_from_checkpoints(onnx_file, trained_shapes, tmp_path):
    from frcnn_cli.checkpoint import load_checkpoint, save_checkpoint

    assert exported_format(onnx_file) == "onnx"
    assert exported_format(trained_shapes) is None
    ckpt = load_checkpoint(trained_shapes)  # export --svd --format checkpoint writes such files
    ckpt["meta"]["svd_of"] = "model.pt"
    svd = save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "version")},
                          tmp_path / "svd.pt")
    assert exported_format(svd) is None
    with pytest.raises(InputError, match="not an ONNX or TorchScript file written by frcnn"):
        load_exported_model(trained_shapes)
    with pytest.raises(InputError, match="not found"):
        load_exported_model(tmp_path / "missing.onnx")


def test_torchscript_export_scores_the_checkpoints_map(trained_shapes, shapes_four, tmp_path,
                                                      one_thread):
    from frcnn_cli.export import export_bytes

    model = load_model(trained_shapes)
    path = tmp_path / "model.torchscript.pt"
    path.write_bytes(export_bytes(model, "torchscript"))
    assert exported_format(path) == "torchscript"
    detector = load_exported_model(path)
    assert detector.runtime == "torch" and detector.recipe_known
    assert evaluate_model(detector, shapes_four).mAP == evaluate_model(model, shapes_four).mAP


def test_benchmark_times_an_export_beside_torchvision(onnx_file, one_thread):
    from frcnn_cli.export.benchmark import benchmark, benchmark_image, exported_to_time

    models, source = exported_to_time(onnx_file, compare=True)
    assert "onnxruntime" in source and set(models) == {"frcnn", "torchvision"}
    result = benchmark(models, benchmark_image(size=(120, 160)), torch.device("cpu"),
                       warmup=0, runs=1)
    ours, theirs = result.models
    assert ours.stages == {} and len(ours.totals) == 1 and ours.totals[0] > 0
    assert "backbone" in theirs.stages and result.ratio() > 0
    assert ours.detections == len(models["frcnn"]([benchmark_image(size=(120, 160))])[0]["boxes"])


def test_the_commands_take_an_exported_file_as_they_take_a_checkpoint(cli, onnx_file,
                                                                      trained_shapes,
                                                                      shapes_four, tmp_path):
    """frcnn eval, predict and benchmark on the ONNX file: the checkpoint's mAP, its
    detections; what only a checkpoint can do is refused in one line."""
    maps = {}
    for name, model in (("ckpt", trained_shapes), ("onnx", onnx_file)):
        r = cli("eval", model, "--data", shapes_four, "--json", tmp_path / f"{name}.json",
                "--device", "cpu")
        assert r.exit_code == 0, r.output
        maps[name] = json.loads((tmp_path / f"{name}.json").read_text())
        r = cli("predict", model, shapes_four.parent / "images" / "train", "--out",
                tmp_path / f"p-{name}", "--device", "cpu")
        assert r.exit_code == 0, r.output
    assert maps["onnx"] == maps["ckpt"] and maps["ckpt"]["mAP"] > 0.8
    dets = [json.loads((tmp_path / f"p-{n}" / "detections.json").read_text())
            for n in ("ckpt", "onnx")]
    assert [(d["file_name"], d["category_id"]) for d in dets[0]] == \
        [(d["file_name"], d["category_id"]) for d in dets[1]]
    r = cli("benchmark", onnx_file, "--runs", 1, "--warmup", 0)
    assert r.exit_code == 0 and "onnx" in r.output.lower(), r.output
    for args, flag in ((["--proposals"], "--proposals"), (["--precision", "bf16"], "--precision")):
        r = cli("eval", onnx_file, "--data", shapes_four, "--device", "cpu", *args)
        assert r.exit_code == 2 and f"{flag} needs the checkpoint" in r.output, r.output
