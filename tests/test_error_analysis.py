"""Error analysis (eval --analyze): TIDE's numbers against the tidecv package, difficult and
crowd objects ignored, the greedy matching, the confusion matrix on a hand-worked case, and
the folder analyze writes (files, drawings, the output rule)."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
from PIL import Image

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.errors import DataError, InputError
from frcnn_cli.evaluation.analysis import analyze, check_outputs, drawing_names
from frcnn_cli.evaluation.confusion import confusion
from frcnn_cli.evaluation.detections import detection_arrays, ground_truth_arrays
from frcnn_cli.evaluation.draw import ERROR_COLOURS
from frcnn_cli.evaluation.greedy import greedy_match
from frcnn_cli.evaluation.tide import ERROR_TYPES, find_outcomes, tide_errors
from frcnn_cli.outputs import ERROR_DRAWING_SOFTWARE, picture_software

TIDECV_VERSION = "1.0.1"
TIDECV_NAMES = {"cls": "Cls", "loc": "Loc", "both": "Both", "dupe": "Dupe", "bkg": "Bkg",
                "miss": "Miss"}


def tidecv():
    """The reference implementation; its absence fails the test (it is a dev dependency)."""
    try:
        import tidecv as module
    except ImportError as e:
        pytest.fail(f"tidecv, the reference for TIDE's numbers, cannot be imported ({e}); "
                    f"install it with `pip install --no-deps tidecv=={TIDECV_VERSION}` "
                    "(`make install` does)")
    return module


# --------------------------------------------------------------------------- generated sets


def _moved(rng, box, lo, hi):
    """``box`` moved along x or y by a fraction in [lo, hi) of its side: IoU (1-s)/(1+s)."""
    b = list(box)
    axis = int(rng.integers(2))
    b[axis] += float(rng.uniform(lo, hi)) * b[axis + 2] * float(rng.choice([-1, 1]))
    return b


def every_error_set(seed=0, num_images=40, num_classes=3):
    """Objects with detections of every kind around them: true positives (moved < 10 %),
    duplicates, right boxes of the wrong class (cls), boxes moved 40-70 % (IoU 0.18-0.43) of
    the right class (loc) or another (both), boxes anywhere (mostly bkg), and objects without
    a detection (miss); some images have no object, some no detection. Some objects have a
    neighbour of the other class that overlaps them by IoU 0.25-0.43, so that a wrong-class
    box on the object is ``loc`` for the neighbour before it is ``cls``: TIDE's order
    decides."""
    rng = np.random.default_rng(seed)
    cats = [{"id": 10 + k, "name": f"class{k}"} for k in range(num_classes)]
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 640, "height": 480}
              for i in range(num_images)]
    anns, dets = [], []

    def detect(image_id, cat, box):
        dets.append({"image_id": image_id, "category_id": cat,
                     "bbox": [float(v) for v in box], "score": float(rng.random())})

    for im in images:
        for _ in range(int(rng.integers(0, 6))):
            w, h = (float(v) for v in rng.uniform(20, 150, 2))
            box = [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)), w, h]
            cat = 10 + int(rng.integers(num_classes))
            other = 10 + (cat - 10 + int(rng.integers(1, num_classes))) % num_classes
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat,
                         "bbox": box, "area": w * h, "iscrowd": 0})
            if rng.random() < 0.3:  # a neighbour of the other class, 40-60 % across
                anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": other,
                             "bbox": _moved(rng, box, 0.4, 0.6), "area": w * h, "iscrowd": 0})
            for p, c, lo, hi in ((0.6, cat, 0, 0.1), (0.2, cat, 0, 0.15), (0.15, other, 0, 0.1),
                                 (0.2, cat, 0.4, 0.7), (0.1, other, 0.4, 0.7)):
                if rng.random() < p:
                    detect(im["id"], c, _moved(rng, box, lo, hi))
        for _ in range(int(rng.integers(0, 3))):
            w, h = rng.uniform(10, 60, 2)
            detect(im["id"], 10 + int(rng.integers(num_classes)),
                   [rng.uniform(0, 600), rng.uniform(0, 440), w, h])
    return Annotations(images, anns, cats), dets


def random_set(seed=0, num_images=200, num_classes=8):
    """A larger random set: up to 11 objects per image of 8-300 px, a Poisson number of
    detections around each with exponential noise and a 20 % chance of a random class, a few
    random boxes per image, and one image in twenty with 150 random boxes (past the cap of
    100 detections per image)."""
    rng = np.random.default_rng(seed)
    cats = [{"id": k + 1, "name": f"c{k}"} for k in range(num_classes)]
    images = [{"id": 1000 + i, "file_name": f"{i}.png", "width": 800, "height": 600}
              for i in range(num_images)]
    anns, dets = [], []
    for im in images:
        for _ in range(int(rng.integers(0, 12))):
            w, h = rng.uniform(8, 300, 2)
            box = [float(rng.uniform(0, 800 - w)), float(rng.uniform(0, 600 - h)), w, h]
            cat = int(rng.integers(1, num_classes + 1))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat,
                         "bbox": box, "area": w * h, "iscrowd": 0})
            for _ in range(int(rng.poisson(1.5))):
                moved = np.array(box) + rng.normal(0, rng.exponential(0.15), 4) * [w, h, w, h]
                moved[2:] = np.abs(moved[2:]) + 1
                c = cat if rng.random() < 0.8 else int(rng.integers(1, num_classes + 1))
                dets.append({"image_id": im["id"], "category_id": c, "bbox": moved.tolist(),
                             "score": float(rng.random())})
        for _ in range(150 if rng.random() < 0.05 else int(rng.integers(0, 4))):
            w, h = rng.uniform(8, 200, 2)
            dets.append({"image_id": im["id"], "category_id": int(rng.integers(1, num_classes + 1)),
                         "bbox": [float(rng.uniform(0, 700)), float(rng.uniform(0, 500)),
                                  float(w), float(h)], "score": float(rng.random() ** 2)})
    return Annotations(images, anns, cats), dets


def ours(ann, dets):
    outcomes = find_outcomes(ground_truth_arrays(ann), detection_arrays(ann, dets),
                             len(ann.images))
    return tide_errors(outcomes, len(ann.classes))


def reference(ann, dets):
    """tidecv's numbers (in AP points, as it reports them) and its error counts."""
    tide = tidecv()
    gt, pred = tide.Data("gt"), tide.Data("dets")
    for im in ann.images:
        gt.add_image(im["id"], im["file_name"])
    for a in ann.annotations:
        gt.add_ground_truth(a["image_id"], a["category_id"], list(a["bbox"]))
    for d in dets:
        pred.add_detection(d["image_id"], d["category_id"], d["score"], list(d["bbox"]))
    # tidecv's plotter sets seaborn's style and palette for the whole process: keep them from
    # leaking into the plots other tests of this process check
    with matplotlib.rc_context():
        evaluator = tide.TIDE()
        run = evaluator.evaluate(gt, pred, mode=tide.TIDE.BOX)
    counts = {e.short_name: len(found) for e, found in run.error_dict.items()}
    return (run.ap, evaluator.get_main_errors()["dets"], evaluator.get_special_errors()["dets"],
            counts)


