"""The RPN: anchor targets on a hand-worked case, the loss, and the proposal layer."""

import torch

from frcnn_cli.config import load_recipe
from frcnn_cli.model.anchors import AnchorGenerator
from frcnn_cli.model.rpn import RegionProposalNetwork, objectness_score


def _rpn(*overrides, channels=8):
    recipe = load_recipe(None, ["anchors.scales=[2]", "anchors.ratios=[1]",
                                f"rpn.channels={channels}", *overrides])
    return RegionProposalNetwork(channels, AnchorGenerator.from_recipe(recipe), recipe.rpn,
                                 recipe.input.size_divisible)


def test_anchor_targets_hand_worked():
    # 64 x 64 image, stride 16, one 32 x 32 anchor per place: a 4 x 4 grid of anchors
    # centred at 8, 24, 40, 56. Only the 4 centred at 24/40 lie inside the image.
    rpn = _rpn()
    anchors = rpn.anchors.grid([(4, 4)])
    size = torch.tensor([64, 64])
    inside = [5, 6, 9, 10]  # [8,8,40,40], [24,8,56,40], [8,24,40,56], [24,24,56,56]
    assert anchors[5].tolist() == [8, 8, 40, 40]

    # One object equal to anchor 5: IoU 1 -> positive; anchors 6 and 9 IoU 1/3 -> ignored;
    # anchor 10 IoU 256/1792 = 0.14 -> negative; the 12 border anchors -> ignored.
    pos, neg, targets = rpn.anchor_targets(anchors, size, torch.tensor([[8.0, 8, 40, 40]]))
    assert pos.tolist() == [5] and neg.tolist() == [10]
    assert torch.allclose(targets, torch.zeros(1, 4), atol=1e-6)

    # An object between the four: IoU 576 / 1472 = 0.39 with each. None reaches 0.7, so its
    # best anchors, all four tied, become positive (the original's rule).
    pos, neg, targets = rpn.anchor_targets(anchors, size, torch.tensor([[16.0, 16, 48, 48]]))
    assert sorted(pos.tolist()) == inside and neg.tolist() == []
    assert torch.allclose(targets.abs()[:, :2], torch.full((4, 2), 0.25))  # 8 px of 32

    # No object: every inside anchor is negative, the border ones still ignored.
    pos, neg, _ = rpn.anchor_targets(anchors, size, torch.zeros(0, 4))
    assert pos.tolist() == [] and sorted(neg.tolist()) == inside

    # The border rule off: all 16 anchors take part.
    rpn = _rpn("rpn.allowed_border=-1")
    pos, neg, _ = rpn.anchor_targets(anchors, size, torch.zeros(0, 4))
    assert len(neg) == 16


def test_anchors_mostly_inside_an_ignore_region_are_neither_positive_nor_negative():
    # The 64 x 64 image of the case above; its 4 inside anchors are 32 x 32 (area 1024).
    rpn = _rpn()
    anchors = rpn.anchors.grid([(4, 4)])
    size = torch.tensor([64, 64])
    none = torch.zeros(0, 4)
    # Ignore region x, y 0..40: anchor 5 [8,8,40,40] lies wholly inside (1024 / 1024) ->
    # ignored; anchors 6 and 9 have 16 x 32 = 512 / 1024 = 0.5 inside, not more than half ->
    # still negative; anchor 10 has 16 x 16 = 256 / 1024 inside -> negative.
    region = torch.tensor([[0.0, 0, 40, 40]])
    pos, neg, _ = rpn.anchor_targets(anchors, size, none, region)
    assert pos.tolist() == [] and sorted(neg.tolist()) == [6, 9, 10]
    # 1 px more (x, y 0..41): 17 x 32 = 544 / 1024 > 0.5 inside anchors 6 and 9 -> ignored.
    pos, neg, _ = rpn.anchor_targets(anchors, size, none, torch.tensor([[0.0, 0, 41, 41]]))
    assert neg.tolist() == [10]
    # An object on anchor 5 inside the region: anchor 5 is no positive either (mmdetection's
    # rule), and the object's best anchors among the rest, 6 and 9 (IoU 1/3), become its
    # positives.
    pos, neg, _ = rpn.anchor_targets(anchors, size, torch.tensor([[8.0, 8, 40, 40]]), region)
    assert sorted(pos.tolist()) == [6, 9] and neg.tolist() == [10]


def test_sample_counts_256_up_to_half_positive():
    torch.manual_seed(0)
    rpn = _rpn("rpn.allowed_border=-1")
    anchors = rpn.anchors.grid([(40, 40)])  # 1600 anchors of 32 px
    objects = anchors[::8] + 0.5       # 200 objects, each nearly on an anchor (IoU > 0.9)
    pos, neg, targets = rpn.anchor_targets(anchors, torch.tensor([640, 640]), objects)
    assert (len(pos), len(neg)) == (128, 128)
    assert targets.shape == (128, 4)
    rpn = _rpn("rpn.allowed_border=-1", "rpn.batch_size_per_image=64",
               "rpn.positive_fraction=0.25")
    pos, neg, _ = rpn.anchor_targets(anchors, torch.tensor([640, 640]), objects[:5])
    assert (len(pos), len(neg)) == (5, 59)


