"""Selective Search through the commands: propose, Fast R-CNN trained on its boxes, eval,
predict and benchmark running it per image, --proposal-file, export's refusal, and
eval --compare-proposals."""

import json

import numpy as np
import pytest
import torch

from frcnn_cli import load_model
from frcnn_cli.checkpoint import checkpoint_meta, load_checkpoint, save_checkpoint
from frcnn_cli.data.annotations import load_annotations
from frcnn_cli.data.images import read_image
from frcnn_cli.errors import InputError
from frcnn_cli.evaluation.detections import load_detections
from frcnn_cli.model.faster_rcnn import build_model
from frcnn_cli.proposals.files import read_raw as read_proposals
from frcnn_cli.proposals.search import selective_search

FAST = ["--set", "input.min_size=128", "--set", "input.max_size=128",
        "--set", "data.num_workers=0", "--set", "alt.detector_images_per_batch=2",
        "--set", "solver.warmup_iters=0", "--device", "cpu", "--seed", "0"]
SEARCH = {"method": "selective-search", "mode": "fast", "max_proposals": 2000, "max_side": 500}


def said(result) -> str:
    """The command's output on one line (the console wraps long lines)."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def val(shapes_data):
    return load_annotations(shapes_data / "val.json")


@pytest.fixture(scope="module")
def ss_val(shapes_data, tmp_path_factory):
    """``frcnn propose --method selective-search`` of the validation set."""
    from typer.testing import CliRunner

    from frcnn_cli.cli.app import app

    out = tmp_path_factory.mktemp("ss") / "ss-val.pt"
    r = CliRunner().invoke(app, ["propose", "--method", "selective-search", "--data",
                                 str(shapes_data / "val.json"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def fast_rcnn(shapes_data, tmp_path_factory):
    """A Fast R-CNN detector trained briefly (train-detector --stage 1, validated on --val) on
    the Selective Search proposals of the training set: its run folder."""
    from typer.testing import CliRunner

    from frcnn_cli.cli.app import app

    folder = tmp_path_factory.mktemp("fast-rcnn")
    runner = CliRunner()
    r = runner.invoke(app, ["propose", "--method", "selective-search", "--data",
                            str(shapes_data / "train.json"), "--out", str(folder / "ss.pt"),
                            "--workers", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train-detector", "--recipe", "shapes", "--train",
                            str(shapes_data / "train.json"), "--val",
                            str(shapes_data / "val.json"), "--proposals", str(folder / "ss.pt"),
                            "--out", str(folder / "run"), "--stage", "1", "--iters", "8", *FAST])
    assert r.exit_code == 0, r.output
    return folder / "run"


@pytest.fixture(scope="module")
def faster_rcnn(val, tmp_path_factory):
    """An untrained Faster R-CNN checkpoint of the dataset's classes (its RPN proposes)."""
    torch.manual_seed(0)
    model = build_model("shapes", len(val.classes), classes=val.classes, load_weights=False)
    path = tmp_path_factory.mktemp("faster") / "model.pt"
    save_checkpoint({"model": model.state_dict(), "meta": checkpoint_meta(model, stage="joint")},
                    path)
    return path


def test_propose_selective_search_writes_the_proposals_file(cli, shapes_data, val, ss_val,
                                                            tmp_path):
    obj = read_proposals(ss_val)
    assert obj["image_ids"].tolist() == [im["id"] for im in val.images]
    meta = obj["meta"]
    assert {k: meta[k] for k in SEARCH} == SEARCH and meta["seconds_per_image"] > 0
    assert meta["coverage"]["objects"] == len(val.annotations)
    ends = np.cumsum(obj["counts"].numpy())
    for im, end, count in zip(val.images, ends, obj["counts"].tolist(), strict=True):
        boxes, scores = obj["boxes"][end - count:end], obj["scores"][end - count:end]
        # OpenCV's boxes of the file, in its pixels, best first
        np.testing.assert_array_equal(boxes.numpy(), selective_search(
            read_image(val.image_path(im))))
        assert (boxes[:, 2] <= im["width"]).all() and (boxes[:, 3] <= im["height"]).all()
        assert (scores[:-1] > scores[1:]).all()
    # the same file again, in two processes, and the best five only with --max
    again, best5 = tmp_path / "again.pt", tmp_path / "best5.pt"
    r = cli("propose", "--method", "selective-search", "--data", shapes_data / "val.json",
            "--out", again, "--workers", "2")
    assert r.exit_code == 0 and "proposals per image" in said(r), r.output
    assert torch.equal(read_proposals(again)["boxes"], obj["boxes"])
    r = cli("propose", "--method", "selective-search", "--data", shapes_data / "val.json",
            "--out", best5, "--max", "5")
    assert r.exit_code == 0, r.output
    five = read_proposals(best5)
    assert five["counts"].tolist() == [min(5, n) for n in obj["counts"].tolist()]
    assert torch.equal(five["boxes"][:5], obj["boxes"][:5])


