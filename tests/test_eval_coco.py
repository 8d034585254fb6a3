"""COCO metric: equal to pycocotools run by hand, category ids kept, the empty case."""

import contextlib
import io
import json

import numpy as np
import pytest

from frcnn_cli.data.annotations import load_annotations
from frcnn_cli.errors import DataError
from frcnn_cli.evaluation.evaluate import evaluate_detections


def make_set(tmp_path, seed=0):
    """Category ids 7 and 3 and 12 (not 1..K, not sorted in the file), objects of all sizes,
    one crowd object, and detections near the objects with noise."""
    rng = np.random.default_rng(seed)
    cats = [{"id": 7, "name": "car"}, {"id": 3, "name": "person"}, {"id": 12, "name": "dog"}]
    images = [{"id": 100 + i, "file_name": f"{i}.jpg", "width": 640, "height": 480}
              for i in range(8)]
    anns, dets = [], []
    for im in images:
        for _ in range(int(rng.integers(1, 6))):
            side = float(rng.choice([12.0, 60.0, 150.0]))  # small, medium, large
            b = [float(rng.uniform(0, 400)), float(rng.uniform(0, 300)), side,
                 side * float(rng.uniform(0.6, 1.4))]
            cat = int(rng.choice([7, 3]))  # dog (12) has no object
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat,
                         "bbox": b, "area": b[2] * b[3], "iscrowd": int(rng.random() < 0.05)})
            for _ in range(int(rng.integers(0, 3))):
                jb = (np.array(b) + rng.normal(0, side * 0.1, 4)).clip(1).tolist()
                c = cat if rng.random() < 0.85 else 12
                dets.append({"image_id": im["id"], "category_id": c, "bbox": jb,
                             "score": float(rng.random())})
    ann_path = tmp_path / "ann.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann_path, dets


def pycocotools_by_hand(ann_path, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_path))
        dt = gt.loadRes([dict(d) for d in dets])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1])
def test_equal_to_pycocotools(tmp_path, seed):
    ann_path, dets = make_set(tmp_path, seed)
    ev = pycocotools_by_hand(ann_path, dets)
    r = evaluate_detections(load_annotations(ann_path), dets, "coco")
    assert r.mAP == ev.stats[0]
    names = ["AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"]
    for i, name in enumerate(names, start=1):
        assert r.summary[name] == (ev.stats[i] if ev.stats[i] > -1 else None), name
    # per class: the mean of pycocotools' precision for that category id (all areas, 100 dets)
    cat_index = ev.params.catIds
    for cat_id, name in [(3, "person"), (7, "car")]:
        p = ev.eval["precision"][:, :, cat_index.index(cat_id), 0, -1]
        assert r.per_class[name] == pytest.approx(p[p > -1].mean())
    assert r.per_class["dog"] is None
    j = r.to_dict()
    assert j["metric"] == "coco" and set(j) >= {"AP50", "AP75", "APs", "APm", "APl"}
    assert list(j["per_class"]) == ["person", "car", "dog"]  # label order: by category id


def test_category_ids_are_not_labels(tmp_path):
    # Perfect detections with the right category ids score 1; the same boxes labelled with
    # the label numbers 1 and 2 instead of the ids 3 and 7 are refused.
    ann_path, _ = make_set(tmp_path)
    ann = load_annotations(ann_path)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 1.0} for a in ann.annotations if not a["iscrowd"]]
    r = evaluate_detections(ann, perfect, "coco")
    assert r.mAP == pytest.approx(1.0)
    assert evaluate_detections(ann, perfect, "voc07").mAP == pytest.approx(1.0)
    as_labels = [{**d, "category_id": {3: 1, 7: 2}[d["category_id"]]} for d in perfect]
    with pytest.raises(DataError, match=r"category_id [12], which is not a category"):
        evaluate_detections(ann, as_labels, "coco")


def test_empty_detections_give_zero(tmp_path):
    ann_path, _ = make_set(tmp_path)
    ann = load_annotations(ann_path)
    r = evaluate_detections(ann, [], "coco")
    assert r.mAP == 0.0
    assert r.per_class == {"person": 0.0, "car": 0.0, "dog": None}
    assert r.summary["AP50"] == 0.0 and r.summary["AR100"] == 0.0
    # pycocotools' own loadRes fails on the same input; we did not touch the dataset's dicts
    assert all("ignore" not in a for a in ann.annotations)


def test_unknown_image_id(tmp_path):
    ann_path, dets = make_set(tmp_path)
    dets[3] = {**dets[3], "image_id": 999}
    with pytest.raises(DataError, match="detection 3 has image_id 999, which is not an image"):
        evaluate_detections(load_annotations(ann_path), dets, "coco")
