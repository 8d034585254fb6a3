"""Backbones: the shared conv layers, and the box head that sits on the RoIs.

Each builder splits one ImageNet network in two, as the paper does for VGG16:

| backbone | shared convs (stride 16) | early layers kept frozen | box head on RoIs |
| --- | --- | --- | --- |
| vgg16 | conv1_1 .. conv5_3 (512) | conv1, conv2 | fc6, fc7 (from VGG's classifier) |
| resnet50/101 | stem .. res4 (1024), C4 | stem, res2 | res5 + average pool (2048) |
| mobilenet_v3_large | blocks 0-12 (112) | blocks 0-3 | blocks 13-16 + average pool (960) |
| tiny | 7 conv-BN-ReLU layers (128), 0.35 GFLOP at 256 px | none | fc6, fc7 (head_dim) |

The ``-fpn`` backbones put a feature pyramid on ResNet-50, MobileNetV3 or the tiny stack
(:mod:`frcnn_cli.model.fpn`, torchvision's layouts): a list of level maps instead of one map.
:data:`BACKBONES` is the one table: name -> builder, the torchvision network whose ImageNet
weights it starts from, and a pyramid's levels. The box heads are in
:mod:`frcnn_cli.model.box_heads`.

ResNet and MobileNet use frozen BatchNorm when they start from ImageNet statistics (batches of
one or two images cannot estimate them), ordinary BatchNorm when trained from scratch. The
``tiny`` networks are for CPU demos and tests and always train from scratch.

ImageNet weights come through torchvision's weights API (``model.pretrained``), or from a local
state dict (``model.backbone_weights``: the file torchvision would download, e.g.
``vgg16-397923af.pth``), loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torchvision
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn_cli.checkpoint import load_safe
from frcnn_cli.config import ModelConfig, Recipe
from frcnn_cli.errors import CheckpointError, FrcnnError, RecipeError
from frcnn_cli.model.box_heads import FCHead, PooledConvHead, TwoMLPHead
from frcnn_cli.model.fpn import Pyramid, PyramidBackbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDE = 16
FROZEN_BN_EPS = 1e-5     # torchvision's FrozenBatchNorm2d default


class Backbone(nn.Module):
    """Shared conv layers: images [B, 3, H, W] -> features [B, out_channels, H/16, W/16], one
    level (``strides``) that RoIs are pooled from.

    The first ``num_frozen`` modules of ``body`` never train (requires_grad off, norm layers
    kept in eval mode by the model) and belong to no parameter group.
    """

    def __init__(self, body: nn.Sequential, out_channels: int, num_frozen: int = 0) -> None:
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.strides, self.pooled_levels = (STRIDE,), 1
        self.num_frozen = num_frozen
        self.pixel_mean, self.pixel_std = IMAGENET_MEAN, IMAGENET_STD
        for p in self.frozen_layers().parameters():
            p.requires_grad_(False)

    def frozen_layers(self) -> nn.Sequential:
        return self.body[:self.num_frozen]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.body[self.num_frozen:].parameters())

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images)


@dataclass
class BackboneParts:
    backbone: nn.Module     # shared convs (state dict prefix ``backbone.``)
    box_head: nn.Module     # detector-only layers on RoIs (inside ``roi_heads.``)
    head_channels: int      # width of the box head's output


@dataclass(frozen=True)
class BackboneEntry:
    """One row of :data:`BACKBONES`."""

    build: Callable[[ModelConfig, int, bool], BackboneParts]  # (cfg, roi_size, load_weights)
    network: str | None = None     # torchvision.models builder of its ImageNet network
    weights: str | None = None     # that network's weights enum
    pyramid: Pyramid | None = None  # a feature pyramid's levels; None: one stride-16 map


def build_backbone(cfg: ModelConfig, roi_size: int, load_weights: bool = True) -> BackboneParts:
    """The backbone named by ``cfg.backbone`` and its box head; ImageNet weights when the
    recipe asks and ``load_weights`` (False when a checkpoint will overwrite them anyway)."""
    return BACKBONES[cfg.backbone].build(cfg, roi_size, load_weights)


def is_pyramid(backbone: str) -> bool:
    return BACKBONES[backbone].pyramid is not None


def level_strides(recipe: Recipe) -> tuple[list[int] | None, list[str]]:
    """The recipe's backbone's level strides and names; (None, ["map"]) for a single map."""
    spec = BACKBONES[recipe.model.backbone].pyramid
    return (list(spec.strides), list(spec.names)) if spec else (None, ["map"])


def _imagenet(cfg: ModelConfig) -> bool:
    return cfg.pretrained or cfg.backbone_weights is not None


def _network(cfg: ModelConfig, load_weights: bool, **kwargs) -> tuple[nn.Module, bool]:
    """torchvision's ImageNet network of ``cfg.backbone``, and whether its ImageNet weights
    were loaded (when the recipe asks and ``load_weights``)."""
    net = getattr(torchvision.models, BACKBONES[cfg.backbone].network)(weights=None, **kwargs)
    return net, load_weights and _imagenet(cfg) and load_imagenet(net, cfg)


def load_imagenet(net: nn.Module, cfg: ModelConfig) -> bool:
    """Load the ImageNet weights of ``cfg.backbone`` into torchvision's classification network
    ``net``; a file that does not fit is a clear error. Returns True."""
    state = imagenet_state_dict(cfg)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        where = cfg.backbone_weights or "the downloaded file"
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        problem = lines[1] if len(lines) > 1 else lines[0] if lines else "mismatch"
        raise CheckpointError(f"{where} does not hold {cfg.backbone} ImageNet weights "
                              f"({problem[:200]})") from None
    return True


def imagenet_state_dict(cfg: ModelConfig) -> dict[str, Tensor]:
    """ImageNet weights of ``cfg.backbone``: the local file if given, else a download."""
    if cfg.backbone_weights is not None:
        state = load_safe(cfg.backbone_weights, "backbone weights file")
        for key in ("state_dict", "model"):  # common wrappers around a state dict
            if isinstance(state.get(key), dict):
                state = state[key]
        return state
    weights = getattr(torchvision.models, BACKBONES[cfg.backbone].weights).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:  # offline, proxy, bad cache: all end the same way for the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FrcnnError(
            f"cannot download the ImageNet weights of {cfg.backbone} ({reason}); on an offline "
            f"machine fetch {weights.url} elsewhere and pass --backbone-weights FILE "
            "(recipe key model.backbone_weights), or set model.pretrained=false") from None


def _no_svd(cfg: ModelConfig, head: str) -> None:
    if cfg.svd_fc6 or cfg.svd_fc7:
        raise RecipeError(f"model.svd_fc6/svd_fc7 factorise an fc6/fc7 head, and {head}")


def _vgg16(cfg: ModelConfig, roi_size: int, load_weights: bool) -> BackboneParts:
    net, imagenet = _network(cfg, load_weights)
    body = net.features[:30]  # conv5_3 + ReLU; the last max pool is dropped (stride 16)
    frozen = 10 if cfg.freeze_early else 0  # conv1_1 .. pool2
    from_vgg = imagenet and cfg.head_dim == 4096 and roi_size == 7
    ranks = (None, None) if from_vgg else (cfg.svd_fc6, cfg.svd_fc7)
    head = FCHead(512 * roi_size * roi_size, cfg.head_dim, cfg.dropout, *ranks)
    if from_vgg:
        # fc6/fc7 start from VGG's classifier, as in the paper (7 x 7 x 512 -> 4096 -> 4096),
        # truncated if the recipe asks.
        head.fc6.load_state_dict(net.classifier[0].state_dict())
        head.fc7.load_state_dict(net.classifier[3].state_dict())
        head.compress(cfg.svd_fc6, cfg.svd_fc7)
    return BackboneParts(Backbone(body, 512, frozen), head, cfg.head_dim)


def _resnet_c4(cfg: ModelConfig, roi_size: int, load_weights: bool) -> BackboneParts:
    _no_svd(cfg, f"{cfg.backbone} has none (its head is convolutional)")
    norm = FrozenBatchNorm2d if _imagenet(cfg) else nn.BatchNorm2d
    net, _ = _network(cfg, load_weights, norm_layer=norm)
    body = nn.Sequential(OrderedDict(
        (name, getattr(net, name))
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")))
    frozen = 5 if cfg.freeze_early else 0  # stem and res2
    return BackboneParts(Backbone(body, 1024, frozen), PooledConvHead(net.layer4), 2048)


def _mobilenet(cfg: ModelConfig, roi_size: int, load_weights: bool) -> BackboneParts:
    _no_svd(cfg, f"{cfg.backbone} has none (its head is convolutional)")
    norm = partial(FrozenBatchNorm2d if _imagenet(cfg) else nn.BatchNorm2d, eps=0.001)
    net, _ = _network(cfg, load_weights, norm_layer=norm)  # MobileNet's own BatchNorm eps
    body = net.features[:13]  # up to the last stride-16 block (112 channels)
    frozen = 4 if cfg.freeze_early else 0  # stem and the stride-2/4 blocks
    return BackboneParts(Backbone(body, 112, frozen), PooledConvHead(net.features[13:]), 960)


# The tiny backbone: (out channels, stride) of each 3x3 conv-BN-ReLU layer.
TINY_LAYERS = ((16, 2), (32, 2), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1))


def tiny_layers() -> list[nn.Module]:
    """A VGG-shaped stack (7 conv layers, receptive field 119 px) small enough to train from
    scratch in minutes on a laptop CPU: conv, BatchNorm, ReLU per layer."""
    layers: list[nn.Module] = []
    cin = 3
    for cout, stride in TINY_LAYERS:
        layers += [nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    for m in layers:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return layers


def _tiny(cfg: ModelConfig, roi_size: int, load_weights: bool) -> BackboneParts:
    body, cin = nn.Sequential(*tiny_layers()), TINY_LAYERS[-1][0]
    head = FCHead(cin * roi_size * roi_size, cfg.head_dim, cfg.dropout, cfg.svd_fc6, cfg.svd_fc7)
    return BackboneParts(Backbone(body, cin), head, cfg.head_dim)


def _pyramid(cfg: ModelConfig, roi_size: int, load_weights: bool, v2: bool = False
             ) -> BackboneParts:
    """A feature pyramid on torchvision's ResNet-50 or MobileNetV3, as torchvision builds it,
    and its box head; ``v2``: torchvision's second layout (ordinary BatchNorm even on ImageNet
    weights, in the FPN too, and a 4-conv 1-fc head)."""
    spec = BACKBONES[cfg.backbone].pyramid
    eps = FROZEN_BN_EPS if cfg.frozen_bn_eps is None else cfg.frozen_bn_eps
    norm = partial(FrozenBatchNorm2d, eps=eps) if _imagenet(cfg) and not v2 else nn.BatchNorm2d
    net, _ = _network(cfg, load_weights, norm_layer=norm)
    source = getattr(net, "features", net)  # MobileNet's blocks are its features
    body = nn.ModuleDict((name, getattr(source, name)) for name in spec.layers)
    backbone = PyramidBackbone(body, spec, spec.frozen if cfg.freeze_early else 0,
                               IMAGENET_MEAN, IMAGENET_STD, nn.BatchNorm2d if v2 else None)
    if v2:
        _no_svd(cfg, "resnet50-fpn-v2's head is 4 convs and one fc layer")
        head = FastRCNNConvFCHead((spec.width, roi_size, roi_size), [spec.width] * 4,
                                  [cfg.head_dim], norm_layer=nn.BatchNorm2d)
    else:
        head = TwoMLPHead(spec.width * roi_size * roi_size, cfg.head_dim, cfg.dropout,
                          cfg.svd_fc6, cfg.svd_fc7)
    return BackboneParts(backbone, head, cfg.head_dim)


def _tiny_pyramid(cfg: ModelConfig, roi_size: int, load_weights: bool) -> BackboneParts:
    """The tiny stack's layers (conv-BN-ReLU each) as the body of a narrow pyramid."""
    spec, layers = BACKBONES[cfg.backbone].pyramid, tiny_layers()
    body = nn.ModuleDict((name, nn.Sequential(*layers[3 * i:3 * i + 3]))
                         for i, name in enumerate(spec.layers))
    backbone = PyramidBackbone(body, spec, 0, IMAGENET_MEAN, IMAGENET_STD)
    head = FCHead(spec.width * roi_size * roi_size, cfg.head_dim, cfg.dropout, cfg.svd_fc6,
                  cfg.svd_fc7)
    return BackboneParts(backbone, head, cfg.head_dim)


