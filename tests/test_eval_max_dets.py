"""The COCO metric's cap on the detections scored per image and class (pycocotools'
maxDets): it changes the result where it bites, equals pycocotools run with the same cap, and
is refused where it means nothing."""

from __future__ import annotations

import contextlib
import io

import pytest

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.errors import InputError
from frcnn_cli.evaluation.evaluate import evaluate_detections


def crowded():
    """One image with three cars; five detections of them by falling score: two boxes on
    nothing first, then the three cars."""
    cats = [{"id": 1, "name": "car"}]
    images = [{"id": 1, "file_name": "a.jpg", "width": 400, "height": 100}]
    cars = [[10.0 + 60 * k, 10.0, 40.0, 40.0] for k in range(3)]
    anns = [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 1600.0,
             "iscrowd": 0} for k, b in enumerate(cars)]
    dets = [{"image_id": 1, "category_id": 1, "bbox": [300.0 + 30 * k, 60.0, 20.0, 20.0],
             "score": 0.9 - 0.1 * k} for k in range(2)]
    dets += [{"image_id": 1, "category_id": 1, "bbox": b, "score": 0.5 - 0.1 * k}
             for k, b in enumerate(cars)]
    return Annotations(images, anns, cats), dets


def by_hand(ann, dets, max_dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ann.to_dict()
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), "bbox")
        ev.params.maxDets = [1, min(10, max_dets), max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # summarize's AP reads 100 detections whatever the caps: the mean precision at the cap
    at_cap = ev.eval["precision"][:, :, :, 0, -1]
    return [at_cap[at_cap > -1].mean(), *ev.stats[1:]]


def test_the_cap_changes_the_result_where_it_bites():
    ann, dets = crowded()
    full = evaluate_detections(ann, dets, "coco")
    assert full.summary["AR100"] == 1.0  # all five scored, all three cars found
    three = evaluate_detections(ann, dets, "coco", max_dets=3)  # the two misses, one car
    assert three.summary["AR3"] == pytest.approx(1 / 3)
    assert 0 < three.mAP < full.mAP
    two = evaluate_detections(ann, dets, "coco", max_dets=2)  # the two misses only
    assert two.mAP == 0.0 and two.summary["AR2"] == 0.0
    assert evaluate_detections(ann, dets, "coco", max_dets=5).mAP == full.mAP
    for cap, result in ((3, three), (100, full), (300, evaluate_detections(
            ann, dets, "coco", max_dets=300))):
        stats = by_hand(ann, dets, cap)
        assert result.mAP == stats[0] and result.summary["AP50"] == stats[1]
        assert result.summary[f"AR{cap}"] == stats[8]


def test_the_cap_is_the_coco_metrics():
    ann, dets = crowded()
    with pytest.raises(InputError, match="coco metric's; voc07 scores every detection"):
        evaluate_detections(ann, dets, "voc07", max_dets=2)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="max_dets must be a positive integer"):
            evaluate_detections(ann, dets, "coco", max_dets=bad)


def test_the_cap_with_a_default_voc_metric_is_refused_before_the_model_runs(
        cli, data, checkpoint, tmp_path, monkeypatch):
    """No --metric: the checkpoint recipe's (voc07 for shapes) or voc07 for --detections; a
    cap is refused from it before any image goes through the model."""
    import frcnn_cli.evaluation.inference as inference

    def ran(*args, **kwargs):
        raise AssertionError("the model ran before --max-dets was refused")

    monkeypatch.setattr(inference, "predict_dataset", ran)
    r = cli("eval", checkpoint, "--data", data / "val.json", "--max-dets", "5")
    assert r.exit_code == 2, r.output
    assert "--metric voc07 scores every detection" in " ".join(r.output.split())
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    r = cli("eval", "--detections", dets, "--data", data / "val.json", "--max-dets", "5")
    assert r.exit_code == 2, r.output
    assert "--metric voc07 scores every detection" in " ".join(r.output.split())
