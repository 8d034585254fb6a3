"""Feature Pyramid Network backbones (Lin et al. 2017), in torchvision's layouts.

The paper's detector reads one stride-16 map. A feature pyramid adds to a ResNet's (or
MobileNet's) stages a top-down path: a 1x1 lateral conv on each stage, the coarser merged map
upsampled (nearest) and added, a 3x3 conv on each sum, and one more level max-pooled from the
coarsest. Every level has 256 channels, so one RPN head and one box head serve them all
(:mod:`frcnn_cli.model.levels`: anchors of one size per level, RoIs pooled from the level of
their size).

| backbone | levels (stride) | body | frozen (freeze_early) | head on RoIs |
| --- | --- | --- | --- | --- |
| resnet50-fpn | P2-P5 (4-32), P6 (64) | ResNet-50, frozen BN | stem, res2 | fc6, fc7 |
| resnet50-fpn-v2 | the same, FPN with BN | ResNet-50, BN | stem, res2 | 4 convs, 1 fc |
| mobilenet_v3_large-fpn | 2 x 32, pool (64) | MobileNetV3, frozen BN | blocks 0-6 | fc6, fc7 |
| tiny-fpn | P2-P4 (4-16), P5 (32), 64 channels | the tiny stack | none | fc6, fc7 |

These are torchvision's ``fasterrcnn_resnet50_fpn``, ``fasterrcnn_resnet50_fpn_v2`` and
``fasterrcnn_mobilenet_v3_large_fpn`` backbones: the same modules (the pyramid is
``torchvision.ops.FeaturePyramidNetwork``), the same trainable layers (torchvision's default of
3), the same frozen BatchNorm (eps 1e-5, or ``model.frozen_bn_eps``; ordinary BatchNorm when
trained from scratch) and the same state-dict keys (``backbone.body.*``, ``backbone.fpn.*``).
MobileNet's two levels both have stride 32: torchvision taps the block that halves the stride-16
map and the last one. RoIs are pooled from every level but the max-pooled one.

``tiny-fpn`` is the CPU demo's ``tiny`` stack with a 64-channel pyramid on its stride-4, 8 and
16 layers: the C4 demo network's FPN twin, trained from scratch, to measure what the pyramid
does for small objects (benchmarks/fpn_vs_c4.py).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn_cli.config import ModelConfig
from frcnn_cli.errors import RecipeError
from frcnn_cli.model.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TINY_LAYERS,
    BackboneParts,
    FCHead,
    load_imagenet,
    tiny_layers,
)

FPN_CHANNELS = 256       # every level's width (torchvision's)
FROZEN_BN_EPS = 1e-5     # torchvision's FrozenBatchNorm2d default


@dataclass(frozen=True)
class Pyramid:
    """One pyramid layout: torchvision's classification network, the body layers whose
    outputs feed the FPN, and the levels."""

    network: str                  # torchvision.models builder
    layers: tuple[str, ...]       # the body: the network's children (or features' blocks)
    taps: tuple[str, ...]         # body layers the FPN reads, finest first
    names: tuple[str, ...]        # level names, the max-pooled level last
    strides: tuple[int, ...]      # each level's stride
    frozen: int                   # leading body layers kept frozen (freeze_early)
    width: int = FPN_CHANNELS     # every level's channels


_RESNET = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
PYRAMIDS = {
    "resnet50-fpn": Pyramid("resnet50", _RESNET, ("layer1", "layer2", "layer3", "layer4"),
                            ("P2", "P3", "P4", "P5", "P6"), (4, 8, 16, 32, 64), 5),
    "mobilenet_v3_large-fpn": Pyramid("mobilenet_v3_large", tuple(str(i) for i in range(17)),
                                      ("13", "16"), ("block13", "block16", "pool"),
                                      (32, 32, 64), 7),
}
PYRAMIDS["resnet50-fpn-v2"] = PYRAMIDS["resnet50-fpn"]
# tiny's layers 0-6 (TINY_LAYERS): taps after the stride-4, stride-8 and stride-16 layers
PYRAMIDS["tiny-fpn"] = Pyramid("tiny", tuple(str(i) for i in range(len(TINY_LAYERS))),
                               ("1", "3", "6"), ("P2", "P3", "P4", "P5"), (4, 8, 16, 32), 0, 64)


def is_pyramid(backbone: str) -> bool:
    return backbone in PYRAMIDS


class PyramidBackbone(nn.Module):
    """Images [B, 3, H, W] -> a list of maps [B, 256, H / s, W / s], one per level (strides
    ``strides``), finest first; RoIs are pooled from the first ``pooled_levels``.

    The first ``num_frozen`` body layers never train and belong to no parameter group; the
    rest of the body and the FPN are the shared convs of the 4-step schedule.
    """

    def __init__(self, body: nn.ModuleDict, taps: tuple[str, ...], fpn: nn.Module,
                 spec: Pyramid, num_frozen: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.taps = taps
        self.level_names = spec.names
        self.strides = spec.strides
        self.stride = spec.strides[0]
        self.pooled_levels = len(spec.strides) - 1
        self.out_channels = spec.width
        self.num_frozen = num_frozen
        self.pixel_mean, self.pixel_std = IMAGENET_MEAN, IMAGENET_STD
        for p in self.frozen_layers().parameters():
            p.requires_grad_(False)

    def frozen_layers(self) -> nn.ModuleList:
        return nn.ModuleList(list(self.body.values())[:self.num_frozen])

    def trainable_parameters(self) -> list[nn.Parameter]:
        layers = list(self.body.values())[self.num_frozen:]
        return [p for layer in layers for p in layer.parameters()] + list(self.fpn.parameters())

    def forward(self, images: Tensor) -> list[Tensor]:
        x, stages = images, OrderedDict()
        for name, layer in self.body.items():
            x = layer(x)
            if name in self.taps:
                stages[str(len(stages))] = x
        return list(self.fpn(stages).values())


class TwoMLPHead(FCHead):
    """fc6 and fc7 on pooled RoIs, computed as torchvision's ``TwoMLPHead`` computes them (plain
    ``nn.Linear``, not the oneDNN path of :class:`FCHead`), so that near-equal scores rank as
    in torchvision's detector."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(F.relu(self.fc6(x.flatten(1))), self.dropout, self.training)
        return F.dropout(F.relu(self.fc7(x)), self.dropout, self.training)


