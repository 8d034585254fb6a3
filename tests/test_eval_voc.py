"""VOC AP: devkit matching rules and both AP definitions, against hand-worked numbers."""

import numpy as np
import pytest

from frcnn_cli.data.annotations import annotations_from_dict
from frcnn_cli.evaluation import voc
from frcnn_cli.evaluation.evaluate import evaluate_detections

CAT, DOG, BIRD = 1, 2, 3


def box(x, y, w=10, h=10):
    return [x, y, w, h]


def dataset():
    """Image 1: cats A, B and dogs E, F. Image 2: cat C, a difficult cat D, dogs G, H, a crowd
    cat. No bird anywhere."""
    objs = [
        (1, CAT, box(0, 0), {}),                    # A
        (1, CAT, box(20, 0), {}),                   # B
        (2, CAT, box(0, 0), {}),                    # C
        (2, CAT, box(50, 50), {"difficult": 1}),    # D
        (2, CAT, box(80, 80), {"iscrowd": 1}),      # crowd: ignored like difficult
        (1, DOG, box(0, 40), {}),                   # E
        (1, DOG, box(40, 40), {}),                  # F
        (2, DOG, box(0, 40), {}),                   # G
        (2, DOG, box(40, 40), {}),                  # H
    ]
    anns = [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, **extra}
            for i, (im, c, b, extra) in enumerate(objs)]
    return annotations_from_dict({
        "images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100},
                   {"id": 2, "file_name": "2.jpg", "width": 100, "height": 100}],
        "annotations": anns,
        "categories": [{"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"},
                       {"id": BIRD, "name": "bird"}],
    })


def det(image_id, cat, b, score):
    return {"image_id": image_id, "category_id": cat, "bbox": b, "score": score}


# cat, by falling score (3 objects count: A, B, C):
#   0.9 on A, IoU 1                      -> TP
#   0.8 on A again, IoU 90/110 = 0.82    -> duplicate: FP
#   0.7 on D (difficult), IoU 1          -> ignored
#   0.6 on nothing                       -> FP
#   0.5 on B, IoU 1                      -> TP
#   0.4 near C, IoU 50/150 = 0.33        -> FP (IoU must exceed 0.5)
#   0.3 on the crowd cat                 -> ignored
# counted: TP FP FP TP FP -> recall 1/3 1/3 1/3 2/3 2/3, precision 1 1/2 1/3 1/2 2/5
# 11-point: r = 0, .1, .2, .3 -> max precision 1; r = .4, .5, .6 -> 1/2; r >= .7 -> 0
#           (4 * 1 + 3 * 0.5) / 11 = 5.5 / 11 = 0.5
# area: envelope 1 up to recall 1/3, 1/2 up to 2/3: 1/3 * 1 + 1/3 * 1/2 = 0.5
CAT_DETS = [
    det(1, CAT, box(0, 0), 0.9),
    det(1, CAT, box(1, 0), 0.8),
    det(2, CAT, box(50, 50), 0.7),
    det(2, CAT, box(30, 30), 0.6),
    det(1, CAT, box(20, 0), 0.5),
    det(2, CAT, box(5, 0), 0.4),
    det(2, CAT, box(80, 80), 0.3),
]
# dog, by falling score (4 objects): TP FP TP TP
#   recall .25 .25 .5 .75, precision 1 1/2 2/3 3/4
# 11-point: r = 0, .1, .2 -> 1; r = .3, .4, .5 -> 3/4; r = .6, .7 -> 3/4; r >= .8 -> 0
#           (3 * 1 + 5 * 0.75) / 11 = 6.75 / 11 = 0.613636...
# area: envelope 1 to .25, 3/4 to .75: .25 * 1 + .5 * .75 = 0.625
DOG_DETS = [
    det(1, DOG, box(0, 40), 0.95),
    det(1, DOG, box(0, 0), 0.85),      # on cat A, no dog there -> FP
    det(1, DOG, box(40, 40), 0.75),
    det(2, DOG, box(0, 40), 0.65),
]
# a bird detection: the class has no object -> AP n/a, left out of the mean
BIRD_DETS = [det(1, BIRD, box(0, 0), 0.99)]


def test_hand_worked_11_point():
    r = evaluate_detections(dataset(), CAT_DETS + DOG_DETS + BIRD_DETS, "voc07")
    assert r.per_class["cat"] == pytest.approx(5.5 / 11)
    assert r.per_class["dog"] == pytest.approx(6.75 / 11)
    assert r.per_class["bird"] is None
    assert r.mAP == pytest.approx((5.5 / 11 + 6.75 / 11) / 2)
    assert r.objects == {"cat": 3, "dog": 4, "bird": 0}
    assert r.to_dict()["per_class"] == {"cat": pytest.approx(0.5),
                                        "dog": pytest.approx(6.75 / 11), "bird": None}


