"""Proposal recall: greedy one-to-one coverage and recall at IoU thresholds, by hand."""

import numpy as np
import pytest

from frcnn_cli.proposals.recall import box_iou_xyxy, object_coverage, proposal_recall

O1, O2 = [0, 0, 10, 10], [20, 0, 30, 10]
P1 = [0, 0, 10, 10]    # O1: IoU 1
P2 = [0, 0, 10, 20]    # O1: 100 / 200 = 0.5, O2: 0
P3 = [20, 0, 28, 10]   # O2: 80 / 100 = 0.8


def test_iou_matrix():
    iou = box_iou_xyxy(np.array([P1, P2, P3], float), np.array([O1, O2], float))
    np.testing.assert_allclose(iou, [[1, 0], [0.5, 0], [0, 0.8]])


def test_one_proposal_covers_one_object():
    # two identical objects, one proposal on both: only one is covered
    cover = object_coverage(np.array([P1], float), np.array([O1, O1], float))
    assert sorted(cover.tolist()) == [0.0, 1.0]


def test_greedy_takes_best_covered_object_first():
    # P2 overlaps O1 (0.5) and P1 overlaps O1 (1.0): O1 takes P1, P2 covers nothing else
    cover = object_coverage(np.array([P2, P1], float), np.array([O1, O2], float))
    assert cover.tolist() == [1.0, 0.0]


def test_recall_by_top_n():
    proposals = [np.array([P1, P2, P3], float)]   # ranked by objectness
    objects = [np.array([O1, O2], float)]
    r = proposal_recall(proposals, objects, top_n=(1, 2, 3))
    # top 1 (P1): O1 covered at 1.0, O2 not -> 1/2 at every threshold
    assert r.recall_at(1, 0.5) == 0.5 and r.recall_at(1, 1.0) == 0.5
    # top 2 adds P2, which only overlaps O1 (already covered) -> still 1/2
    assert r.recall_at(2, 0.5) == 0.5
    # top 3 adds P3: O2 covered at 0.8 -> 1 up to IoU 0.8, then 1/2
    assert r.recall_at(3, 0.5) == 1.0 and r.recall_at(3, 0.7) == 1.0
    assert r.recall_at(3, 0.8) == 1.0 and r.recall_at(3, 0.85) == 0.5
    # AR over 0.5:0.95: seven thresholds at 1 (0.5 .. 0.8), three at 1/2 -> 8.5 / 10
    assert r.average_recall[3] == pytest.approx(0.85)
    assert r.mean_proposals == {1: 1.0, 2: 2.0, 3: 3.0}
    d = r.to_dict()
    assert d["recall@0.7"] == {"1": 0.5, "2": 0.5, "3": 1.0}
    assert d["iou_thresholds"][0] == 0.5 and d["iou_thresholds"][-1] == 1.0


def test_images_without_objects_or_proposals():
    proposals = [np.zeros((0, 4)), np.array([P1], float), np.array([P3], float)]
    objects = [np.array([O1], float), np.zeros((0, 4)), np.array([O2], float)]
    r = proposal_recall(proposals, objects, top_n=(300,))
    # image 0: O1 uncovered; image 2: O2 at 0.8 -> recall 1/2 at 0.5
    assert r.num_objects == 2 and r.recall_at(300, 0.5) == 0.5
    assert r.mean_proposals[300] == pytest.approx(2 / 3)
