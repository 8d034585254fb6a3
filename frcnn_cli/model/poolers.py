"""RoI pooling (Fast R-CNN Section 2.1): each RoI becomes an s x s grid of features.

From one map, as the paper: max pooling at the map's 1/16 scale (``roi_pool``, which counts
the box's x2, y2 as its last pixel, as the original's inclusive boxes did), or RoIAlign
(aligned, an adaptive number of samples per bin). From a feature pyramid, as torchvision's
``MultiScaleRoIAlign`` (2 samples per bin, not aligned): each RoI from the level that fits its
size, FPN Eq. 1, ``k = floor(4 + log2(sqrt(w h) / 224))``, clamped to the pooled levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

# FPN Eq. 1: a 224 x 224 RoI (ImageNet's size) is pooled from level k0 = 4.
CANONICAL_SIZE, CANONICAL_LEVEL = 224, 4
LEVEL_EPS = 1e-6  # torchvision's LevelMapper: sizes that are exact powers of 2 stay up


class RoIPooler(nn.Module):
    """``forward(features, proposals)``: RoI features [R, C, s, s] of the proposals (a list of
    [P_i, 4] boxes in network pixels; all images, in order) from ``features``, one map [B, C,
    H, W] or a list of level maps, finest first, of which the first ``len(strides)`` are
    pooled. ``op``: "pool" (max pooling) or "align" (RoIAlign). Holds no weights."""

    def __init__(self, op: str, size: int, strides: Sequence[int]) -> None:
        super().__init__()
        self.op, self.size, self.strides = op, size, tuple(strides)
        self.k_min = int(math.log2(strides[0]))
        self.k_max = int(math.log2(strides[-1]))
        # torchvision's MultiScaleRoIAlign on a pyramid, detectron2's ROIAlignV2 on one map
        self.sampling_ratio, self.aligned = (0, True) if len(self.strides) == 1 else (2, False)

    def map_levels(self, boxes: Tensor) -> Tensor:
        """[R] level index (0 = the finest pooled level) of boxes [R, 4], by FPN Eq. 1."""
        size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        k = torch.floor(CANONICAL_LEVEL + torch.log2(size / CANONICAL_SIZE)
                        + torch.tensor(LEVEL_EPS, dtype=size.dtype))
        return k.clamp(min=self.k_min, max=self.k_max).to(torch.int64) - self.k_min

    def _pool(self, feature: Tensor, rois: Tensor, stride: int) -> Tensor:
        if self.op == "pool":  # the box's last pixel, not the one after it (module doc)
            return roi_pool(feature, rois - rois.new_tensor([0, 0, 0, 1, 1]), self.size,
                            1.0 / stride)
        return roi_align(feature, rois, self.size, 1.0 / stride,
                         sampling_ratio=self.sampling_ratio, aligned=self.aligned)

    def forward(self, features: Tensor | list[Tensor], proposals: list[Tensor]) -> Tensor:
        maps = [features] if isinstance(features, Tensor) else features[:len(self.strides)]
        maps = [f.float() for f in maps]  # the RoI ops run in fp32 (also under bf16 autocast)
        boxes = torch.cat(proposals)
        image_idx = torch.cat([torch.full_like(p[:, :1], i) for i, p in enumerate(proposals)])
        rois = torch.cat([image_idx, boxes], dim=1)
        if len(maps) == 1:
            return self._pool(maps[0], rois, self.strides[0])
        levels = self.map_levels(boxes)
        pooled = rois.new_zeros((rois.shape[0], maps[0].shape[1], self.size, self.size))
        for level, (feature, stride) in enumerate(zip(maps, self.strides, strict=True)):
            index = torch.nonzero(levels == level).squeeze(1)
            pooled[index] = self._pool(feature, rois[index], stride)
        return pooled