def test_propose_refuses_mixed_options(cli, shapes_data, faster_rcnn, tmp_path):
    data = ["--data", shapes_data / "val.json", "--out", tmp_path / "p.pt"]
    for args, reason in (([faster_rcnn, "--method", "selective-search"], "needs no checkpoint"),
                         ([], "needs a checkpoint"),
                         ([faster_rcnn, "--workers", "2"], "--workers goes with --method"),
                         (["--method", "selective-search", "--batch-size", "4"],
                          "takes --workers"),
                         (["--method", "selective-search", "--mode", "slow"], "slow")):
        r = cli("propose", *args, *data)
        assert r.exit_code == 2 and reason in said(r), r.output
    assert not (tmp_path / "p.pt").exists()


def test_fast_rcnn_records_selective_search_and_validates_on_it(cli, fast_rcnn, shapes_data):
    for name in ("model.pt", "last.pt"):
        assert load_checkpoint(fast_rcnn / name)["meta"]["proposals"] == SEARCH
    assert load_model(fast_rcnn / "model.pt").proposal_source == SEARCH
    # the run's final validation searched --val: the mAP eval gets, not its untrained RPN's
    r = cli("eval", fast_rcnn / "model.pt", "--data", shapes_data / "val.json")
    assert r.exit_code == 0, r.output
    validated = json.loads((fast_rcnn / "eval.json").read_text())["mAP"]
    assert f"{validated:.4f}" in said(r)
    assert "proposals: Selective Search (fast" in said(r)
    assert "seconds per image: proposals" in said(r)


def test_eval_searching_each_image_equals_eval_on_the_search_file(cli, fast_rcnn, shapes_data,
                                                                  ss_val, tmp_path):
    model, data = fast_rcnn / "model.pt", shapes_data / "val.json"
    runs = {"searched": [], "file": ["--proposal-file", ss_val]}
    for name, extra in runs.items():
        r = cli("eval", model, "--data", data, "--save-detections", tmp_path / f"{name}.json",
                *extra)
        assert r.exit_code == 0, r.output
    searched = load_detections(tmp_path / "searched.json")
    assert len(searched) > 0 and searched == load_detections(tmp_path / "file.json")
    # and the file's boxes are what it detects on: the best five per image give other results
    best5 = tmp_path / "best5.pt"
    assert cli("propose", "--method", "selective-search", "--data", data, "--out", best5,
               "--max", "5").exit_code == 0
    r = cli("eval", model, "--data", data, "--proposal-file", best5, "--save-detections",
            tmp_path / "best5.json")
    assert r.exit_code == 0, r.output
    assert load_detections(tmp_path / "best5.json") != searched


def test_predict_and_benchmark_search_each_image(cli, fast_rcnn, shapes_data, val, tmp_path):
    model = fast_rcnn / "model.pt"
    r = cli("eval", model, "--data", shapes_data / "val.json", "--save-detections",
            tmp_path / "eval.json")
    assert r.exit_code == 0, r.output
    files = [val.image_path(im) for im in val.images[:3]]
    r = cli("predict", model, *files, "--out", tmp_path / "preds", "--score-thresh", "0.05")
    assert r.exit_code == 0 and "seconds per image: proposals" in said(r), r.output
    predicted = json.loads((tmp_path / "preds" / "detections.json").read_text())
    evaluated = load_detections(tmp_path / "eval.json")
    for k, im in enumerate(val.images[:3], start=1):
        mine = sorted((d["bbox"], d["score"]) for d in predicted if d["image_id"] == k)
        theirs = sorted((d["bbox"], d["score"]) for d in evaluated if d["image_id"] == im["id"])
        assert mine == theirs and mine
    r = cli("benchmark", model, "--image", files[0], "--warmup", "0", "--runs", "2", "--json",
            tmp_path / "bench.json")
    assert r.exit_code == 0 and "Selective Search" in said(r), r.output
    timed = json.loads((tmp_path / "bench.json").read_text())["models"][0]["median_ms"]
    assert list(timed) == ["selective_search", "preprocess", "backbone", "roi_head",
                           "postprocess", "total"]
    assert timed["selective_search"] > 0
    assert sum(v for k, v in timed.items() if k != "total") <= timed["total"] + 1e-6
    r = cli("benchmark", model, "--compare", "torchvision")
    assert r.exit_code == 2 and "Selective Search" in said(r)


def test_a_selective_search_detector_cannot_be_one_graph(cli, fast_rcnn, tmp_path, val):
    for fmt in ("onnx", "torchscript"):
        r = cli("export", fast_rcnn / "model.pt", "--format", fmt, "--out", tmp_path / "m")
        assert r.exit_code == 2, r.output
        assert "Selective Search" in said(r) and "frcnn eval or predict" in said(r)
        assert "cannot be one ONNX or TorchScript file" in said(r)
        assert not (tmp_path / "m").exists()
    # from Python, its untrained RPN is never used by mistake
    model = load_model(fast_rcnn / "model.pt")
    image = torch.from_numpy(read_image(val.image_path(val.images[0]))).permute(2, 0, 1)
    with pytest.raises(InputError, match="trained on selective-search proposals"):
        model([image])
    boxes = torch.from_numpy(selective_search(image.permute(1, 2, 0).numpy()))
    assert len(model.detect([image], proposals=[boxes])[0]["boxes"]) > 0
    r = cli("eval", fast_rcnn / "model.pt", "--data", val.path, "--proposals")
    assert r.exit_code == 2 and "--compare-proposals" in said(r)


