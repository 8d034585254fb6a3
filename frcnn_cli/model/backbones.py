"""Backbones: the shared conv layers, and the detector-only layers that sit on the RoIs.

Each builder splits one ImageNet network in two, as the paper does for VGG16:

| backbone | shared convs (stride 16) | early layers kept frozen | detector head on RoIs |
| --- | --- | --- | --- |
| vgg16 | conv1_1 .. conv5_3 (512) | conv1, conv2 | fc6, fc7 (from VGG's classifier) |
| resnet50/101 | stem .. res4 (1024), C4 | stem, res2 | res5 + average pool (2048) |
| mobilenet_v3_large | blocks 0-12 (112) | blocks 0-3 | blocks 13-16 + average pool (960) |
| tiny | 7 conv-BN-ReLU layers (128), 0.35 GFLOP at 256 px | none | fc6, fc7 (head_dim) |

The ``-fpn`` backbones (a feature pyramid on ResNet-50 or MobileNetV3, torchvision's layouts,
or on the tiny stack) are built in :mod:`frcnn_cli.model.fpn`.

fc6 and fc7 may be truncated SVDs (``model.svd_fc6``/``svd_fc7``, Fast R-CNN Section 3.1): each
is then two thinner layers, written by ``frcnn export --svd`` from a trained head.

ResNet and MobileNet use frozen BatchNorm when they start from ImageNet statistics (batches of
one or two images cannot estimate them), ordinary BatchNorm when trained from scratch. The
``tiny`` network is for CPU demos and tests and always trains from scratch.

ImageNet weights come through torchvision's weights API (``model.pretrained``), or from a local
state dict (``model.backbone_weights``: the file torchvision would download, e.g.
``vgg16-397923af.pth``), loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn_cli.checkpoint import load_safe
from frcnn_cli.config import ModelConfig
from frcnn_cli.errors import CheckpointError, FrcnnError, RecipeError
from frcnn_cli.model.tracing import tracing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDE = 16

# name -> (torchvision builder, weights enum); the weights every torchvision user knows.
_TORCHVISION = {
    "vgg16": ("vgg16", "VGG16_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "resnet101": ("resnet101", "ResNet101_Weights"),
    "mobilenet_v3_large": ("mobilenet_v3_large", "MobileNet_V3_Large_Weights"),
    "resnet50-fpn": ("resnet50", "ResNet50_Weights"),
    "resnet50-fpn-v2": ("resnet50", "ResNet50_Weights"),
    "mobilenet_v3_large-fpn": ("mobilenet_v3_large", "MobileNet_V3_Large_Weights"),
}


class Backbone(nn.Module):
    """Shared conv layers: images [B, 3, H, W] -> features [B, out_channels, H/16, W/16].

    The first ``num_frozen`` modules of ``body`` never train (requires_grad off, norm layers
    kept in eval mode by the model) and belong to no parameter group.
    """

    def __init__(self, body: nn.Sequential, out_channels: int, num_frozen: int = 0) -> None:
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.stride = STRIDE
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


_onednn_linear = torch.ops.aten.mkldnn_linear


def _linear(x: Tensor, layer: nn.Module) -> Tensor:
    """``layer(x)``; for an nn.Linear in fp32 CPU inference through oneDNN's GEMM, about 25 %
    faster than the default one for fc6's shapes (300 x 25088 x 4096: 0.30 s against 0.39 s on
    2 cores)."""
    if not isinstance(layer, nn.Linear):
        return layer(x)
    if (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.is_available()
            and not tracing()):
        return _onednn_linear(x.contiguous().to_mkldnn(), layer.weight, layer.bias).to_dense()
    return layer(x)


def truncated_svd(weight: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """The best rank-K factors of ``weight`` [out, in] (Eckart-Young): ``W ~ U_K @ SV``.

    Returns ``SV`` = Sigma_K V_K^T [K, in], ``U_K`` [out, K] and all singular values
    [min(out, in)], largest first; the Frobenius error of the product is the norm of the
    singular values after the first K.

    Computed from the eigenvectors of the smaller Gram matrix (``W W^T`` for fc6's
    4096 x 25088) in float64, then ``SV = U_K^T W``: the same factors as an SVD up to
    rounding, about 5 times faster on a CPU (VGG16's fc6: 46 s against 214 s for
    ``torch.linalg.svd`` on one core).
    """
    w = weight.detach().double()
    wide = w.shape[0] <= w.shape[1]
    eigenvalues, vectors = torch.linalg.eigh(w @ w.T if wide else w.T @ w)  # ascending
    singular_values = eigenvalues.flip(0).clamp(min=0).sqrt()
    top = vectors.flip(1)[:, :rank]
    if wide:  # top: U_K
        u, sv = top, top.T @ w
    else:  # top: V_K, and W V_K = U_K Sigma_K
        s = singular_values[:rank]
        u = torch.where(s > 0, (w @ top) / s.clamp(min=torch.finfo(w.dtype).tiny), 0.0)
        sv = s[:, None] * top.T
    dtype = weight.dtype
    return sv.to(dtype), u.to(dtype).contiguous(), singular_values.to(dtype)


class LowRankLinear(nn.Module):
    """A Linear layer as two thinner ones with no non-linearity between (Fast R-CNN Section
    3.1): ``sv`` in -> K with weight Sigma_K V_K^T and no bias, then ``u`` K -> out with weight
    U_K and the original bias. K (in + out) multiply-adds per row instead of in x out."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        if not 1 <= rank < min(in_features, out_features):  # else nothing to gain
            raise ValueError(f"rank {rank} of a {in_features} -> {out_features} layer must be "
                             f"in 1..{min(in_features, out_features) - 1}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.sv = nn.Linear(in_features, rank, bias=False)
        self.u = nn.Linear(rank, out_features)

    @classmethod
    def from_linear(cls, layer: nn.Linear, rank: int) -> tuple[LowRankLinear, Tensor]:
        """``layer`` truncated to ``rank``, and ``layer``'s singular values."""
        low = cls(layer.in_features, layer.out_features, rank)
        sv, u, singular_values = truncated_svd(layer.weight, rank)
        with torch.no_grad():
            low.sv.weight.copy_(sv)
            low.u.weight.copy_(u)
            if layer.bias is not None:
                low.u.bias.copy_(layer.bias)
            else:
                low.u.bias.zero_()
        return low.to(layer.weight.device), singular_values

    def forward(self, x: Tensor) -> Tensor:
        return _linear(_linear(x, self.sv), self.u)


def _fc(name: str, in_features: int, out_features: int, rank: int | None) -> nn.Module:
    if not rank:
        return nn.Linear(in_features, out_features)
    if rank >= min(in_features, out_features):
        raise RecipeError(f"model.svd_{name} is {rank}, but {name} ({in_features} -> "
                          f"{out_features}) only saves work below rank "
                          f"{min(in_features, out_features)}")
    return LowRankLinear(in_features, out_features, rank)


class FCHead(nn.Module):
    """fc6 and fc7 (Fast R-CNN): pooled RoIs [R, C, s, s] -> [R, dim], ReLU and dropout.

    ``svd_fc6``/``svd_fc7``: build that layer as a :class:`LowRankLinear` of this rank (the
    shape of a compressed checkpoint); :meth:`compress` turns full layers into such by SVD.
    """

    def __init__(self, in_features: int, dim: int, dropout: float,
                 svd_fc6: int | None = None, svd_fc7: int | None = None) -> None:
        super().__init__()
        self.fc6 = _fc("fc6", in_features, dim, svd_fc6)
        self.fc7 = _fc("fc7", dim, dim, svd_fc7)
        self.dropout = dropout

    def compress(self, fc6: int | None, fc7: int | None) -> dict[str, Tensor]:
        """Replace the full fc6/fc7 by their truncated SVDs of these ranks (None: keep);
        returns the singular values of each layer replaced."""
        singular_values = {}
        for name, rank in (("fc6", fc6), ("fc7", fc7)):
            if rank:
                layer, singular_values[name] = LowRankLinear.from_linear(getattr(self, name),
                                                                         rank)
                setattr(self, name, layer)
        return singular_values

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(F.relu(_linear(x.flatten(1), self.fc6)), self.dropout, self.training)
        return F.dropout(F.relu(_linear(x, self.fc7)), self.dropout, self.training)


class PooledConvHead(nn.Module):
    """res5 (ResNet C4) or MobileNet's last blocks on RoIs, then average pooling: [R, dim]."""

    def __init__(self, layers: nn.Module) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).mean(dim=(2, 3))


