"""Box coding, clipping, per-image NMS selection, and the IoU matcher / sampler."""

import math

import numpy as np
import torch

from frcnn_cli.boxes import clip_boxes
from frcnn_cli.model.box_coder import BoxCoder, nms_per_image
from frcnn_cli.model.matching import Matcher, sample_balanced


def test_encode_hand_worked_numbers():
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]])      # centre (5, 10), 10 x 20
    box = torch.tensor([[2.0, 4.0, 22.0, 24.0]])      # centre (12, 14), 20 x 20
    d = BoxCoder().encode(box, ref)
    assert torch.allclose(d, torch.tensor([[0.7, 0.2, math.log(2.0), 0.0]]))
    head = BoxCoder.from_stds([0.1, 0.1, 0.2, 0.2]).encode(box, ref)
    assert torch.allclose(head, d * torch.tensor([10.0, 10.0, 5.0, 5.0]))


def test_round_trip_with_weights():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(50, 2, generator=g) * 100
    ref = torch.cat([ref, ref + 5 + torch.rand(50, 2, generator=g) * 80], dim=1)
    box = torch.rand(50, 2, generator=g) * 100
    box = torch.cat([box, box + 1 + torch.rand(50, 2, generator=g) * 150], dim=1)
    for coder in (BoxCoder(), BoxCoder.from_stds([0.1, 0.1, 0.2, 0.2])):
        back = coder.decode(coder.encode(box, ref), ref)
        assert torch.allclose(back, box, atol=1e-3)


def test_decode_broadcasts_and_clamps():
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    deltas = torch.zeros(1, 3, 4)
    deltas[0, 1, 2:] = 100.0  # would overflow exp without the clamp
    out = BoxCoder().decode(deltas, ref[:, None])
    assert out.shape == (1, 3, 4)
    assert torch.equal(out[0, 0], ref[0])
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0, 1, 2] - out[0, 1, 0], torch.tensor(1000.0))  # 16 * 1000/16


def test_clip_boxes_per_image_tensors_and_arrays():
    boxes = torch.tensor([[[-5.0, -5.0, 50.0, 50.0]], [[-5.0, -5.0, 50.0, 50.0]]])
    sizes = torch.tensor([[20, 30], [40, 10]])  # (height, width)
    out = clip_boxes(boxes, sizes[:, :1], sizes[:, 1:])
    assert out.tolist() == [[[0, 0, 30, 20]], [[0, 0, 10, 40]]]
    assert clip_boxes(boxes[0], 20, 30).tolist() == [[0, 0, 30, 20]]
    array = np.array([[-5.0, 3, 50, 12], [4, -1, 8, 60]], dtype=np.float32)
    out = clip_boxes(array, 20, 30)  # the data loader's numpy boxes, the same rule
    assert out.dtype == np.float32 and out.tolist() == [[0, 3, 30, 12], [4, 0, 8, 20]]
    assert array[0, 0] == -5  # a new array


def test_nms_per_image_keeps_images_and_labels_apart():
    box = [0.0, 0.0, 10.0, 10.0]
    near = [1.0, 0.0, 11.0, 10.0]  # IoU 0.82 with box
    boxes = torch.tensor([box, near, box, near, [50.0, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    image = torch.tensor([0, 0, 1, 1, 1])
    labels = torch.tensor([1, 1, 1, 2, 1])
    keeps = nms_per_image(boxes, scores, image, 0.5, top_n=10, num_images=2, labels=labels,
                          num_labels=3)
    assert [k.tolist() for k in keeps] == [[0], [2, 3, 4]]
    keeps = nms_per_image(boxes, scores, image, 0.5, top_n=2, num_images=2, labels=labels,
                          num_labels=3)
    assert [k.tolist() for k in keeps] == [[0], [2, 3]]  # best first, at most top_n


def test_matcher_thresholds_ties_and_valid():
    iou = torch.tensor([[0.8, 0.5, 0.2, 0.5, 0.1],
                        [0.0, 0.0, 0.0, 0.0, 0.0]])
    labels, matched = Matcher(0.7, 0.3, 0.0)(iou)
    assert labels.tolist() == [1, -1, 0, -1, 0]
    # RPN rule: best anchor of each object (ties included) is positive; an object with no
    # overlap at all marks nothing.
    iou = torch.tensor([[0.2, 0.5, 0.5, 0.1]])
    labels, _ = Matcher(0.7, 0.3, 0.0, best_for_each_object=True)(iou)
    assert labels.tolist() == [0, 1, 1, 0]
    valid = torch.tensor([True, False, True, True])
    labels, _ = Matcher(0.7, 0.3, 0.0, best_for_each_object=True)(iou, valid)
    assert labels.tolist() == [0, -1, 1, 0]
    # Fast R-CNN rule: background only in [lo, hi).
    labels, matched = Matcher(0.5, 0.5, 0.1)(torch.tensor([[0.6, 0.3, 0.05], [0.2, 0.4, 0.0]]))
    assert labels.tolist() == [1, 0, -1] and matched.tolist() == [0, 1, 0]


def test_matcher_without_objects_is_all_background():
    labels, matched = Matcher(0.7, 0.3, 0.0, True)(torch.zeros(0, 6))
    assert labels.tolist() == [0] * 6 and matched.tolist() == [0] * 6


def test_sampler_counts():
    torch.manual_seed(0)
    labels = torch.tensor([1] * 200 + [0] * 1000 + [-1] * 50)
    pos, neg = sample_balanced(labels, 256, 0.5)
    assert (len(pos), len(neg)) == (128, 128)
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert len(set(pos.tolist())) == 128
    labels = torch.tensor([1] * 10 + [0] * 20)
    pos, neg = sample_balanced(labels, 256, 0.5)
    assert (len(pos), len(neg)) == (10, 20)  # fewer than asked: all of them
    labels = torch.tensor([1] * 10 + [0] * 500)
    pos, neg = sample_balanced(labels, 128, 0.25)
    assert (len(pos), len(neg)) == (10, 118)  # negatives fill the batch
