"""Comparing proposal methods: recall and AR per source by hand, the JSON, files, plots."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_cli.data.annotations import annotations_from_dict
from frcnn_cli.errors import DataError
from frcnn_cli.evaluation.plots import plot_proposal_comparison
from frcnn_cli.proposals.files import save_proposals
from frcnn_cli.proposals.recall import (
    ProposalSource,
    compare_proposal_files,
    compare_proposals,
    counted_objects,
    read_proposal_source,
)

# Three images, five objects:
#   A: O1 [0,0,10,10], O2 [20,0,30,10];  B: O3 [0,0,20,20];  C: O4 = O5 = [40,40,50,50]
OBJECTS = [np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float),
           np.array([[0, 0, 20, 20]], float),
           np.array([[40, 40, 50, 50], [40, 40, 50, 50]], float)]
# S1, best first. A: O1 exactly (IoU 1), then 80 of O2's 100 px (0.8); B: 240 / 400 = 0.6 of
# O3; C: one box on both O4 and O5, which covers only one of them (one-to-one matching).
S1 = [np.array([[0, 0, 10, 10], [20, 0, 28, 10]], float),
      np.array([[0, 0, 20, 12]], float),
      np.array([[40, 40, 50, 50]], float)]
# S2, best first. A: [0,0,10,20] covers O1 at 100 / 200 = 0.5, then O2 exactly; B: a box on
# nothing, then O3 exactly; C: no proposal at all.
S2 = [np.array([[0, 0, 10, 20], [20, 0, 30, 10]], float),
      np.array([[50, 50, 60, 60], [0, 0, 20, 20]], float),
      np.zeros((0, 4))]


def test_recall_and_average_recall_by_hand():
    sources = [ProposalSource(S1, "s1.pt", "selective-search", 2.0),
               ProposalSource(S2, "s2.pt", "rpn", None)]
    d = compare_proposals(sources, OBJECTS, top_n=(1, 2), curve_top_n=()).to_dict()
    assert d["num_images"] == 3 and d["num_objects"] == 5
    s1, s2 = d["sources"]
    assert (s1["file"], s1["method"], s1["seconds_per_image"]) == ("s1.pt", "selective-search",
                                                                   2.0)
    assert s2["seconds_per_image"] is None
    # S1, top 1: coverages O1 1.0, O2 0, O3 0.6, O4 1.0, O5 0
    #   IoU 0.5: 3/5; IoU 0.7: 2/5; AR over the ten thresholds 0.5, 0.55, ..., 0.95:
    #   O1 and O4 count at all ten, O3 at 0.5, 0.55, 0.6 -> (10 + 3 + 10) / 50 = 0.46
    # S1, top 2: O2 now 0.8 (counts at 0.5 ... 0.8: seven thresholds)
    #   IoU 0.5: 4/5; IoU 0.7: 3/5; AR (10 + 7 + 3 + 10) / 50 = 0.6
    assert s1["recall"] == {"0.5": {"1": 0.6, "2": 0.8}, "0.7": {"1": 0.4, "2": 0.6}}
    assert s1["average_recall"] == pytest.approx({"1": 0.46, "2": 0.6})
    # S2, top 1: O1 0.5, everything else 0 -> 1/5, 0, AR 1/50
    # S2, top 2: O1 0.5, O2 1.0, O3 1.0 -> 3/5, 2/5, AR (1 + 10 + 10) / 50 = 0.42
    assert s2["recall"] == {"0.5": {"1": 0.2, "2": 0.6}, "0.7": {"1": 0.0, "2": 0.4}}
    assert s2["average_recall"] == pytest.approx({"1": 0.02, "2": 0.42})
    # proposals used per image: S1 (1, 1, 1) then (2, 1, 1); S2 (1, 1, 0) then (2, 2, 0)
    assert s1["proposals_per_image"] == pytest.approx({"1": 1.0, "2": 4 / 3})
    assert s2["proposals_per_image"] == pytest.approx({"1": 2 / 3, "2": 4 / 3})


def test_json_has_the_four_counts_and_two_ious():
    d = compare_proposals([ProposalSource(S1, "s1.pt", "selective-search", 2.0)],
                          OBJECTS).to_dict()
    (source,) = d["sources"]
    assert set(source) == {"file", "method", "seconds_per_image", "recall", "average_recall",
                           "proposals_per_image"}
    assert list(source["recall"]) == ["0.5", "0.7"]
    for table in (*source["recall"].values(), source["average_recall"]):
        assert list(table) == ["100", "300", "1000", "2000"]
    # every box of S1 is within the top 100: top 2's numbers
    assert source["recall"]["0.7"]["2000"] == 0.6
    assert source["average_recall"]["100"] == pytest.approx(0.6)
    json.dumps(d)  # plain numbers only


def _dataset(tmp_path):
    """The three images as a dataset, with a difficult and a crowd object that do not count."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in (7, 8, 9)]
    anns = []
    for image_id, boxes in zip((7, 8, 9), OBJECTS, strict=True):
        for b in boxes:
            anns.append({"image_id": image_id, "category_id": 1,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    anns.append({"image_id": 8, "category_id": 1, "bbox": [30, 30, 10, 10], "difficult": 1})
    anns.append({"image_id": 9, "category_id": 1, "bbox": [0, 30, 10, 10], "iscrowd": 1})
    return annotations_from_dict({"images": images, "annotations": anns,
                                  "categories": [{"id": 1, "name": "thing"}]}, root=tmp_path)


def _write(path, per_image, image_ids, meta, reverse=False):
    """A proposals file; with ``reverse`` each image's boxes are stored worst first, their
    scores saying the order."""
    props = {}
    for image_id, boxes in zip(image_ids, per_image, strict=True):
        scores = np.linspace(1, 0.5, len(boxes))
        if reverse:
            boxes, scores = boxes[::-1], scores[::-1]
        props[image_id] = (torch.tensor(boxes.copy(), dtype=torch.float32).reshape(-1, 4),
                           torch.tensor(scores.copy(), dtype=torch.float32))
    return save_proposals(props, [{"id": i, "file_name": f"{i}.jpg"} for i in image_ids], path,
                          meta)


def test_counted_objects_leaves_difficult_and_crowd_out(tmp_path):
    objects = counted_objects(_dataset(tmp_path))
    for got, want in zip(objects, OBJECTS, strict=True):
        np.testing.assert_array_equal(got, want)


def test_files_compared_in_dataset_order_best_first(tmp_path):
    ann = _dataset(tmp_path)
    ss = _write(tmp_path / "ss.pt", S1, [7, 8, 9],
                {"method": "selective-search", "mode": "fast", "seconds_per_image": 1.5},
                reverse=True)
    # an RPN file from before proposal files named their method, its images in another order
    rpn = _write(tmp_path / "rpn.pt", [S2[2], S2[0], S2[1]], [9, 7, 8],
                 {"checkpoint": "model.pt"})
    source = read_proposal_source(ss, ann)
    assert (source.method, source.seconds_per_image) == ("selective-search", 1.5)
    for got, want in zip(source.boxes, S1, strict=True):
        np.testing.assert_array_equal(got, want)
    d = compare_proposal_files([ss, rpn], ann, top_n=(1, 2)).to_dict()
    assert [s["method"] for s in d["sources"]] == ["selective-search", "rpn"]
    assert d["sources"][0]["file"] == str(ss) and d["num_objects"] == 5
    assert d["sources"][0]["average_recall"] == pytest.approx({"1": 0.46, "2": 0.6})
    assert d["sources"][1]["recall"]["0.5"] == {"1": 0.2, "2": 0.6}


def test_file_missing_an_image_is_a_data_error(tmp_path):
    path = _write(tmp_path / "part.pt", S1[:2], [7, 8], {"method": "selective-search"})
    with pytest.raises(DataError, match="no proposals for 1 image.*image id 9"):
        read_proposal_source(path, _dataset(tmp_path))


def test_plots_written(tmp_path):
    sources = [ProposalSource(S1, "s1.pt", "selective-search", 2.0),
               ProposalSource(S2, "s2.pt", "rpn", 0.01)]
    comparison = compare_proposals(sources, OBJECTS)
    paths = plot_proposal_comparison(comparison, tmp_path / "plots")
    assert [p.name for p in paths] == ["recall_vs_iou.png", "recall_vs_proposals.png"]
    for path in paths:
        pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
        assert len(pixels) > 100_000
        # one line per source, in matplotlib's first two colours (tab:blue, tab:orange)
        for colour in ([31, 119, 180], [255, 127, 14]):
            assert (np.abs(pixels.astype(int) - colour).sum(axis=1) < 10).sum() > 50
    with pytest.raises(ValueError, match="top 5"):
        plot_proposal_comparison(comparison, tmp_path / "plots", top_n=5)
