"""Merging tiles' detections into one image's: hand-worked seams, overlaps and small images."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from frcnn_cli.data.tiling import Window
from frcnn_cli.inference.tiled import at_seam, cover, merge_tiles, tile_windows, to_image_pixels

NMS = 0.3  # the paper's test NMS


def _dets(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def _rows(out):
    return [(b, round(s, 4), lab) for b, s, lab in zip(out["boxes"].tolist(),
                                                       out["scores"].tolist(),
                                                       out["labels"].tolist(), strict=True)]


def test_shift_and_seam_flags_hand_worked():
    # a 224 x 128 image in 128 px tiles at overlap 0.25: A = x 0..128, B = x 96..224
    a, b = tile_windows(224, 128, 128, 0.25)
    assert (a, b) == (Window(0, 0, 128, 128), Window(96, 0, 128, 128))
    boxes = to_image_pixels(torch.tensor([[1.0, 40, 31, 70], [100, 0, 128, 10]]), b)
    assert boxes.tolist() == [[97, 40, 127, 70], [196, 0, 224, 10]]
    # B's left edge (96) is inner, its right edge (224) and top and bottom are the border
    assert at_seam(boxes, b, 224, 128).tolist() == [True, False]
    assert at_seam(torch.tensor([[110.0, 40, 128, 70], [110, 40, 123, 70], [110, 40, 124, 70]]),
                   a, 224, 128).tolist() == [True, False, True]  # within 4 px of x = 128
    assert cover(torch.tensor([[110.0, 40, 128, 70], [0, 0, 0, 5]]),
                 torch.tensor([[110.0, 40, 140, 70], [119, 40, 200, 70]])).tolist() == \
        [[1.0, 0.5], [0.0, 0.0]]


def test_a_box_on_a_seam_loses_to_the_whole_view_of_the_neighbour():
    """Object X (x 110..140) is cut by A's right edge at 128: A sees x 110..128, score 0.9;
    B sees it whole, score 0.8. Plain NMS keeps A's truncated box (IoU 18/30 = 0.6 > 0.3,
    higher score); the merge keeps B's whole one. Object Y, well inside A, is untouched."""
    a, b = tile_windows(224, 128, 128, 0.25)
    tiles = [(a, _dets([[110, 40, 128, 70], [10, 10, 40, 40]], [0.9, 0.7], [1, 1])),
             (b, _dets([[14, 40, 44, 70]], [0.8], [1]))]  # tile pixels: 96 + 14 = 110
    out = merge_tiles(tiles, 224, 128, NMS, 100)
    assert _rows(out) == [([110, 40, 140, 70], 0.8, 1), ([10, 10, 40, 40], 0.7, 1)]

    everything = torch.tensor([[110.0, 40, 128, 70], [10, 10, 40, 40], [110, 40, 140, 70]])
    plain = batched_nms(everything, torch.tensor([0.9, 0.7, 0.8]), torch.tensor([1, 1, 1]), NMS)
    assert everything[plain].tolist()[0] == [110, 40, 128, 70]  # what the seam rule prevents

    # another class covering the truncated box does not replace it
    tiles[1] = (b, _dets([[14, 40, 44, 70]], [0.8], [2]))
    assert _rows(merge_tiles(tiles, 224, 128, NMS, 100)) == [
        ([110, 40, 128, 70], 0.9, 1), ([110, 40, 140, 70], 0.8, 2), ([10, 10, 40, 40], 0.7, 1)]


def test_a_truncated_box_stays_when_no_tile_sees_the_object_whole():
    """An object wider than the overlap (x 60..150): both views touch a seam; none is dropped
    for the other, and NMS keeps the better one (IoU 32/90 = 0.36 > 0.3)."""
    a, b = tile_windows(224, 128, 128, 0.25)
    tiles = [(a, _dets([[60, 0, 128, 30]], [0.6], [1])),
             (b, _dets([[0, 0, 54, 30]], [0.7], [1]))]  # x 96..150
    assert _rows(merge_tiles(tiles, 224, 128, NMS, 100)) == [([96, 0, 150, 30], 0.7, 1)]
    # a whole box in the same tile does not count as the neighbour's view
    tiles = [(a, _dets([[100, 0, 128, 30], [90, 0, 123, 30]], [0.9, 0.5], [1, 1])), (b, _dets(
        [], [], []))]
    assert len(merge_tiles(tiles, 224, 128, 0.9, 100)["boxes"]) == 2


def test_one_object_seen_whole_by_four_tiles_is_kept_once_with_its_best_score():
    """A 224 x 224 image: four tiles meet in x, y 96..128; the object at 100..124 lies whole
    in all four, each reporting it a little differently. A box of another class at the same
    place is another detection."""
    windows = tile_windows(224, 224, 128, 0.25)
    assert [(w.x, w.y) for w in windows] == [(0, 0), (96, 0), (0, 96), (96, 96)]
    seen = {(0, 0): ([100, 100, 124, 124], 0.6), (96, 0): ([101, 100, 124, 125], 0.9),
            (0, 96): ([100, 99, 123, 124], 0.7), (96, 96): ([100, 101, 125, 124], 0.8)}
    tiles = []
    for w in windows:
        box, score = seen[(w.x, w.y)]
        local = [box[0] - w.x, box[1] - w.y, box[2] - w.x, box[3] - w.y]
        boxes, scores, labels = [local], [score], [3]
        if (w.x, w.y) == (0, 0):
            boxes, scores, labels = [local, local], [score, 0.5], [3, 4]
        tiles.append((w, _dets(boxes, scores, labels)))
    out = merge_tiles(tiles, 224, 224, NMS, 100)
    assert _rows(out) == [([101, 100, 124, 125], 0.9, 3), ([100, 100, 124, 124], 0.5, 4)]


def test_an_image_smaller_than_a_tile_keeps_the_models_detections():
    """One window, the whole image: no inner edge, so the result is the model's output
    (already NMS'd at the same IoU) best first, capped at max_detections."""
    windows = tile_windows(100, 80, 128, 0.2)
    assert windows == [Window(0, 0, 100, 80)]
    dets = _dets([[0, 0, 50, 40], [60, 0, 100, 80], [0, 0, 48, 40], [5, 50, 30, 75]],
                 [0.5, 0.9, 0.3, 0.4], [1, 1, 2, 1])
    out = merge_tiles([(windows[0], dets)], 100, 80, NMS, 100)
    assert _rows(out) == [([60, 0, 100, 80], 0.9, 1), ([0, 0, 50, 40], 0.5, 1),
                          ([5, 50, 30, 75], 0.4, 1), ([0, 0, 48, 40], 0.3, 2)]
    assert len(merge_tiles([(windows[0], dets)], 100, 80, NMS, 2)["boxes"]) == 2
    # boxes at the image border are not at a seam
    border = _dets([[0, 0, 100, 80]], [0.9], [1])
    assert at_seam(border["boxes"], windows[0], 100, 80).tolist() == [False]
    empty = merge_tiles([(windows[0], _dets([], [], []))], 100, 80, NMS, 100)
    assert empty["boxes"].shape == (0, 4) and merge_tiles([], 100, 80, NMS, 100)["boxes"].shape \
        == (0, 4)