_RESNET = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_RESNET50_FPN = Pyramid(_RESNET, ("layer1", "layer2", "layer3", "layer4"),
                        ("P2", "P3", "P4", "P5", "P6"), (4, 8, 16, 32, 64), 5)
BACKBONES: dict[str, BackboneEntry] = {
    "vgg16": BackboneEntry(_vgg16, "vgg16", "VGG16_Weights"),
    "resnet50": BackboneEntry(_resnet_c4, "resnet50", "ResNet50_Weights"),
    "resnet101": BackboneEntry(_resnet_c4, "resnet101", "ResNet101_Weights"),
    "mobilenet_v3_large": BackboneEntry(_mobilenet, "mobilenet_v3_large",
                                        "MobileNet_V3_Large_Weights"),
    "tiny": BackboneEntry(_tiny),
    "resnet50-fpn": BackboneEntry(_pyramid, "resnet50", "ResNet50_Weights", _RESNET50_FPN),
    "resnet50-fpn-v2": BackboneEntry(partial(_pyramid, v2=True), "resnet50", "ResNet50_Weights",
                                     _RESNET50_FPN),
    "mobilenet_v3_large-fpn": BackboneEntry(
        _pyramid, "mobilenet_v3_large", "MobileNet_V3_Large_Weights",
        Pyramid(tuple(str(i) for i in range(17)), ("13", "16"), ("block13", "block16", "pool"),
                (32, 32, 64), 7)),
    # tiny's layers 0-6 (TINY_LAYERS): taps after the stride-4, stride-8 and stride-16 layers
    "tiny-fpn": BackboneEntry(_tiny_pyramid, pyramid=Pyramid(
        tuple(str(i) for i in range(len(TINY_LAYERS))), ("1", "3", "6"),
        ("P2", "P3", "P4", "P5"), (4, 8, 16, 32), 0, 64)),
}
