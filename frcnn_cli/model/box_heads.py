"""Box heads: the detector's own layers on each pooled RoI, [R, C, s, s] -> [R, head_channels].

The class scores and box deltas (:class:`~frcnn_cli.model.roi_heads.RoIHeads`) read their
output. One head per backbone family (:mod:`frcnn_cli.model.backbones` picks it):

- :class:`FCHead`: fc6 and fc7 (Fast R-CNN; VGG16's 4096-d layers, or ``head_dim`` wide),
  either of them a truncated SVD (:class:`LowRankLinear`, Fast R-CNN Section 3.1) when
  ``model.svd_fc6``/``svd_fc7`` say so, which ``frcnn export --svd`` writes from a trained head.
- :class:`TwoMLPHead`: the same two layers as torchvision's FPN detectors compute them.
- :class:`PooledConvHead`: a network's last stage on each RoI, then average pooling (ResNet's
  res5 in the C4 split, MobileNet's last blocks).
- torchvision's ``FastRCNNConvFCHead`` (4 convs and one fc) for ``resnet50-fpn-v2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn_cli.errors import RecipeError
from frcnn_cli.model.tracing import tracing

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


class TwoMLPHead(FCHead):
    """fc6 and fc7 on pooled RoIs, computed as torchvision's ``TwoMLPHead`` computes them (plain
    ``nn.Linear``, not the oneDNN path of :class:`FCHead`), so that near-equal scores rank as
    in torchvision's detector."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(F.relu(self.fc6(x.flatten(1))), self.dropout, self.training)
        return F.dropout(F.relu(self.fc7(x)), self.dropout, self.training)


class PooledConvHead(nn.Module):
    """res5 (ResNet C4) or MobileNet's last blocks on RoIs, then average pooling: [R, dim]."""

    def __init__(self, layers: nn.Module) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).mean(dim=(2, 3))