def test_faster_rcnn_detects_on_a_given_proposal_file(cli, faster_rcnn, ss_val, val, tmp_path):
    r = cli("eval", faster_rcnn, "--data", val.path, "--proposal-file", ss_val,
            "--save-detections", tmp_path / "on-ss.json")
    assert r.exit_code == 0 and "selective-search proposals from the proposals file" in said(r)
    on_ss = load_detections(tmp_path / "on-ss.json")
    # the model called directly on the file's boxes of the first image
    model, im = load_model(faster_rcnn), val.images[0]
    image = torch.from_numpy(read_image(val.image_path(im))).permute(2, 0, 1)
    obj = read_proposals(ss_val)
    boxes = obj["boxes"][:int(obj["counts"][0])]
    with torch.inference_mode():
        direct = model.detect([image], proposals=[boxes])[0]
    got = np.array([d["bbox"] for d in on_ss if d["image_id"] == im["id"]]).reshape(-1, 4)
    want = direct["boxes"].numpy().astype(np.float64)
    want[:, 2:] -= want[:, :2]
    assert len(got) == len(want) > 0
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(want, axis=0), atol=1e-3)
    r = cli("eval", faster_rcnn, "--data", val.path, "--proposal-file", tmp_path / "none.pt")
    assert r.exit_code == 2 and "none.pt" in said(r)


def test_compare_proposals_command(cli, faster_rcnn, ss_val, shapes_data, tmp_path):
    data = shapes_data / "val.json"
    rpn = tmp_path / "rpn.pt"
    r = cli("propose", faster_rcnn, "--data", data, "--out", rpn, "--max", "50")
    assert r.exit_code == 0, r.output
    rpn_meta = read_proposals(rpn)["meta"]
    assert rpn_meta["method"] == "rpn" and rpn_meta["seconds_per_image"] > 0
    assert rpn_meta["post_nms_top_n"] == 50
    out, plots = tmp_path / "cmp.json", tmp_path / "plots"
    r = cli("eval", "--data", data, "--compare-proposals", ss_val, rpn, "--json", out,
            "--plot", plots)
    assert r.exit_code == 0, r.output
    assert "recall at IoU 0.7" in said(r) and "average recall" in said(r)
    got = json.loads(out.read_text())
    ss, rp = got["sources"]
    assert (ss["method"], rp["method"]) == ("selective-search", "rpn")
    assert (ss["file"], rp["file"]) == (str(ss_val), str(rpn))
    assert ss["seconds_per_image"] == read_proposals(ss_val)["meta"]["seconds_per_image"]
    assert list(ss["recall"]) == ["0.5", "0.7"]
    assert list(ss["recall"]["0.5"]) == ["100", "300", "1000", "2000"]
    # every one of the RPN file's <= 50 boxes is within the top 100: its recall there is the
    # coverage propose measured with all of them, and so is Selective Search's at 2000
    cover = rpn_meta["coverage"]
    assert rp["recall"]["0.5"]["100"] == pytest.approx(cover["iou_0.5"], abs=1e-4)
    assert rp["recall"]["0.7"]["2000"] == pytest.approx(cover["iou_0.7"], abs=1e-4)
    ss_cover = read_proposals(ss_val)["meta"]["coverage"]
    assert ss["recall"]["0.5"]["2000"] == pytest.approx(ss_cover["iou_0.5"], abs=1e-4)
    assert sorted(p.name for p in plots.iterdir()) == ["recall_vs_iou.png",
                                                       "recall_vs_proposals.png"]
    # it replaces its own JSON and plots, and refuses another result in the JSON's place
    r = cli("eval", "--data", data, "--compare-proposals", ss_val, "--json", out, "--plot", plots)
    assert r.exit_code == 0 and len(json.loads(out.read_text())["sources"]) == 1, r.output
    other = tmp_path / "eval.json"
    other.write_text(json.dumps({"metric": "voc07", "mAP": 0.5, "per_class": {}}))
    r = cli("eval", "--data", data, "--compare-proposals", ss_val, "--json", other)
    assert r.exit_code == 2 and "holds a JSON file" in said(r) and "mAP" in other.read_text()
    for args, reason in (([ss_val, "--metric", "voc07"], "drop --metric"),
                         ([], "needs the proposal files")):
        r = cli("eval", "--data", data, "--compare-proposals", *args)
        assert r.exit_code == 2 and reason in said(r), r.output
    r = cli("eval", ss_val, rpn, "--data", data)
    assert r.exit_code == 2 and "--compare-proposals" in said(r)