def test_loss_normalisation_paper_and_modern():
    torch.manual_seed(0)
    feats = torch.randn(2, 8, 4, 4)
    targets = [torch.tensor([[8.0, 8, 40, 40]]), torch.zeros(0, 4)]
    sizes, scales = torch.tensor([[64, 64], [64, 64]]), torch.ones(2)
    rpn = _rpn()
    _, _, paper = rpn(feats, sizes, scales, targets, propose=False)
    rpn.loss_norm = "modern"
    _, _, modern = rpn(feats, sizes, scales, targets, propose=False)
    # Sampled: image 0 -> 1 positive + 1 negative, image 1 -> 4 negatives: N_cls = 6.
    # paper: lambda * L_reg / N_reg with N_reg = 2 images x 16 places; modern: L_reg / 6.
    assert torch.allclose(paper["loss_rpn_cls"], modern["loss_rpn_cls"])
    assert torch.allclose(paper["loss_rpn_box"] * 32 / 10, modern["loss_rpn_box"] * 6)
    for loss in paper.values():
        assert torch.isfinite(loss)


def test_softmax_and_sigmoid_heads():
    feats = torch.randn(1, 8, 3, 5)
    for kind, scores in (("softmax", 2), ("sigmoid", 1)):
        rpn = _rpn(f"rpn.objectness={kind}")
        logits, deltas = rpn.head(feats)
        assert logits.shape == (1, 15, scores) and deltas.shape == (1, 15, 4)
    two = torch.tensor([[0.5, 2.0]])
    assert torch.allclose(torch.sigmoid(objectness_score(two)), torch.softmax(two, -1)[:, 1])


def test_proposals_count_bounds_and_min_size():
    torch.manual_seed(0)
    rpn = _rpn("rpn.pre_nms_top_n_test=50", "rpn.post_nms_top_n_test=20", "rpn.min_size=16",
               "anchors.scales=[1,2,4]", "anchors.ratios=[0.5,1,2]")
    rpn.eval()
    feats = torch.randn(2, 8, 8, 10)
    for p in rpn.head.parameters():  # spread the predictions
        torch.nn.init.normal_(p, std=0.5)
    sizes = torch.tensor([[128, 160], [100, 120]])
    scales = torch.tensor([1.0, 1.5])  # image 1 was upscaled: min size 24 px there
    boxes, scores, losses = rpn(feats, sizes, scales)
    assert losses == {}
    for i, (b, s) in enumerate(zip(boxes, scores, strict=True)):
        assert 0 < len(b) <= 20 and len(s) == len(b)
        h, w = sizes[i].tolist()
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        min_side = 16 * scales[i]
        assert ((b[:, 2] - b[:, 0]) >= min_side).all() and ((b[:, 3] - b[:, 1]) >= min_side).all()
        assert (s[:-1] >= s[1:]).all() and ((s >= 0) & (s <= 1)).all()
    # Training uses the training counts.
    rpn.train()
    rpn.pre_nms_top_n_train, rpn.post_nms_top_n_train = 30, 5
    boxes, _, _ = rpn(feats, sizes, scales)
    assert all(len(b) <= 5 for b in boxes)


def test_nms_on_a_prefix_gives_the_full_result():
    # The proposal layer first runs NMS on the best 4 x post_n candidates; its survivors must
    # be exactly the full NMS's first post_n.
    rpn = _rpn()
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 600, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 10 + torch.rand(2, 600, 2, generator=g) * 60], dim=2)
    scores = torch.sort(torch.randn(2, 600, generator=g), dim=1, descending=True).values
    full_boxes, full_scores = rpn._nms(boxes, scores, 25)
    head_boxes, head_scores = rpn._nms(boxes[:, :100], scores[:, :100], 25)
    assert [len(b) for b in head_boxes] == [25, 25]
    for a, b in zip(full_boxes, head_boxes, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(full_scores, head_scores, strict=True):
        assert torch.equal(a, b)


def test_score_threshold_and_extra_convs():
    torch.manual_seed(0)
    rpn = _rpn("rpn.score_thresh=0.6", "rpn.min_size=0", "rpn.convs=2").eval()
    assert len(rpn.head.extra_convs) == 1  # torchvision's v2: two 3x3 convs
    for p in rpn.head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    _, scores, _ = rpn(torch.randn(1, 8, 6, 6), torch.tensor([[96, 96]]), torch.ones(1))
    assert len(scores[0]) > 0 and (scores[0] >= 0.6).all()
    rpn.score_thresh = 0.0
    _, scores, _ = rpn(torch.randn(1, 8, 6, 6), torch.tensor([[96, 96]]), torch.ones(1))
    assert (scores[0] < 0.6).any()