def test_hand_worked_area():
    r = evaluate_detections(dataset(), CAT_DETS + DOG_DETS + BIRD_DETS, "voc")
    assert r.per_class["cat"] == pytest.approx(0.5)
    assert r.per_class["dog"] == pytest.approx(0.625)
    assert r.mAP == pytest.approx((0.5 + 0.625) / 2)
    # the curve leaves out the two ignored detections
    np.testing.assert_allclose(r.curves["cat"].recall, [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(r.curves["cat"].precision, [1, 1 / 2, 1 / 3, 1 / 2, 2 / 5])


def test_order_of_detections_in_file_does_not_matter():
    dets = CAT_DETS + DOG_DETS
    a = evaluate_detections(dataset(), dets, "voc")
    b = evaluate_detections(dataset(), dets[::-1], "voc")
    assert a.per_class == b.per_class


def test_outcomes_difficult_duplicate_threshold():
    ann = dataset()
    dets = CAT_DETS
    from frcnn_cli.evaluation.detections import detection_arrays, ground_truth_arrays

    d, g = detection_arrays(ann, dets), ground_truth_arrays(ann)
    out = voc.match_detections(d.images * 3 + d.classes, d.boxes, d.scores,
                               g.images * 3 + g.classes, g.boxes, g.ignore)
    assert out.tolist() == [1, 0, -1, 0, 1, 0, -1]


def test_best_object_is_the_highest_iou_even_if_taken():
    # Objects P [0,0,10,10] and Q [4,0,10,10]. The first detection lies on Q and takes it.
    # The second overlaps P by 0.67 and Q by 0.82: it belongs to Q, which is taken, so it is a
    # duplicate (FP) although P is free - the devkit's rule.
    gt_boxes = np.array([box(0, 0), box(4, 0)], float)
    det_boxes = np.array([box(4, 0), box(2.5, 0)], float)
    out = voc.match_detections(np.zeros(2, int), det_boxes, np.array([0.9, 0.8]),
                               np.zeros(2, int), gt_boxes, np.zeros(2, bool))
    assert out.tolist() == [1, 0]
    # with only the second detection, it takes Q (highest IoU), not P
    out = voc.match_detections(np.zeros(1, int), det_boxes[1:], np.array([0.8]),
                               np.zeros(2, int), gt_boxes, np.zeros(2, bool))
    assert out.tolist() == [1]


def test_iou_exactly_half_is_not_a_match():
    # [0,0,10,10] vs [0,0,10,20]: IoU 100/200 = 0.5, the devkit needs > 0.5
    out = voc.match_detections(np.zeros(1, int), np.array([box(0, 0)], float), np.array([1.0]),
                               np.zeros(1, int), np.array([box(0, 0, 10, 20)], float),
                               np.zeros(1, bool))
    assert out.tolist() == [0]


def test_11_point_uses_exact_recall_points():
    # 10 objects, three found first: recall reaches exactly 0.3 with precision 1, so r = 0,
    # .1, .2 and .3 all score 1: AP = 4 / 11 (a drifting 0.30000000000000004 would give 3 / 11)
    recall = np.array([0.1, 0.2, 0.3])
    precision = np.ones(3)
    assert voc.ap_11_point(recall, precision) == pytest.approx(4 / 11)
    # area: 0.3 * 1
    assert voc.ap_area(recall, precision) == pytest.approx(0.3)


def test_no_detections_gives_zero_and_curve_is_empty():
    r = evaluate_detections(dataset(), [], "voc07")
    assert r.mAP == 0.0 and r.per_class == {"cat": 0.0, "dog": 0.0, "bird": None}


def devkit_reference(gt, dets, num_classes, use_07):
    """The devkit's loop, straight from its description (slow, for comparison)."""
    aps = []
    for c in range(num_classes):
        objs = [g for g in gt if g[1] == c]
        npos = sum(1 for g in objs if not g[3])
        taken = set()
        cd = sorted([d for d in dets if d[1] == c], key=lambda d: -d[3])
        tp, fp = [], []
        for d in cd:
            cands = [(i, g) for i, g in enumerate(gt) if g[1] == c and g[0] == d[0]]
            ovmax, jmax = -np.inf, None
            for i, g in cands:
                o = voc.pairwise_iou_xywh(np.array([d[2]], float), np.array([g[2]], float))[0]
                if o > ovmax:
                    ovmax, jmax = o, i
            if ovmax > 0.5:
                if gt[jmax][3]:
                    continue
                if jmax in taken:
                    tp.append(0), fp.append(1)
                else:
                    taken.add(jmax)
                    tp.append(1), fp.append(0)
            else:
                tp.append(0), fp.append(1)
        if npos == 0:
            aps.append(None)
            continue
        tp, fp = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
        rec = tp / npos
        prec = tp / np.maximum(tp + fp, np.finfo(float).eps)
        aps.append(voc.ap_11_point(rec, prec) if use_07 else voc.ap_area(rec, prec))
    return aps


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_equals_devkit_loop(seed):
    rng = np.random.default_rng(seed)
    n_img, k = 6, 3
    gt = []
    for _ in range(25):
        xy = rng.uniform(0, 60, 2)
        gt.append((int(rng.integers(n_img)), int(rng.integers(k)),
                   [*xy, *rng.uniform(5, 30, 2)], bool(rng.random() < 0.15)))
    dets = []
    for _ in range(120):
        src = gt[int(rng.integers(len(gt)))]
        jitter = rng.normal(0, 3, 4)
        b = np.maximum(np.array(src[2]) + jitter, [0, 0, 1, 1]).tolist()
        cls = src[1] if rng.random() < 0.8 else int(rng.integers(k))
        img = src[0] if rng.random() < 0.9 else int(rng.integers(n_img))
        # coarse scores make ties common, which both sides must break by order
        dets.append((img, cls, b, float(np.round(rng.random(), 1))))
    for use_07 in (True, False):
        curves = voc.evaluate_voc(
            [g[0] for g in gt], [g[1] for g in gt], [g[2] for g in gt], [g[3] for g in gt],
            [d[0] for d in dets], [d[1] for d in dets], [d[2] for d in dets],
            [d[3] for d in dets], k, use_07_metric=use_07)
        expected = devkit_reference(gt, dets, k, use_07)
        assert [c.ap for c in curves] == pytest.approx(expected)