def assert_as_tidecv(ann, dets):
    mine = ours(ann, dets)
    ap, main, special, counts = reference(ann, dets)
    # tidecv reports AP points (0..100); the issue allows 0.5 of them
    assert mine.ap50 * 100 == pytest.approx(ap, abs=0.5)
    for name in ERROR_TYPES:
        assert mine.dAP[name] * 100 == pytest.approx(main[TIDECV_NAMES[name]], abs=0.5), name
        assert mine.counts[name] == counts[TIDECV_NAMES[name]], name
    assert mine.false_pos * 100 == pytest.approx(special["FalsePos"], abs=0.5)
    assert mine.false_neg * 100 == pytest.approx(special["FalseNeg"], abs=0.5)
    return mine


# --------------------------------------------------------------------------- TIDE


def test_every_error_type_as_tidecv():
    mine = assert_as_tidecv(*every_error_set())
    assert all(mine.counts[name] >= 3 for name in ERROR_TYPES), mine.counts
    assert all(mine.dAP[name] > 0.002 for name in ERROR_TYPES), mine.dAP
    assert 0 < mine.ap50 < 1 and mine.false_pos > 0 and mine.false_neg > 0


def test_a_larger_random_set_as_tidecv():
    ann, dets = random_set()
    per_image = np.bincount([d["image_id"] - 1000 for d in dets])
    assert per_image.max() > 100  # the cap of 100 detections per image bites
    mine = assert_as_tidecv(ann, dets)
    assert all(mine.counts[name] > 50 for name in ERROR_TYPES), mine.counts


