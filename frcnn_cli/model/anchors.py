"""Anchors (Section 3.1): k reference boxes at every place of the shared conv map, or of every
level of a feature pyramid (Lin et al. 2017, Section 4.1), one generator for both.

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

from frcnn_cli.config import Recipe
from frcnn_cli.errors import RecipeError
from frcnn_cli.model.backbones import is_pyramid, level_strides
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


def level_anchor_sizes(recipe: Recipe, num_levels: int | None) -> list[list[float]]:
    """Anchor sizes (pixels) of each level: ``anchors.sizes`` for a pyramid of ``num_levels``
    (one per level, or all on each), ``scales * base_size`` for a single map (None)."""
    a = recipe.anchors
    if num_levels is None:
        return [[s * a.base_size for s in a.scales]]
    if a.level_sizes == "all":
        return [list(a.sizes)] * num_levels
    if len(a.sizes) != num_levels:
        raise RecipeError(f"anchors.sizes has {len(a.sizes)} sizes for the {num_levels} levels "
                          f"of {recipe.model.backbone}: give one per level, or set "
                          "anchors.level_sizes=all")
    return [[s] for s in a.sizes]


class AnchorGenerator:
    """Anchors over the maps of one or more levels; a single map is a pyramid of one level.

    ``grid(map_sizes, padded=None, device)`` returns [A, 4] float32 continuous boxes in network
    pixels: level by level (finest first), within a level place by place (row-major), k anchors
    per place, as the original (``all_anchors[(y * w + x) * k + a]``). ``style`` "paper": the
    original's base anchors (on a pyramid level, with the level's stride as the base size), on
    the cell centres; "torchvision": torchvision's ``AnchorGenerator``, on the cells' top-left
    corners, with torchvision's stride (padded image size // map size, per axis). Grids are
    cached per map sizes and device (and padded size, for torchvision's style).
    """

    def __init__(self, strides: Sequence[int], bases: Sequence[Tensor], style: str) -> None:
        if len({len(b) for b in bases}) != 1:
            raise RecipeError("every level needs the same number of anchors per place (one "
                              "RPN head serves them all)")
        self.strides, self.bases, self.style = tuple(strides), list(bases), style
        self._cache: dict[tuple, Tensor] = {}

    @classmethod
    def from_recipe(cls, recipe: Recipe, strides: Sequence[int] | None = None
                    ) -> AnchorGenerator:
        """A pyramid's anchors (its levels' ``strides``), or a single map's (None: the map of
        ``anchors.stride``, ``anchors.scales`` times ``anchors.base_size``)."""
        a = recipe.anchors
        sizes = level_anchor_sizes(recipe, None if strides is None else len(strides))
        if a.style == "torchvision":
            bases = [torchvision_anchors(s, a.ratios) for s in sizes]
        elif strides is None:
            bases = [generate_anchors(a.base_size, a.ratios, a.scales)]
        else:  # the original's recipe with the level's stride as the base size
            bases = [generate_anchors(st, a.ratios, [v / st for v in s])
                     for st, s in zip(strides, sizes, strict=True)]
        if a.style == "paper":
            bases = [to_continuous(b).float() for b in bases]
        return cls([a.stride] if strides is None else strides, bases, a.style)

    @property
    def num_anchors(self) -> int:
        """k, anchors per place (the same on every level: one head serves them all)."""
        return len(self.bases[0])

    def level_strides(self, map_sizes: Sequence[tuple], padded: Tensor | None):
        """Each level's (stride_y, stride_x): torchvision divides the padded size [2] by the
        map size; the paper's are the nominal strides."""
        if self.style != "torchvision" or padded is None:
            return [(s, s) for s in self.strides]
        return [(padded[0] // h, padded[1] // w) for h, w in map_sizes]

    def grid(self, map_sizes: Sequence[tuple], padded: Tensor | None = None,
             device: torch.device | str = "cpu") -> Tensor:
        """All levels' anchors for maps of ``map_sizes`` [(h, w)] of a batch padded to
        ``padded`` [2] (height, width; only the torchvision style reads it)."""
        cache = not tracing()  # traced sizes are symbolic: no cache, no int()
        key = None
        if cache:
            key = (tuple((int(h), int(w)) for h, w in map_sizes), str(device),
                   None if padded is None or self.style != "torchvision" else
                   tuple(padded.tolist()))
            if key in self._cache:
                return self._cache[key]
        out = []
        for (h, w), (sy, sx), base in zip(map_sizes, self.level_strides(map_sizes, padded),
                                          self.bases, strict=True):
            xs = torch.arange(w, device=device, dtype=torch.float32) * sx
            ys = torch.arange(h, device=device, dtype=torch.float32) * sy
            sy_, sx_ = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([sx_, sy_, sx_, sy_], dim=-1).reshape(-1, 1, 4)
            out.append((shifts + base.to(device)[None]).reshape(-1, 4))
        anchors = out[0] if len(out) == 1 else torch.cat(out)
        if cache:
            self._cache[key] = anchors
        return anchors


def original_anchors(recipe: Recipe) -> bool:
    """Are the recipe's anchors the original's: ``generate_anchors`` on one map? (Those are
    what ``frcnn anchors`` prints as the original's table, and what coverage suggests changes
    to; a pyramid's and torchvision's are shown level by level.)"""
    return not is_pyramid(recipe.model.backbone) and recipe.anchors.style == "paper"


def anchor_table(recipe: Recipe) -> list[dict]:
    """Every level's anchors at its first place (the cell at row 0, column 0), in the RPN's
    order: ``[{"level", "stride", "ratio", "size", "box"}]``, box x1 y1 x2 y2 continuous."""
    strides, names = level_strides(recipe)
    anchors = AnchorGenerator.from_recipe(recipe, strides)
    sizes = level_anchor_sizes(recipe, None if strides is None else len(strides))
    rows = []
    for name, stride, level_sizes, base in zip(names, anchors.strides, sizes, anchors.bases,
                                               strict=True):
        for i, box in enumerate(base.tolist()):
            rows.append({"level": name, "stride": stride,
                         "ratio": recipe.anchors.ratios[i // len(level_sizes)],
                         "size": level_sizes[i % len(level_sizes)], "box": box})
    return rows


def inside_image(anchors: Tensor, height, width, border: float) -> Tensor:
    """[A] bool: anchors reaching at most ``border`` pixels outside a height x width image
    (the original trains only on these; ``border`` < 0 keeps every anchor)."""
    if border < 0:
        return torch.ones(len(anchors), dtype=torch.bool, device=anchors.device)
    return ((anchors[:, 0] >= -border) & (anchors[:, 1] >= -border)
            & (anchors[:, 2] <= width + border) & (anchors[:, 3] <= height + border))
