"""`frcnn data check`: a broken set's report and exit code, and what --fix writes."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from frcnn_cli.data.annotations import load_annotations
from frcnn_cli.data.check import check_dataset, fix_dataset


@pytest.fixture
def broken(tmp_path):
    for name in ("a.png", "b.png", "d.png", "e.png"):
        Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / name)
    Image.new("RGB", (300, 300), (9, 9, 9)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])  # truncated
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "gone.jpg", "width": 40, "height": 30},
            {"id": 3, "file_name": "t.jpg", "width": 300, "height": 300},
            {"id": 4, "file_name": "d.png", "width": 50, "height": 50},
            {"id": 5, "file_name": "e.png", "width": 40, "height": 30},
            {"id": 6, "file_name": "b.png", "width": 40, "height": 30},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10.1]},  # duplicate
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 5, 5]},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [5, 5, -3, 4]},
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [35, 20, 10, 20]},  # partly out
            {"id": 6, "image_id": 1, "category_id": 1, "bbox": [45, 2, 3, 3]},  # wholly out
            {"id": 7, "image_id": 1, "category_id": 8, "bbox": [2, 2, 3, 3]},  # unknown class
            {"id": 8, "image_id": 99, "category_id": 1, "bbox": [2, 2, 3, 3]},  # orphan
            {"id": 8, "image_id": 4, "category_id": 1, "bbox": [2, 2, 30, 20]},  # repeated id
            {"id": 9, "image_id": 4, "category_id": 1, "bbox": [2, 2, 0.5, 8]},  # tiny
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return tmp_path / "ann.json"


def test_report_by_kind(broken):
    report = check_dataset(load_annotations(broken), workers=1)
    kinds = {k: [i.message for i in v] for k, v in report.by_kind().items()}
    assert list(kinds)[:3] == ["missing image", "unreadable image", "size mismatch"]
    assert kinds["missing image"] == [f"image 2: {broken.parent / 'gone.jpg'} not found"]
    assert "t.jpg" in kinds["unreadable image"][0]
    assert kinds["size mismatch"] == ["image 4 (d.png): the file is 40x30, the JSON says 50x50"]
    assert len(kinds["degenerate box"]) == 2
    assert kinds["box outside image"][0].startswith("annotation 6 (image 1)")
    assert kinds["box partly outside image"][0].startswith("annotation 5 (image 1)")
    assert kinds["unknown category"][0].startswith("annotation 7 (image 1): category 8")
    assert kinds["orphan annotation"] == ["annotation 8: image 99 does not exist"]
    assert kinds["duplicate annotation id"] == ["annotation id 8 is used 2 times"]
    assert kinds["duplicate box"] == ["annotation 2 (image 1) repeats another box of its class"]
    assert kinds["tiny box"][0].startswith("annotation 9 (image 4)")
    assert kinds["image without objects"] == [
        "image 2 (gone.jpg)", "image 3 (t.jpg)", "image 5 (e.png)", "image 6 (b.png)"]
    assert not report.ok and report.count("error") == 9


def test_cli_exit_2_without_traceback_and_fix(cli, broken, tmp_path):
    r = cli("data", "check", broken)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert "gone.jpg not found" in r.output and "t.jpg" in r.output
    assert "has 9 error(s)" in r.output and "--fix" in r.output

    out = tmp_path / "clean" / "ann.json"
    before = broken.read_bytes()
    r = cli("data", "check", broken, "--fix", out)
    assert r.exit_code == 0, r.output
    assert "boxes clipped to their image" in r.output and "no errors" in r.output
    assert broken.read_bytes() == before
    data = json.loads(out.read_text())
    assert [(im["id"], im["file_name"]) for im in data["images"]] == \
        [(1, "../a.png"), (4, "../d.png"), (5, "../e.png"), (6, "../b.png")]
    assert data["images"][1]["width"] == 40 and data["images"][1]["height"] == 30
    boxes = {a["id"]: a["bbox"] for a in data["annotations"]}
    # 1 kept, 2 duplicate, 3 NaN, 4 negative, 6 outside, 7 unknown, first 8 orphan, 9 tiny
    assert boxes == {1: [1, 1, 10, 10], 5: [35, 20, 5, 10], 8: [2, 2, 30, 20]}
    assert [a["area"] for a in data["annotations"] if a["id"] == 5] == [50]
    r = cli("data", "check", out)
    assert r.exit_code == 0 and "0 error(s)" in r.output

    r = cli("data", "check", broken, "--fix", broken)
    assert r.exit_code == 2 and "same file as the input" in r.output
    assert broken.read_bytes() == before


def test_clean_set_exits_0(cli, shapes_data):
    r = cli("data", "check", shapes_data / "train.json")
    assert r.exit_code == 0, r.output
    assert "0 error(s)" in r.output or "no problems found" in r.output


def test_fix_is_idempotent(broken):
    ann = load_annotations(broken)
    fixed, changes = fix_dataset(ann, check_dataset(ann, workers=1))
    assert changes
    again, more = fix_dataset(fixed, check_dataset(fixed, workers=1))
    assert more == {} and again.annotations == fixed.annotations
