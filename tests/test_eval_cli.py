"""``frcnn eval --detections``: what a user sees and the files it writes."""

import json

import pytest

from tests.test_eval_voc import BIRD_DETS, CAT_DETS, DOG_DETS, dataset


@pytest.fixture
def files(tmp_path):
    ann = dataset()
    ann_path = tmp_path / "val.json"
    ann_path.write_text(json.dumps(ann.to_dict()))
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps(CAT_DETS + DOG_DETS + BIRD_DETS))
    return ann_path, dets_path


def test_table_json_and_plots(cli, files, tmp_path):
    ann_path, dets_path = files
    out, plots = tmp_path / "res.json", tmp_path / "plots"
    r = cli("eval", "--detections", dets_path, "--data", ann_path, "--metric", "voc",
            "--json", out, "--plot", plots)
    assert r.exit_code == 0, r.output
    assert "VOC area AP" in r.output
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.split("│")] for line in r.output.splitlines())
            if cells[0] in ("cat", "dog", "bird", "mAP")}
    # objects that count, detections, AP
    assert rows["cat"] == ["3", "7", "0.5000"]
    assert rows["dog"] == ["4", "4", "0.6250"]
    assert rows["bird"] == ["0", "1", "n/a"]
    assert rows["mAP"] == ["7", "12", "0.5625"]
    assert json.loads(out.read_text()) == {
        "frcnn": {"kind": "eval result"},  # the mark that lets the next run replace it
        "metric": "voc", "mAP": pytest.approx(0.5625),
        "per_class": {"cat": pytest.approx(0.5), "dog": pytest.approx(0.625), "bird": None}}
    pngs = sorted(p.name for p in plots.iterdir())
    assert pngs == ["pr_all.png", "pr_cat.png", "pr_dog.png"]
    assert (plots / "pr_cat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_metric_is_voc07(cli, files):
    ann_path, dets_path = files
    r = cli("eval", "--detections", dets_path, "--data", ann_path)
    assert r.exit_code == 0 and "VOC2007 11-point" in r.output
    assert "0.5568" in r.output  # (5.5 / 11 + 6.75 / 11) / 2


def test_coco_json_has_summary(cli, files, tmp_path):
    ann_path, dets_path = files
    out = tmp_path / "coco.json"
    r = cli("eval", "--detections", dets_path, "--data", ann_path, "--metric", "coco",
            "--json", out)
    assert r.exit_code == 0, r.output
    j = json.loads(out.read_text())
    assert j["metric"] == "coco" and j["per_class"]["bird"] is None
    for key in ("AP50", "AP75", "APs", "APm", "APl"):
        assert key in j
    assert "COCO AP (pycocotools)" in r.output and "AR100" in r.output


def test_empty_detections_mean_zero(cli, files, tmp_path):
    ann_path, dets_path = files
    dets_path.write_text("[]")
    for metric in ("voc07", "coco"):
        out = tmp_path / f"{metric}.json"
        r = cli("eval", "--detections", dets_path, "--data", ann_path, "--metric", metric,
                "--json", out)
        assert r.exit_code == 0, r.output
        assert json.loads(out.read_text())["mAP"] == 0.0


def test_unknown_image_id_is_one_line_exit_2(cli, files):
    ann_path, dets_path = files
    dets = json.loads(dets_path.read_text())
    dets[2]["image_id"] = 77
    dets_path.write_text(json.dumps(dets))
    r = cli("eval", "--detections", dets_path, "--data", ann_path)
    assert r.exit_code == 2
    assert "detection 2 has image_id 77, which is not an image of the dataset" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("content, message", [
    ('{"images": [], "annotations": [], "categories": []}', "is a dataset"),
    ('[{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]', "lacks 'category_id'"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 1}]', "'bbox' must be"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1], "score": 1}]', "w, h >= 0"),
    ("[{", "not valid JSON"),
])
def test_bad_detections_file(cli, files, content, message):
    ann_path, dets_path = files
    dets_path.write_text(content)
    r = cli("eval", "--detections", dets_path, "--data", ann_path)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_argument_errors(cli, files, tmp_path):
    ann_path, dets_path = files
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    cases = [
        (("eval", "--detections", dets_path), "needs --data"),
        (("eval", "--data", ann_path), "exactly one"),
        (("eval", ckpt, "--detections", dets_path, "--data", ann_path), "exactly one"),
        (("eval", "--detections", dets_path, "--data", ann_path, "--proposals"),
         "needs a checkpoint"),
        (("eval", "--detections", tmp_path / "nope.json", "--data", ann_path), "not found"),
        (("eval", "--detections", dets_path, "--data", ann_path, "--json", ann_path),
         "same file as the input"),
    ]
    for args, message in cases:
        r = cli(*args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output and "Traceback" not in r.output