def with_ignored(ann, dets, flag):
    """``ann`` with an ignored object (``flag``: iscrowd or difficult) in every third image,
    far from the others, a detection on it of its class (IoU 0.9: ignored) and an ignored
    object in every fourth image that no detection finds (not missed)."""
    anns, extra = list(ann.annotations), list(dets)
    for k, im in enumerate(ann.images):
        if k % 3 and k % 4:
            continue
        box = [1000.0, 1000.0, 50.0, 40.0]
        anns.append({"id": 10_000 + k, "image_id": im["id"], "category_id": 10 + k % 3,
                     "bbox": box, "area": 2000.0, "iscrowd": 0, flag: 1})
        if k % 3 == 0:
            extra.append({"image_id": im["id"], "category_id": 10 + k % 3,
                          "bbox": [1002.0, 1000.0, 50.0, 40.0], "score": 0.99})
    return Annotations(ann.images, anns, ann.categories), extra


@pytest.mark.parametrize("flag", ["iscrowd", "difficult"])
def test_crowd_and_difficult_objects_are_ignored(flag):
    # Neither found nor missed: the numbers stay those of the set without them, and a
    # detection on one is no error of any type.
    ann, dets = every_error_set()
    base = ours(ann, dets)
    ann2, dets2 = with_ignored(ann, dets, flag)
    mine = ours(ann2, dets2)
    assert mine.ap50 == pytest.approx(base.ap50, abs=1e-12)
    assert mine.counts == base.counts
    for name in ERROR_TYPES:
        assert mine.dAP[name] == pytest.approx(base.dAP[name], abs=1e-12), name


def test_an_object_counts_before_an_ignored_one():
    # A detection on a counted object and a crowd region at once is a true positive.
    cats = [{"id": 1, "name": "person"}]
    images = [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 200}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 52, 50], "iscrowd": 1}]
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 51, 50], "score": 0.9}]
    report = ours(Annotations(images, anns, cats), dets)
    assert report.ap50 == 1.0 and report.counts["false_pos"] == 0


def sequential_match(iou, allowed, thresh):
    """The greedy walk written plainly, one detection after the other."""
    match, free = np.full(len(iou), -1), np.ones(iou.shape[1], dtype=bool)
    for d in range(len(iou)):
        best, best_iou = -1, -1.0
        for g in range(iou.shape[1]):
            if free[g] and allowed[d, g] and iou[d, g] >= thresh and iou[d, g] > best_iou:
                best, best_iou = g, iou[d, g]
        if best >= 0:
            match[d], free[best] = best, False
    return match


@pytest.mark.parametrize("seed", range(4))
def test_greedy_match_is_the_sequential_walk(seed):
    # Few objects, many detections on them: most detections want a taken object.
    rng = np.random.default_rng(seed)
    iou = np.round(rng.random((60, 7)), 1)  # ties too
    allowed = rng.random((60, 7)) < 0.7
    match = greedy_match(iou, allowed, 0.5)
    assert (match == sequential_match(iou, allowed, 0.5)).all()
    assert (match >= 0).sum() == 7


# --------------------------------------------------------------------------- confusion matrix


def confusion_case():
    """Two classes, two images, worked by hand in test_confusion_matrix_by_hand."""
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    images = [{"id": 1, "file_name": "one.jpg", "width": 100, "height": 40},
              {"id": 2, "file_name": "two.png", "width": 100, "height": 100}]
    objects = [(1, 1, [0, 0, 10, 10], 0),    # A cat
               (1, 2, [20, 0, 10, 10], 0),   # B dog
               (1, 1, [40, 0, 10, 10], 0),   # C cat
               (1, 2, [60, 0, 10, 10], 1),   # D dog crowd
               (2, 2, [0, 0, 20, 20], 0)]    # E dog
    anns = [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": 100.0,
             "iscrowd": crowd} for i, (im, c, b, crowd) in enumerate(objects)]
    dets = [(1, 1, [0, 0, 10, 10], 0.9),     # d1 cat on A
            (1, 2, [1, 0, 10, 10], 0.8),     # d2 dog on A, taken: nothing left
            (1, 1, [20, 0, 10, 10], 0.7),    # d3 cat on B (a dog)
            (1, 2, [60, 0, 10, 10], 0.6),    # d4 dog on the crowd D: dropped
            (1, 1, [40, 0, 10, 10], 0.3),    # d5 cat on C, below the threshold
            (2, 2, [50, 50, 10, 10], 0.95),  # d6 dog on nothing
            (2, 1, [80, 80, 10, 10], 0.1)]   # d7 cat on nothing, below the threshold
    dets = [{"image_id": im, "category_id": c, "bbox": b, "score": s}
            for im, c, b, s in dets]
    return Annotations(images, anns, cats), dets


