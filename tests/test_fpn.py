"""FPN models: levels and their RoI mapping, the 4-step schedule's parameter groups (the shared
part is the backbone with its pyramid), and checkpoints."""

import pytest
import torch
from torchvision.ops.poolers import LevelMapper

import frcnn_cli
from frcnn_cli.checkpoint import checkpoint_meta, save_checkpoint
from frcnn_cli.config import load_recipe
from frcnn_cli.errors import RecipeError

# mobilenet_v3_large-fpn from scratch (ordinary BatchNorm) at 128 px: the cheapest pyramid
SMALL = ["model.backbone=mobilenet_v3_large-fpn", "anchors.level_sizes=all",
         "model.pretrained=false", "model.head_dim=64", "input.min_size=128",
         "input.max_size=160", "rpn.post_nms_top_n_train=64", "roi_heads.batch_size_per_image=32"]


def _model(*overrides):
    torch.manual_seed(0)
    return frcnn_cli.build_model(load_recipe("coco-r50-fpn", [*SMALL, *overrides]), 2)


def _targets():
    return [{"boxes": torch.tensor([[10.0, 20, 60, 70], [70, 30, 120, 100]]),
             "labels": torch.tensor([1, 2])},
            {"boxes": torch.tensor([[5.0, 5, 100, 90]]), "labels": torch.tensor([2])}]


def test_rois_map_to_levels_as_fpn_eq1_and_torchvision():
    model = frcnn_cli.build_model(load_recipe("coco-r50-fpn", ["model.pretrained=false"]), 2)
    heads = model.roi_heads
    assert heads.box_roi_pool.strides == (4, 8, 16, 32)  # P6 proposes but pools nothing
    sides = torch.tensor([8.0, 111.9, 112.0, 224.0, 447.9, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], 1)
    levels = heads.map_levels(boxes)
    assert levels.tolist() == [0, 0, 1, 2, 2, 3, 3]  # 224 px -> P4, as FPN Eq. 1
    assert torch.equal(levels, LevelMapper(2, 5)([boxes]))


def test_shared_group_is_backbone_and_pyramid_and_frozen_groups_do_not_change(one_thread):
    model = _model()
    groups = model.parameter_groups()
    shared = {id(p) for p in groups["shared"]}
    assert all(id(p) in shared for p in model.backbone.fpn.parameters())
    early = list(model.backbone.frozen_layers().parameters())
    assert early and not any(p.requires_grad or id(p) in shared for p in early)
    assert sum(len(g) for g in groups.values()) + len(early) == len(list(model.parameters()))

    # step 3: only the RPN's own layers train; BatchNorm statistics stay too
    model.set_trainable(shared=False, rpn=True, detector=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    images = [torch.rand(3, 128, 160), torch.rand(3, 120, 150)]
    for _ in range(2):
        losses = model(images, _targets())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("rpn.") for k in changed), sorted(changed)[:3]
    assert "rpn.head.conv.weight" in changed


def test_checkpoint_round_trip_and_proposals_in_input_pixels(tmp_path, one_thread):
    model = _model().eval()
    path = tmp_path / "model.pt"
    save_checkpoint({"model": model.state_dict(), "meta": checkpoint_meta(model, 1)}, path)
    loaded = frcnn_cli.load_model(path)
    image = torch.rand(3, 200, 240, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        a = model.detect([image], score_thresh=0.0)[0]
        b = loaded.detect([image], score_thresh=0.0)[0]
        proposals = loaded.detect([image], rpn_only=True)[0]
    assert len(a["boxes"]) > 0 and torch.equal(a["boxes"], b["boxes"])
    assert torch.equal(a["scores"], b["scores"])
    assert proposals["boxes"][:, 2].max() <= 240 and proposals["boxes"][:, 3].max() <= 200
    assert proposals["boxes"][:, 2].max() > 160  # input pixels, not the 128 px network's


def test_anchor_sizes_must_fit_the_levels():
    with pytest.raises(RecipeError, match="anchors.sizes has 5 sizes for the 3 levels"):
        _model("anchors.level_sizes=one")


def test_reference_runs_torchvisions_machinery_on_the_same_pyramid(one_thread):
    """``benchmark --compare torchvision`` times torchvision's FasterRCNN built to the FPN
    recipe: given the same weights, it detects what frcnn does."""
    from frcnn_cli.model.reference import build_reference
    from frcnn_cli.model.torchvision_weights import map_state_dict

    model = _model("model.channels_last=false", "roi_heads.score_thresh=0.0").eval()
    reference = build_reference(model.recipe, model.num_classes).eval()
    assert reference.rpn.anchor_generator.sizes == ((32, 64, 128, 256, 512),) * 3
    assert reference.roi_heads.box_roi_pool.featmap_names == ["0", "1"]
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0, generator=g)
        reference.rpn.head.cls_logits.weight.normal_(0, 0.2, generator=g)
        reference.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.3, generator=g)
    state = {k.replace("backbone.backbone.", "backbone.", 1): v
             for k, v in reference.state_dict().items()}
    model.load_state_dict(map_state_dict(state, model))
    image = torch.rand(3, 150, 200, generator=g)
    with torch.inference_mode():
        ours, theirs = model([image])[0], reference([image])[0]
    assert len(ours["boxes"]) > 10 and torch.equal(ours["labels"], theirs["labels"])
    assert torch.allclose(ours["boxes"], theirs["boxes"], atol=1e-3)
    assert torch.allclose(ours["scores"], theirs["scores"], atol=1e-5)
