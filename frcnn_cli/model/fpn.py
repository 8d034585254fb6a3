"""Feature Pyramid Network backbones (Lin et al. 2017), in torchvision's layouts.

The paper's detector reads one stride-16 map. A feature pyramid adds to a ResNet's (or
MobileNet's) stages a top-down path: a 1x1 lateral conv on each stage, the coarser merged map
upsampled (nearest) and added, a 3x3 conv on each sum, and one more level max-pooled from the
coarsest. Every level has 256 channels, so one RPN head and one box head serve them all
(anchors of one size per level, RoIs pooled from the level of their size by FPN Eq. 1).

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
:data:`~frcnn_cli.model.backbones.BACKBONES` holds each layout (:class:`Pyramid`) and builds
its body.

``tiny-fpn`` is the CPU demo's ``tiny`` stack with a 64-channel pyramid on its stride-4, 8 and
16 layers: the C4 demo network's FPN twin, trained from scratch, to measure what the pyramid
does for small objects (benchmarks/fpn_vs_c4.py).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

FPN_CHANNELS = 256       # every level's width (torchvision's)


@dataclass(frozen=True)
class Pyramid:
    """One pyramid layout: the body layers of the network, those whose outputs feed the FPN,
    and the levels."""

    layers: tuple[str, ...]       # the body: the network's children (or features' blocks)
    taps: tuple[str, ...]         # body layers the FPN reads, finest first
    names: tuple[str, ...]        # level names, the max-pooled level last
    strides: tuple[int, ...]      # each level's stride
    frozen: int                   # leading body layers kept frozen (freeze_early)
    width: int = FPN_CHANNELS     # every level's channels


class PyramidBackbone(nn.Module):
    """Images [B, 3, H, W] -> a list of maps [B, width, H / s, W / s], one per level (strides
    ``strides``), finest first; RoIs are pooled from the first ``pooled_levels``.

    ``body`` holds the network's layers in order; a FeaturePyramidNetwork (its convs normalised
    by ``norm_layer``, if given) reads the taps. The first ``num_frozen`` body layers never
    train and belong to no parameter group; the rest of the body and the FPN are the shared
    convs of the 4-step schedule.
    """

    def __init__(self, body: nn.ModuleDict, spec: Pyramid, num_frozen: int,
                 pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...],
                 norm_layer: type[nn.Module] | None = None) -> None:
        super().__init__()
        self.body = body
        channels = [_out_channels(body[name]) for name in spec.taps]
        self.fpn = FeaturePyramidNetwork(channels, spec.width, extra_blocks=LastLevelMaxPool(),
                                         norm_layer=norm_layer)
        self.taps = spec.taps
        self.level_names = spec.names
        self.strides = spec.strides
        self.pooled_levels = len(spec.strides) - 1
        self.out_channels = spec.width
        self.num_frozen = num_frozen
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
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


def _out_channels(layer: nn.Module) -> int:
    """Output channels of a ResNet stage or a MobileNet block: its last conv's."""
    return [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
