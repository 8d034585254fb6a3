"""Backbones: shapes and strides, frozen early layers, ImageNet weights from a local file."""

import urllib.error

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from frcnn_cli.config import load_recipe
from frcnn_cli.errors import CheckpointError, FrcnnError
from frcnn_cli.model import backbones
from frcnn_cli.model.backbones import build_backbone


def _cfg(*overrides):
    return load_recipe(None, list(overrides)).model


def test_tiny_is_small_fast_and_stride_16():
    parts = build_backbone(_cfg("model.backbone=tiny", "model.head_dim=64"), roi_size=7)
    x = torch.rand(2, 3, 256, 192)
    assert parts.backbone(x).shape == (2, 128, 16, 12)
    with FlopCounterMode(display=False) as flops:
        parts.backbone(torch.rand(1, 3, 256, 256))
    assert 0.1e9 < flops.get_total_flops() < 0.4e9  # FLOPs per 256 px image
    assert parts.box_head(torch.rand(5, 128, 7, 7)).shape == (5, 64)
    assert parts.backbone.num_frozen == 0


def test_resnet50_c4_from_scratch_uses_batchnorm():
    parts = build_backbone(_cfg("model.backbone=resnet50", "model.pretrained=false"),
                           roi_size=14)
    assert parts.backbone(torch.rand(1, 3, 64, 64)).shape == (1, 1024, 4, 4)
    assert parts.box_head(torch.rand(3, 1024, 14, 14)).shape == (3, 2048)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in parts.backbone.modules())


def test_imagenet_weights_from_a_local_file(tmp_path):
    reference = torchvision.models.mobilenet_v3_large()
    path = tmp_path / "mobilenet.pth"
    torch.save(reference.state_dict(), path)
    cfg = _cfg("model.backbone=mobilenet_v3_large", f"model.backbone_weights={path}")
    parts = build_backbone(cfg, roi_size=7)
    body = parts.backbone.body
    assert torch.equal(body[0][0].weight, reference.features[0][0].weight)
    bn = body[5].block[0][1]
    assert torch.equal(bn.running_var, reference.features[5].block[0][1].running_var)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())  # frozen BN
    assert parts.backbone(torch.rand(1, 3, 64, 64)).shape == (1, 112, 4, 4)
    assert not any(p.requires_grad for p in parts.backbone.frozen_layers().parameters())


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, path)
    cfg = _cfg("model.backbone=mobilenet_v3_large", f"model.backbone_weights={path}")
    with pytest.raises(CheckpointError, match="does not hold mobilenet_v3_large"):
        build_backbone(cfg, roi_size=7)
    with pytest.raises(CheckpointError, match="not found"):
        build_backbone(_cfg(f"model.backbone_weights={tmp_path / 'missing.pth'}"), 7)


def test_offline_download_names_backbone_weights_option(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(FrcnnError, match="--backbone-weights FILE") as err:
        backbones.imagenet_state_dict(_cfg("model.backbone=vgg16"))
    assert "vgg16-397923af.pth" in str(err.value)


def test_vgg16_conv5_3_conv1_conv2_frozen_fc6_fc7_from_the_classifier(monkeypatch):
    # Distinct cheap values for every ImageNet tensor (shapes from a meta-device VGG16).
    with torch.device("meta"):
        shapes = torchvision.models.vgg16(weights=None).state_dict()
    imagenet = {k: torch.full(v.shape, float(i)) for i, (k, v) in enumerate(shapes.items())}
    monkeypatch.setattr(backbones, "imagenet_state_dict", lambda cfg: imagenet)
    parts = build_backbone(_cfg("model.backbone=vgg16"), roi_size=7)
    bb = parts.backbone
    assert bb(torch.rand(1, 3, 64, 96)).shape == (1, 512, 4, 6)  # conv5_3, stride 16
    assert torch.equal(bb.body[28].weight, imagenet["features.28.weight"])
    frozen = list(bb.frozen_layers().parameters())
    assert len(frozen) == 8 and not any(p.requires_grad for p in frozen)  # conv1_1..conv2_2
    assert {id(p) for p in bb.trainable_parameters()}.isdisjoint(id(p) for p in frozen)
    assert parts.box_head.fc6.in_features == 512 * 7 * 7 and parts.head_channels == 4096
    assert torch.equal(parts.box_head.fc6.weight, imagenet["classifier.0.weight"])
    assert torch.equal(parts.box_head.fc7.bias, imagenet["classifier.3.bias"])