def test_confusion_matrix_by_hand():
    ann, dets = confusion_case()
    outcomes = find_outcomes(ground_truth_arrays(ann), detection_arrays(ann, dets), 2)
    result = confusion(outcomes, ["cat", "dog"], 0.5)
    # rows truth (cat, dog, background), columns detections: A found by d1; B taken by the
    # cat d3; C missed at 0.5 (d5 scores 0.3); E missed; d2 and d6 found nothing; d4 dropped
    assert result.matrix.tolist() == [[1, 0, 1],
                                      [1, 0, 1],
                                      [0, 2, 0]]
    cat, dog = result.per_class()["cat"], result.per_class()["dog"]
    # cat: d1 and d3 scored >= 0.5, one right; objects A and C, one found
    assert (cat["precision"], cat["recall"], cat["f1"]) == (0.5, 0.5, 0.5)
    assert (dog["precision"], dog["recall"], dog["f1"]) == (0.0, 0.0, 0.0)
    assert (cat["objects"], cat["detections"], dog["objects"], dog["detections"]) == (2, 2, 2, 2)
    # best F1, same-class matching over every threshold: cat's detections by score are
    # d1 (hit A), d3 (no cat there), d5 (hit C), d7 (nothing): F1 2/3, 1/2, 4/5, 2/3 -> 0.8
    # at 0.3. Dog's d6, d2 find no dog and d4 is ignored: no threshold gives a true positive.
    assert cat["best_f1"] == pytest.approx(0.8) and cat["best_f1_thresh"] == 0.3
    assert dog["best_f1"] == 0.0 and dog["best_f1_thresh"] is None
    header, rows = result.rows()
    assert header == ["truth \\ detection", "cat", "dog", "background"]
    assert rows[2] == ["background", 0, 2, 0]
    # a lower threshold lets d5 take C
    assert confusion(outcomes, ["cat", "dog"], 0.25).matrix.tolist()[0] == [2, 0, 0]


def test_best_f1_keeps_equal_scores_together():
    # A hit and a miss of the one cat at the same score: no threshold keeps the hit alone
    # (F1 1), both or neither are kept (F1 2/3).
    ann, _ = confusion_case()
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.9}]
    one_cat = Annotations(ann.images, ann.annotations[:1], ann.categories)
    outcomes = find_outcomes(ground_truth_arrays(one_cat), detection_arrays(one_cat, dets), 2)
    cat = confusion(outcomes, ["cat", "dog"], 0.5).per_class()["cat"]
    assert cat["best_f1"] == pytest.approx(2 / 3) and cat["best_f1_thresh"] == 0.9


# --------------------------------------------------------------------------- the folder


def write_images(ann):
    for im in ann.images:
        path = ann.image_path(im)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (im["width"], im["height"]), (90, 90, 90)).save(path)


def drawing_case(root):
    """One 200 px PNG: a cat found only as a dog (cls; the cat is missed at 0.5), a dog found
    (tp), a box on nothing (bkg); a second image without error."""
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    images = [{"id": 1, "file_name": "pics/a.png", "width": 200, "height": 200},
              {"id": 2, "file_name": "pics/b.png", "width": 200, "height": 200}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 20, 60, 60], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [120, 20, 50, 50], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [10, 10, 50, 50], "iscrowd": 0}]
    dets = [{"image_id": 1, "category_id": 2, "bbox": [22, 20, 60, 60], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [130, 130, 40, 40], "score": 0.8},
            {"image_id": 1, "category_id": 2, "bbox": [120, 20, 50, 50], "score": 0.7},
            {"image_id": 2, "category_id": 2, "bbox": [10, 10, 50, 50], "score": 0.9}]
    ann = Annotations(images, anns, cats, root)
    write_images(ann)
    return ann, dets


def test_drawings_colour_each_box_by_its_error(tmp_path):
    ann, dets = drawing_case(tmp_path / "data")
    result = analyze(ann, dets, tmp_path / "why")
    assert [d.drawing.name for d in result.drawn] == ["a.png"]  # b.png has no error
    drawn = result.drawn[0]
    assert drawn.errors == {"cls": 1, "loc": 0, "both": 0, "dupe": 0, "bkg": 1, "missed": 1}
    assert picture_software(drawn.drawing) == ERROR_DRAWING_SOFTWARE
    pixels = np.asarray(Image.open(drawn.drawing).convert("RGB"))
    colour = {name: tuple(int(v) for v in pixels[y, x]) for name, (x, y) in {
        "missed": (20, 50), "cls": (22, 50), "bkg": (130, 150), "tp": (120, 45),
        "background": (100, 100)}.items()}
    assert colour == {"missed": ERROR_COLOURS["missed"], "cls": ERROR_COLOURS["cls"],
                      "bkg": ERROR_COLOURS["bkg"], "tp": ERROR_COLOURS["tp"],
                      "background": (90, 90, 90)}


