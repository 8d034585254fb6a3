"""The detection head: proposal targets, RoI pooling, loss and postprocess."""

import torch
from torch import nn

from frcnn_cli.config import load_recipe
from frcnn_cli.model.poolers import RoIPooler
from frcnn_cli.model.roi_heads import RoIHeads


class _Flatten(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def _heads(*overrides, num_classes=2, channels=1, roi_size=2):
    recipe = load_recipe(None, list(overrides))
    return RoIHeads(RoIPooler(recipe.model.roi_op, roi_size, [16]), _Flatten(),
                    channels * roi_size * roi_size, num_classes, recipe.roi_heads)


def test_proposal_targets_sample_128_quarter_foreground_with_gt_added():
    torch.manual_seed(0)
    heads = _heads("roi_heads.bg_iou_thresh_lo=0.1")
    objects = torch.tensor([[100.0, 100, 200, 200], [300, 50, 380, 150]])
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(2000, 2, generator=g) * 400
    props = torch.cat([xy, xy + 20 + torch.rand(2000, 2, generator=g) * 150], dim=1)
    # 60 near-copies of the objects: foreground candidates.
    near = objects.repeat(30, 1) + torch.randn(60, 4, generator=g)
    target = {"boxes": objects, "labels": torch.tensor([1, 2])}
    rois, labels, box_targets = heads.proposal_targets([torch.cat([props, near])], [target])
    from torchvision.ops import box_iou

    iou = box_iou(rois[0], objects).max(dim=1).values
    fg = labels > 0
    assert len(labels) == 128 and int(fg.sum()) == 32   # 25 % of 128
    assert fg[:32].all() and not fg[32:].any()          # positives first
    assert (iou[fg] >= 0.5).all()
    assert ((iou[~fg] >= 0.1) & (iou[~fg] < 0.5)).all()  # background in [lo, 0.5)
    assert box_targets.shape == (32, 4)
    # Ground truth joins the proposals: with no proposal at all, the objects are the fg.
    rois, labels, _ = heads.proposal_targets([torch.zeros(0, 4)], [target])
    assert sorted(labels.tolist()) == [1, 2]


def test_proposal_targets_image_without_objects():
    heads = _heads()  # bg_lo 0: everything is background
    props = torch.tensor([[0.0, 0, 10, 10], [5, 5, 30, 30]])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    rois, labels, box_targets = heads.proposal_targets([props], [empty])
    assert labels.tolist() == [0, 0] and box_targets.shape == (0, 4)
    feats = torch.randn(1, 1, 4, 4)
    heads.train()
    _, losses = heads(feats, [props], torch.tensor([[64, 64]]), [empty])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_det_box"] == 0


def test_proposals_mostly_inside_an_ignore_region_are_not_sampled():
    heads = _heads()  # bg_lo 0: every proposal off the objects is background
    # region x 100..200: the first proposal lies wholly inside, the second 50 % inside (not
    # more than half: background), the third 60 % inside (ignored)
    props = torch.tensor([[120.0, 0, 180, 40], [150, 0, 250, 40], [140, 0, 240, 40]])
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "ignore": torch.tensor([[100.0, 0, 200, 50]])}
    rois, labels, _ = heads.proposal_targets([props], [target])
    assert rois[0].tolist() == [[150, 0, 250, 40]] and labels.tolist() == [0]
    del target["ignore"]  # without it, all three are background
    rois, labels, _ = heads.proposal_targets([props], [target])
    assert labels.tolist() == [0, 0, 0]


def test_roi_pool_reads_the_cells_a_box_covers():
    heads = _heads(roi_size=1)
    feats = torch.arange(16.0).reshape(1, 1, 4, 4)
    # The original rounds inclusive pixel boxes to cells: pixels 16..23 x 0..7 (continuous
    # [16, 0, 24, 8]) -> cells round(16/16) .. round(23/16) = column 1, row 0 only. Taking
    # x2 = 24 as the last pixel would round 1.5 up and read column 2 too.
    pooled = heads.box_roi_pool(feats, [torch.tensor([[16.0, 0.0, 24.0, 8.0]])])
    assert pooled.flatten().tolist() == [1.0]
    pooled = heads.box_roi_pool(feats, [torch.tensor([[0.0, 0.0, 64.0, 64.0]])])
    assert pooled.flatten().tolist() == [15.0]  # max over the whole map


def test_postprocess_threshold_class_nms_and_limit():
    heads = _heads("roi_heads.detections_per_img=3", num_classes=2)
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 70, 70],
                          [80, 80, 90, 90]])
    # Scores (softmax over background, class 1, class 2).
    probs = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.3, 0.0, 0.7], [0.4, 0.6, 0.0],
                          [0.97, 0.03, 0.0]])
    logits = probs.clamp(min=1e-6).log()
    deltas = torch.zeros(5, 3, 4)
    dets = heads.postprocess(logits, deltas, [boxes], torch.tensor([[100, 100]]))[0]
    # Box 1 is suppressed by box 0 (same class, IoU 0.82 > 0.3); box 2 survives as class 2;
    # box 4 is under the 0.05 threshold; at most 3 kept, best first.
    assert dets["labels"].tolist() == [1, 2, 1]
    assert torch.allclose(dets["scores"], torch.tensor([0.9, 0.7, 0.6]), atol=1e-4)
    assert dets["boxes"].tolist() == [[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 70, 70]]


def test_postprocess_clips_to_each_image():
    heads = _heads(num_classes=1)
    props = [torch.tensor([[0.0, 0, 40, 40]]), torch.tensor([[0.0, 0, 40, 40]])]
    logits = torch.tensor([[0.0, 5.0], [0.0, 5.0]])
    deltas = torch.zeros(2, 2, 4)
    deltas[:, 1, 2:] = 5.0  # grow the boxes well past the image (x5 of log-scale dw, dh)
    dets = heads.postprocess(logits, deltas, props, torch.tensor([[30, 50], [64, 20]]))
    assert dets[0]["boxes"][0, 2:].tolist() == [50, 30]
    assert dets[1]["boxes"][0, 2:].tolist() == [20, 64]


def test_postprocess_min_size_drops_empty_boxes():
    props = [torch.tensor([[10.0, 10, 40, 40], [60.0, 10, 60.005, 40]])]  # the second: 0.005 wide
    logits = torch.tensor([[0.0, 5.0], [0.0, 5.0]])
    for min_size, kept in ((0.0, 2), (0.01, 1)):  # torchvision: 0.01
        heads = _heads(f"roi_heads.min_size={min_size}", num_classes=1)
        dets = heads.postprocess(logits, torch.zeros(2, 2, 4), props, torch.tensor([[64, 64]]))
        assert len(dets[0]["boxes"]) == kept