def build_pyramid(cfg: ModelConfig, roi_size: int, load_weights: bool = True) -> BackboneParts:
    """The ``-fpn`` backbone of ``cfg`` and its box head; ImageNet weights for the body when
    the recipe asks and ``load_weights``."""
    spec = PYRAMIDS[cfg.backbone]
    if spec.network == "tiny":
        return _tiny_pyramid(cfg, roi_size, spec)
    v2 = cfg.backbone.endswith("-v2")
    imagenet = cfg.pretrained or cfg.backbone_weights is not None
    eps = FROZEN_BN_EPS if cfg.frozen_bn_eps is None else cfg.frozen_bn_eps
    # torchvision's v2 keeps ordinary BatchNorm even on ImageNet weights
    norm = partial(FrozenBatchNorm2d, eps=eps) if imagenet and not v2 else nn.BatchNorm2d
    net = getattr(torchvision.models, spec.network)(weights=None, norm_layer=norm)
    if load_weights and imagenet:
        load_imagenet(net, cfg)
    source = net.features if spec.network.startswith("mobilenet") else net
    body = nn.ModuleDict((name, getattr(source, name)) for name in spec.layers)
    channels = [_out_channels(body[name]) for name in spec.taps]
    fpn = FeaturePyramidNetwork(channels, FPN_CHANNELS, extra_blocks=LastLevelMaxPool(),
                                norm_layer=nn.BatchNorm2d if v2 else None)
    if v2:
        if cfg.svd_fc6 or cfg.svd_fc7:
            raise RecipeError("model.svd_fc6/svd_fc7 factorise an fc6/fc7 head, and "
                              "resnet50-fpn-v2's head is 4 convs and one fc layer")
        head = FastRCNNConvFCHead((FPN_CHANNELS, roi_size, roi_size), [FPN_CHANNELS] * 4,
                                  [cfg.head_dim], norm_layer=nn.BatchNorm2d)
    else:
        head = TwoMLPHead(FPN_CHANNELS * roi_size * roi_size, cfg.head_dim, cfg.dropout,
                          cfg.svd_fc6, cfg.svd_fc7)
    frozen = spec.frozen if cfg.freeze_early else 0
    return BackboneParts(PyramidBackbone(body, spec.taps, fpn, spec, frozen), head,
                         cfg.head_dim)


def _tiny_pyramid(cfg: ModelConfig, roi_size: int, spec: Pyramid) -> BackboneParts:
    """The tiny stack's layers (conv-BN-ReLU each) as the body of a ``spec.width`` pyramid."""
    layers = tiny_layers()
    body = nn.ModuleDict((name, nn.Sequential(*layers[3 * i:3 * i + 3]))
                         for i, name in enumerate(spec.layers))
    channels = [_out_channels(body[name]) for name in spec.taps]
    fpn = FeaturePyramidNetwork(channels, spec.width, extra_blocks=LastLevelMaxPool())
    head = FCHead(spec.width * roi_size * roi_size, cfg.head_dim, cfg.dropout, cfg.svd_fc6,
                  cfg.svd_fc7)
    return BackboneParts(PyramidBackbone(body, spec.taps, fpn, spec, 0), head, cfg.head_dim)


def _out_channels(layer: nn.Module) -> int:
    """Output channels of a ResNet stage or a MobileNet block: its last conv's."""
    return [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1].out_channels