def test_analyze_writes_the_folder(tmp_path):
    ann, dets = every_error_set(num_images=12)
    ann.images[1]["file_name"] = "sub/0.jpg"  # the stem of 0.jpg: a clash
    ann = Annotations(ann.images, ann.annotations, ann.categories, tmp_path / "data")
    write_images(ann)
    out = tmp_path / "why"
    result = analyze(ann, dets, out, score_thresh=0.3, max_images=5)

    errors = json.loads((out / "errors.json").read_text())
    expected = ours(ann, dets)
    assert errors["ap50"] == expected.ap50 and errors["dAP"] == expected.dAP
    assert set(errors) >= {"ap50", "dAP", "false_pos", "false_neg"}
    matrix = json.loads((out / "confusion.json").read_text())
    assert matrix["score_thresh"] == 0.3 and len(matrix["matrix"]) == 4
    assert matrix["classes"] == ["class0", "class1", "class2", "background"]
    assert picture_software(out / "confusion.png") == "frcnn plot"

    assert len(result.drawn) == 5
    totals = [sum(d.errors.values()) for d in result.drawn]
    assert totals == sorted(totals, reverse=True) and totals[-1] > 0
    assert all(picture_software(d.drawing) == ERROR_DRAWING_SOFTWARE for d in result.drawn)
    assert {p.name for p in (out / "images").iterdir()} == {d.drawing.name for d in result.drawn}
    assert drawing_names(ann)[:3] == ["images/0.jpg", "images/0-2.jpg", "images/2.jpg"]
    rows = result.error_rows()
    assert [r[0] for r in rows] == [*ERROR_TYPES, "false_pos", "false_neg"]
    assert rows[0][2:] == (expected.dAP["cls"], expected.counts["cls"])
    assert result.matrix_rows()[1][-1][0] == "background"

    again = analyze(ann, dets, out, score_thresh=0.3, max_images=5)  # its own files: replaced
    assert [d.drawing for d in again.drawn] == [d.drawing for d in result.drawn]


def test_files_frcnn_did_not_write_are_refused_before_the_work(tmp_path):
    ann, dets = drawing_case(tmp_path / "data")
    out = tmp_path / "why"
    (out / "images").mkdir(parents=True)
    mine = Image.new("RGB", (8, 8))
    mine.save(out / "images" / "b.png")  # a picture of the user's where a drawing may go
    with pytest.raises(InputError, match=r"b\.png already holds an image"):
        check_outputs(out, ann)
    (out / "images" / "b.png").unlink()
    (out / "errors.json").write_text('{"mine": 1}')
    with pytest.raises(InputError, match=r"errors\.json already holds a JSON file"):
        analyze(ann, dets, out)
    assert (out / "errors.json").read_text() == '{"mine": 1}'
    assert not (out / "confusion.json").exists()


def test_a_drawing_never_replaces_a_dataset_image(tmp_path):
    # Images that are themselves earlier drawings, in the folder's images/: still inputs.
    ann, dets = drawing_case(tmp_path / "why")
    ann.images[0]["file_name"] = "images/a.png"
    ann = Annotations(ann.images, ann.annotations, ann.categories, tmp_path / "why")
    write_images(ann)
    analyze(ann, dets, tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "images" / "a.png").replace(tmp_path / "why" / "images" / "a.png")
    with pytest.raises(InputError, match="would replace an image of the dataset"):
        check_outputs(tmp_path / "why", ann)


def test_settings_and_empty_sets_are_refused(tmp_path):
    ann, dets = drawing_case(tmp_path / "data")
    for bad in ({"score_thresh": float("nan")}, {"max_images": -1}, {"max_dets": 0}):
        with pytest.raises(InputError):
            analyze(ann, dets, tmp_path / "why", **bad)
    crowd = [{**a, "iscrowd": 1} for a in ann.annotations]
    with pytest.raises(DataError, match="no object to analyse"):
        analyze(Annotations(ann.images, crowd, ann.categories, ann.root), dets, tmp_path / "w")
    result = analyze(ann, dets, tmp_path / "none", max_images=0)
    assert result.drawn == [] and not any((tmp_path / "none" / "images").iterdir())
