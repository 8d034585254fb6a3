"""Anchors (Section 3.1): k reference boxes at every place of the shared conv map.

The base anchors come from the original implementation's ``generate_anchors`` (py-faster-rcnn,
``lib/rpn/generate_anchors.py``, after the MATLAB original), reproduced bit for bit: start from
the ``base_size`` square, enumerate aspect ratios at constant area (widths and heights rounded
half to even, as numpy does), then scale each. The table that file quotes is in *inclusive,
1-based* pixel indices (the MATLAB convention: the base square spans pixels 1..16); its Python
code starts from pixels 0..15 and returns the same boxes minus 1. Everything else in frcnn
uses continuous coordinates (pixel i covers [i, i + 1), width = x2 - x1), so
:func:`to_continuous` converts, once, here: x1 - 1, y1 - 1 (0-based inclusive + 1 on x2, y2
gives the same). The first anchor becomes [-84, -40, 100, 56], centred on (8, 8), the centre
of the first 16 x 16 cell, exactly where the original's box coding puts it.

For stride 16, scales 8/16/32 and ratios 0.5/1/2 the 9 base anchors are (inclusive 1-based,
h/w ratio major)::

    [-83, -39, 100,  56]  [-175,  -87, 192, 104]  [-359, -183, 376, 200]   ratio 0.5
    [-55, -55,  72,  72]  [-119, -119, 136, 136]  [-247, -247, 264, 264]   ratio 1
    [-35, -79,  52,  96]  [ -79, -167,  96, 184]  [-167, -343, 184, 360]   ratio 2
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from frcnn_cli.model.tracing import tracing


def _whctrs(anchors: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Width, height and centre of inclusive boxes [N, 4]."""
    w = anchors[:, 2] - anchors[:, 0] + 1
    h = anchors[:, 3] - anchors[:, 1] + 1
    return w, h, anchors[:, 0] + 0.5 * (w - 1), anchors[:, 1] + 0.5 * (h - 1)


def _mkanchors(ws: Tensor, hs: Tensor, x_ctr: Tensor, y_ctr: Tensor) -> Tensor:
    """Inclusive boxes [N, 4] of the given widths and heights around the centres."""
    return torch.stack([x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1),
                        x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)], dim=1)


def generate_anchors(base_size: float = 16, ratios: Sequence[float] = (0.5, 1, 2),
                     scales: Sequence[float] = (8, 16, 32)) -> Tensor:
    """The original base anchors: [len(ratios) * len(scales), 4] inclusive 1-based x1 y1 x2 y2.

    Ordered ratio-major (all scales of the first ratio, then the next ratio), as the original.
    Computed in float64 so the rounding matches numpy's exactly.
    """
    base = torch.tensor([[1, 1, base_size, base_size]], dtype=torch.float64)
    w, h, x_ctr, y_ctr = _whctrs(base)
    ratios_t = torch.tensor(list(ratios), dtype=torch.float64)
    ws = torch.round(torch.sqrt(w * h / ratios_t))  # torch.round is half-to-even, like numpy
    hs = torch.round(ws * ratios_t)
    ratio_anchors = _mkanchors(ws, hs, x_ctr.expand_as(ws), y_ctr.expand_as(ws))

    scales_t = torch.tensor(list(scales), dtype=torch.float64)
    w, h, x_ctr, y_ctr = _whctrs(ratio_anchors)
    ws = (w[:, None] * scales_t).flatten()
    hs = (h[:, None] * scales_t).flatten()
    k = len(scales_t)
    return _mkanchors(ws, hs, x_ctr.repeat_interleave(k), y_ctr.repeat_interleave(k))


def torchvision_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """torchvision's ``AnchorGenerator`` base anchors: [len(ratios) * len(sizes), 4] continuous
    boxes centred on (0, 0), ratio-major; w = size / sqrt(ratio), h = size * sqrt(ratio), the
    corners rounded (half to even), all in float32 as torchvision computes them."""
    sizes_t = torch.tensor(list(sizes), dtype=torch.float32)
    h_ratios = torch.sqrt(torch.tensor(list(ratios), dtype=torch.float32))
    ws = (1 / h_ratios[:, None] * sizes_t[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * sizes_t[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def to_continuous(inclusive: Tensor) -> Tensor:
    """Inclusive 1-based pixel boxes -> continuous 0-based boxes: pixels x1..x2 (1-based)
    cover [x1 - 1, x2)."""
    return inclusive - inclusive.new_tensor([1, 1, 0, 0])


@dataclass(frozen=True)
class BaseAnchor:
    """One base anchor: the ratio (h/w) and scale it comes from, its box as the original
    writes it (``inclusive``: x1 y1 x2 y2, 1-based pixels) and in frcnn's ``continuous``
    coordinates."""

    ratio: float
    scale: float
    inclusive: list[float]
    continuous: list[float]

    @property
    def width(self) -> float:
        return self.continuous[2] - self.continuous[0]

    @property
    def height(self) -> float:
        return self.continuous[3] - self.continuous[1]


def base_anchor_table(base_size: float, ratios: Sequence[float],
                      scales: Sequence[float]) -> list[BaseAnchor]:
    """The anchors of :func:`generate_anchors`, in its order (ratio-major), each with the
    ratio and scale it comes from."""
    inclusive = generate_anchors(base_size, ratios, scales)
    k = len(scales)
    return [BaseAnchor(ratios[i // k], scales[i % k], box, cont) for i, (box, cont) in
            enumerate(zip(inclusive.tolist(), to_continuous(inclusive).tolist(), strict=True))]


class AnchorGrid:
    """Anchors over a feature map: the k base anchors shifted to every place.

    ``grid(h, w, device)`` returns [h * w * k, 4] float32 continuous boxes in input pixels,
    ordered place by place (row-major over the map), k anchors per place, as the original
    (``all_anchors[(y * w + x) * k + a]``). Grids are cached per (h, w, device).
    """

    def __init__(self, stride: int, base_size: float, scales: Sequence[float],
                 ratios: Sequence[float]) -> None:
        self.stride = stride
        self.base = to_continuous(generate_anchors(base_size, ratios, scales)).float()
        self._cache: dict[tuple[int, int, str], Tensor] = {}

    @classmethod
    def from_recipe(cls, recipe) -> AnchorGrid:
        a = recipe.anchors
        return cls(a.stride, a.base_size, a.scales, a.ratios)

    @property
    def num_anchors(self) -> int:
        """k, anchors per place."""
        return len(self.base)

    def grid(self, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        cache = not tracing()  # traced sizes are symbolic: no cache, no int()
        key = (int(height), int(width), str(device)) if cache else None
        if cache and key in self._cache:
            return self._cache[key]
        xs = torch.arange(width, device=device, dtype=torch.float32) * self.stride
        ys = torch.arange(height, device=device, dtype=torch.float32) * self.stride
        sy, sx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)
        anchors = (shifts + self.base.to(device)[None]).reshape(-1, 4)
        if cache:
            self._cache[key] = anchors
        return anchors


def inside_image(anchors: Tensor, height, width, border: float) -> Tensor:
    """[A] bool: anchors reaching at most ``border`` pixels outside a height x width image
    (the original trains only on these; ``border`` < 0 keeps every anchor)."""
    if border < 0:
        return torch.ones(len(anchors), dtype=torch.bool, device=anchors.device)
    return ((anchors[:, 0] >= -border) & (anchors[:, 1] >= -border)
            & (anchors[:, 2] <= width + border) & (anchors[:, 3] <= height + border))
