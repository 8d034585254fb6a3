"""The whole detector: calling convention, parameter groups, checkpoints, and an overfit."""

import pytest
import torch
from torchvision.ops import box_iou

import frcnn_cli
from frcnn_cli.checkpoint import checkpoint_meta, save_checkpoint
from frcnn_cli.config import load_recipe
from frcnn_cli.errors import CheckpointError, InputError

SMALL = ["input.min_size=128", "input.max_size=160", "model.head_dim=64"]


def _model(*overrides, classes=3):
    torch.manual_seed(0)
    return frcnn_cli.build_model(load_recipe("shapes", [*SMALL, *overrides]), classes)


def _targets():
    return [{"boxes": torch.tensor([[10.0, 20, 60, 70], [70, 30, 120, 100]]),
             "labels": torch.tensor([1, 3])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


def test_build_by_name_state_dict_layout_and_attributes():
    model = frcnn_cli.build_model("shapes", 3)
    keys = list(model.state_dict())
    assert keys and all(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in keys)
    assert model.classes == [{"id": 1, "name": "class1"}, {"id": 2, "name": "class2"},
                             {"id": 3, "name": "class3"}]
    assert model.recipe.name == "shapes" and model.num_classes == 3
    groups = model.parameter_groups()
    counted = sum(len(v) for v in groups.values())
    assert counted == len(list(model.parameters()))  # tiny: no always-frozen layers
    with pytest.raises(InputError):
        frcnn_cli.build_model("shapes", 2, classes=[{"id": 1, "name": "a"}])


def test_training_batch_of_two_sizes_one_without_objects(one_thread):
    model = _model().train()
    images = [torch.rand(3, 128, 160), torch.rand(3, 96, 128)]  # the second is upscaled
    losses = model(images, _targets())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_det_cls", "loss_det_box"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    # Only an image without objects: still finite losses.
    losses = model(images[1:], _targets()[1:])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_box"] == 0 and losses["loss_det_box"] == 0
    assert set(model(images, _targets(), rpn_only=True)) == {"loss_rpn_cls", "loss_rpn_box"}
    props = [torch.tensor([[0.0, 0, 50, 50], [5, 15, 65, 75]]), torch.tensor([[0.0, 0, 9, 9]])]
    assert set(model(images, _targets(), proposals=props)) == {"loss_det_cls", "loss_det_box"}
    with pytest.raises(InputError):
        model(images)


def test_eval_returns_boxes_in_input_pixels(one_thread):
    model = _model().eval()
    images = [torch.rand(3, 200, 300), torch.rand(3, 128, 128)]
    with torch.inference_mode():
        dets = model(images)
        props = model(images, rpn_only=True)
    assert len(dets) == 2 and len(props) == 2
    for image, d, p in zip(images, dets, props, strict=True):
        h, w = image.shape[-2:]
        assert set(d) == {"boxes", "scores", "labels"} and set(p) == {"boxes", "scores"}
        for boxes in (d["boxes"], p["boxes"]):
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all()
            assert (boxes[:, 3] <= h).all()
        assert ((d["labels"] >= 1) & (d["labels"] <= 3)).all()
        assert len(d["boxes"]) <= 100 and (d["scores"] >= 0.05).all()
        assert len(p["boxes"]) <= model.rpn.post_nms_top_n_test


def test_frozen_groups_receive_no_update(one_thread):
    model = _model()
    model.set_trainable(shared=False, rpn=True, detector=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1,
                                momentum=0.9, weight_decay=1e-3)
    model.train()
    assert not any(m.training for m in model.backbone.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))
    images = [torch.rand(3, 128, 160), torch.rand(3, 128, 160)]
    for _ in range(2):
        losses = model(images, _targets())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        same = torch.equal(value, after[key])
        if key.startswith("rpn.") and key.endswith("weight"):
            assert not same, key
        elif not key.startswith("rpn."):
            assert same, key  # incl. BatchNorm running statistics
    model.set_trainable()
    model.train()
    assert all(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_checkpoint_round_trip(tmp_path, one_thread):
    classes = [{"id": 7, "name": "circle"}, {"id": 9, "name": "square"}]
    model = frcnn_cli.build_model(load_recipe("shapes", SMALL), 2, classes=classes).eval()
    path = save_checkpoint({"model": model.state_dict(),
                            "meta": checkpoint_meta(model, iteration=12, stage="joint")},
                           tmp_path / "model.pt")
    loaded = frcnn_cli.load_model(path)
    assert loaded.classes == classes and not loaded.training
    assert loaded.recipe == model.recipe
    image = torch.rand(3, 128, 160)
    with torch.inference_mode():
        a, b = model([image])[0], loaded([image])[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    save_checkpoint({"model": model.state_dict(), "meta": {}}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="no recipe"):
        frcnn_cli.load_model(tmp_path / "bare.pt")


def test_overfit_one_image_detects_the_object(one_thread):
    """Train the tiny model on one image until it finds the object: right class, IoU > 0.7."""
    g = torch.Generator().manual_seed(0)
    image = 0.3 + 0.2 * torch.rand(3, 128, 160, generator=g)   # noisy background
    image[:, 40:100, 30:90] = torch.tensor([0.9, 0.8, 0.1])[:, None, None]
    target = [{"boxes": torch.tensor([[30.0, 40, 90, 100]]), "labels": torch.tensor([2])}]
    model = _model("model.head_dim=128")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                                momentum=0.9)
    model.train()
    first = None
    for _ in range(100):  # the box settles after about 80 iterations (IoU 0.63-0.88 before)
        losses = model([image], target)
        loss = sum(losses.values())
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 5
    model.eval()
    with torch.inference_mode():
        dets = model([image])[0]
    assert len(dets["boxes"]) >= 1
    assert dets["labels"][0] == 2 and dets["scores"][0] > 0.5
    assert box_iou(dets["boxes"][:1], target[0]["boxes"])[0, 0] > 0.7


def test_bf16_autocast_keeps_boxes_in_fp32(one_thread):
    model = _model().eval()
    image = torch.rand(3, 128, 160)
    with torch.inference_mode():
        full = model([image])[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model([image])[0]
    assert low["boxes"].dtype == torch.float32 and low["scores"].dtype == torch.float32
    assert len(low["boxes"]) > 0 and len(full["boxes"]) > 0


def test_one_detector_for_one_map_or_a_pyramid():
    """The paper's single map, its C4 and MobileNet splits and the feature pyramids are built
    from the same parts: one anchor generator, RPN, RoI pooler and RoI head class, the number
    of levels the only difference."""
    from frcnn_cli.model.anchors import AnchorGenerator
    from frcnn_cli.model.poolers import RoIPooler
    from frcnn_cli.model.roi_heads import RoIHeads
    from frcnn_cli.model.rpn import RegionProposalNetwork

    parts, levels = set(), {}
    for name in ("shapes", "shapes-fpn", "coco-r50-c4", "coco-r50-fpn", "voc07-mobilenet"):
        model = frcnn_cli.build_model(load_recipe(name, ["model.pretrained=false"]), 2,
                                      load_weights=False)
        parts.add((type(model.rpn), type(model.rpn.anchors), type(model.roi_heads),
                   type(model.roi_heads.box_roi_pool)))
        levels[name] = (len(model.rpn.anchors.strides), len(model.roi_heads.box_roi_pool.strides))
    assert parts == {(RegionProposalNetwork, AnchorGenerator, RoIHeads, RoIPooler)}
    assert levels == {"shapes": (1, 1), "shapes-fpn": (4, 3), "coco-r50-c4": (1, 1),
                      "coco-r50-fpn": (5, 4), "voc07-mobilenet": (1, 1)}