@dataclass
class BackboneParts:
    backbone: Backbone      # shared convs (state dict prefix ``backbone.``)
    box_head: nn.Module     # detector-only layers on RoIs (inside ``roi_heads.``)
    head_channels: int      # width of the box head's output


def build_backbone(cfg: ModelConfig, roi_size: int, load_weights: bool = True) -> BackboneParts:
    """The backbone named by ``cfg.backbone``; ImageNet weights when the recipe asks and
    ``load_weights`` (False when a checkpoint will overwrite them anyway)."""
    if cfg.backbone == "tiny":
        return _tiny(cfg, roi_size)
    if "-fpn" in cfg.backbone:
        from frcnn_cli.model.fpn import build_pyramid  # fpn.py builds on this module

        return build_pyramid(cfg, roi_size, load_weights)
    if cfg.backbone != "vgg16" and (cfg.svd_fc6 or cfg.svd_fc7):
        raise RecipeError(f"model.svd_fc6/svd_fc7 factorise an fc6/fc7 head, and {cfg.backbone} "
                          "has none (its head is convolutional)")
    imagenet = cfg.pretrained or cfg.backbone_weights is not None
    builder, _ = _TORCHVISION[cfg.backbone]
    kwargs = {}
    if cfg.backbone.startswith("resnet"):
        kwargs["norm_layer"] = FrozenBatchNorm2d if imagenet else nn.BatchNorm2d
    elif cfg.backbone.startswith("mobilenet"):  # MobileNet's own BatchNorm eps
        kwargs["norm_layer"] = partial(FrozenBatchNorm2d if imagenet else nn.BatchNorm2d,
                                       eps=0.001)
    net = getattr(torchvision.models, builder)(weights=None, **kwargs)
    loaded = load_weights and imagenet and load_imagenet(net, cfg)
    return {"vgg16": _vgg16, "resnet50": _resnet_c4, "resnet101": _resnet_c4,
            "mobilenet_v3_large": _mobilenet}[cfg.backbone](net, cfg, roi_size, loaded)


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
    builder, enum = _TORCHVISION[cfg.backbone]
    weights = getattr(torchvision.models, enum).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:  # offline, proxy, bad cache: all end the same way for the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FrcnnError(
            f"cannot download the ImageNet weights of {cfg.backbone} ({reason}); on an offline "
            f"machine fetch {weights.url} elsewhere and pass --backbone-weights FILE "
            "(recipe key model.backbone_weights), or set model.pretrained=false") from None


def _vgg16(net, cfg: ModelConfig, roi_size: int, imagenet: bool) -> BackboneParts:
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


def _resnet_c4(net, cfg: ModelConfig, roi_size: int, imagenet: bool) -> BackboneParts:
    body = nn.Sequential(OrderedDict(
        (name, getattr(net, name))
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")))
    frozen = 5 if cfg.freeze_early else 0  # stem and res2
    return BackboneParts(Backbone(body, 1024, frozen), PooledConvHead(net.layer4), 2048)


def _mobilenet(net, cfg: ModelConfig, roi_size: int, imagenet: bool) -> BackboneParts:
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


def _tiny(cfg: ModelConfig, roi_size: int) -> BackboneParts:
    body, cin = nn.Sequential(*tiny_layers()), TINY_LAYERS[-1][0]
    head = FCHead(cin * roi_size * roi_size, cfg.head_dim, cfg.dropout, cfg.svd_fc6, cfg.svd_fc7)
    return BackboneParts(Backbone(body, cin), head, cfg.head_dim)
