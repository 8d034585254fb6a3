"""Anchors, proposals and RoI pooling over several feature maps: the levels of a feature pyramid
(Lin et al. 2017, Sections 4.1 and 4.2), as torchvision's ``FasterRCNN`` runs them.

- :class:`LevelAnchors`: each level's base anchors (one size per level, or every size on every
  level) shifted over its map, all levels in one list, finest first.
- :class:`LevelRPN`: the paper's RPN with one head shared by the levels. Anchor targets and
  loss are the paper's, over all levels' anchors together. Proposals: the pre-NMS top N of each
  level, NMS within each level, then the image's post-NMS top N.
- :class:`LevelRoIHeads`: the paper's detection head, each RoI pooled from the level that fits
  its size (FPN Eq. 1): ``k = floor(4 + log2(sqrt(w h) / 224))``, clamped to the pooled levels.

A single-map backbone whose recipe asks for torchvision's anchors or proposal order
(``anchors.style``, ``rpn.proposal_filter``) runs as one level of this module, so the same
switches reproduce torchvision's behaviour on every backbone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, nms, roi_align, roi_pool

from frcnn_cli.boxes import clip_boxes
from frcnn_cli.config import Recipe, RPNConfig
from frcnn_cli.errors import RecipeError
from frcnn_cli.model.anchors import generate_anchors, to_continuous, torchvision_anchors
from frcnn_cli.model.backbones import is_pyramid, level_strides
from frcnn_cli.model.fpn import PyramidBackbone
from frcnn_cli.model.roi_heads import RoIHeads
from frcnn_cli.model.rpn import RegionProposalNetwork, objectness_score
from frcnn_cli.model.tracing import tracing

# FPN Eq. 1: a 224 x 224 RoI (ImageNet's size) is pooled from level k0 = 4.
CANONICAL_SIZE, CANONICAL_LEVEL = 224, 4
LEVEL_EPS = 1e-6  # torchvision's LevelMapper: sizes that are exact powers of 2 stay up


def uses_levels(recipe: Recipe) -> bool:
    """Does this recipe's model run its RPN through this module?"""
    return (is_pyramid(recipe.model.backbone) or recipe.anchors.style == "torchvision"
            or recipe.rpn.proposal_filter == "torchvision")


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


def level_anchor_table(recipe: Recipe) -> list[dict]:
    """Every level's anchors at its first place (the cell at row 0, column 0), in the RPN's
    order: ``[{"level", "stride", "ratio", "size", "box"}]``, box x1 y1 x2 y2 continuous."""
    strides, names = level_strides(recipe)
    anchors = LevelAnchors.from_recipe(recipe, strides)
    sizes = level_anchor_sizes(recipe, None if strides is None else len(strides))
    rows = []
    for name, stride, level_sizes, base in zip(names, anchors.strides, sizes, anchors.bases,
                                               strict=True):
        for i, box in enumerate(base.tolist()):
            rows.append({"level": name, "stride": stride,
                         "ratio": recipe.anchors.ratios[i // len(level_sizes)],
                         "size": level_sizes[i % len(level_sizes)], "box": box})
    return rows


class LevelAnchors:
    """Anchors over the maps of several levels.

    ``grid(map_sizes, image_sizes, size_divisible, device)`` returns [A, 4] float32 continuous
    boxes in network pixels: level by level, within a level place by place (row-major), k
    anchors per place. ``style`` "paper": the original's base anchors with the level's stride
    as the base size, on the cell centres; "torchvision": torchvision's, on the cells'
    top-left corners, with torchvision's stride (padded image size // map size, per axis).
    """

    def __init__(self, strides: Sequence[int], bases: Sequence[Tensor], style: str) -> None:
        if len({len(b) for b in bases}) != 1:
            raise RecipeError("every level needs the same number of anchors per place (one "
                              "RPN head serves them all)")
        self.strides, self.bases, self.style = tuple(strides), list(bases), style
        self._cache: dict[tuple, Tensor] = {}

    @classmethod
    def from_recipe(cls, recipe: Recipe, strides: Sequence[int] | None = None) -> LevelAnchors:
        """A pyramid's anchors (its ``strides``), or a single map's (None: ``anchors.stride``,
        base size and scales, as :class:`~frcnn_cli.model.anchors.AnchorGrid`)."""
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
        cache = not tracing()
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
        anchors = torch.cat(out)
        if cache:
            self._cache[key] = anchors
        return anchors


class LevelRPN(RegionProposalNetwork):
    """The RPN over the maps of several levels (one map is one level).

    ``forward(features, image_sizes, scales, targets=None, propose=True, pre_nms_top_n=None,
    post_nms_top_n=None, ignore=None)`` as :class:`~frcnn_cli.model.rpn.RegionProposalNetwork`,
    with
    ``features`` a list of [B, C, H_l, W_l] maps (or one map); the pre-NMS top N counts per
    level. Proposal scores are objectness probabilities.
    """

    def __init__(self, in_channels: int, anchors: LevelAnchors, cfg: RPNConfig,
                 size_divisible: int) -> None:
        super().__init__(in_channels, anchors, cfg)
        self.size_divisible = size_divisible
        self.torchvision_filter = cfg.proposal_filter == "torchvision"

    def padded_size(self, image_sizes: Tensor) -> Tensor:
        """[2]: the batch's padded (height, width), as the transform pads."""
        d = self.size_divisible
        return (image_sizes.max(dim=0).values + d - 1) // d * d

    def forward(self, features: Tensor | list[Tensor], image_sizes: Tensor, scales: Tensor,
                targets: list[Tensor] | None = None, propose: bool = True,
                pre_nms_top_n: int | None = None, post_nms_top_n: int | None = None,
                ignore: list[Tensor | None] | None = None
                ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        maps = [features] if isinstance(features, Tensor) else list(features)
        outputs = [self.head(m) for m in maps]
        logits = torch.cat([o[0] for o in outputs], dim=1).float()
        deltas = torch.cat([o[1] for o in outputs], dim=1).float()
        map_sizes = [m.shape[-2:] for m in maps]
        anchors = self.anchors.grid(map_sizes, self.padded_size(image_sizes), maps[0].device)
        losses: dict[str, Tensor] = {}
        if targets is not None:
            places = sum(h * w for h, w in map_sizes)
            losses = self.loss(logits, deltas, anchors, image_sizes, targets, places=places,
                               ignore=ignore)
        boxes: list[Tensor] = []
        scores: list[Tensor] = []
        if propose:
            pre_n, post_n = self.proposal_counts(pre_nms_top_n, post_nms_top_n)
            counts = [h * w * self.anchors.num_anchors for h, w in map_sizes]
            min_sizes = torch.full_like(scales, self.min_size) if self.torchvision_filter \
                else self.min_size * scales
            boxes, scores = self.propose_levels(
                anchors, objectness_score(logits.detach()), deltas.detach(), image_sizes,
                min_sizes, counts, pre_n, post_n)
        return boxes, scores, losses

    def _dropped(self, boxes: Tensor, logits: Tensor, min_sizes: Tensor) -> Tensor:
        """[B, n] bool: boxes [B, n, 4] under ``min_sizes`` [B] or below ``rpn.score_thresh``."""
        drop = ((boxes[..., 2] - boxes[..., 0] < min_sizes[:, None])
                | (boxes[..., 3] - boxes[..., 1] < min_sizes[:, None]))
        if self.score_thresh > 0:
            drop |= torch.sigmoid(logits) < self.score_thresh
        return drop

    def propose_levels(self, anchors: Tensor, objectness: Tensor, deltas: Tensor,
                       image_sizes: Tensor, min_sizes: Tensor, counts: Sequence[int],
                       pre_n: int, post_n: int) -> tuple[list[Tensor], list[Tensor]]:
        """anchors [A, 4], objectness [B, A] logits, deltas [B, A, 4], ``counts`` anchors per
        level -> per image boxes [P_i, 4] and probabilities [P_i], best first."""
        if not self.torchvision_filter:  # the original's order: drop first, then the top N
            boxes = clip_boxes(self.box_coder.decode(deltas, anchors[None]), image_sizes[:, :1],
                               image_sizes[:, 1:])
            objectness = objectness.masked_fill(
                self._dropped(boxes, objectness, min_sizes), float("-inf"))
        order, levels, start = [], [], 0
        for level, n in enumerate(counts):
            k = torch.sym_min(pre_n, n)
            order.append(objectness[:, start:start + n].topk(k, dim=1).indices + start)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=anchors.device))
            start = start + n
        order, levels = torch.cat(order, dim=1), torch.cat(levels)
        top = objectness.gather(1, order)
        if self.torchvision_filter:  # torchvision's: the top N, then drop
            picked = deltas.gather(1, order[..., None].expand(-1, -1, 4))
            boxes = clip_boxes(self.box_coder.decode(picked, anchors[order]), image_sizes[:, :1],
                               image_sizes[:, 1:])
            top = top.masked_fill(self._dropped(boxes, top, min_sizes), float("-inf"))
        else:
            boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        return self._nms_by_level(boxes, top, levels, len(counts), post_n)

    def _nms_by_level(self, boxes: Tensor, logits: Tensor, levels: Tensor, num_levels: int,
                      post_n: int) -> tuple[list[Tensor], list[Tensor]]:
        """boxes [B, n, 4], logits [B, n] (-inf: dropped), levels [n] -> per image, NMS
        within each level on the probabilities, then the ``post_n`` best survivors and their
        probabilities. One image at a time, as torchvision's ``filter_proposals``."""
        out_boxes, out_scores = [], []
        for b in range(logits.shape[0]):
            ok = torch.nonzero(torch.isfinite(logits[b])).squeeze(1)
            kept, probs = boxes[b, ok], torch.sigmoid(logits[b, ok])
            keep = nms_by_level(kept, probs, levels[ok], self.nms_thresh, num_levels)[:post_n]
            out_boxes.append(kept[keep])
            out_scores.append(probs[keep])
        return out_boxes, out_scores


def nms_by_level(boxes: Tensor, scores: Tensor, levels: Tensor, iou_thresh: float,
                 num_levels: int) -> Tensor:
    """Indices of the boxes [N, 4] that survive NMS within their level [N], best score first.

    torchvision's ``batched_nms`` itself in eager mode. Traced (export), its per-level form
    with the same sort (what ``batched_nms`` runs for more than 1000 boxes; for fewer it
    shifts each level's boxes apart instead, which can round an IoU at the threshold
    differently). Boxes of equal score are ordered as that sort leaves them."""
    if not tracing():
        return batched_nms(boxes, scores, levels, iou_thresh)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for level in range(num_levels):
        index = torch.nonzero(levels == level).squeeze(1)
        keep[index[nms(boxes[index], scores[index], iou_thresh)]] = True
    index = torch.nonzero(keep).squeeze(1)
    return index[scores[index].sort(descending=True).indices]


class LevelRoIHeads(RoIHeads):
    """The detection head on RoIs pooled from several levels (``strides``, finest first):
    RoIAlign as torchvision's ``MultiScaleRoIAlign`` (2 samples per bin, aligned=False) or
    RoI max pooling."""

    def __init__(self, box_head: nn.Module, head_channels: int, num_classes: int, cfg,
                 roi_op: str, roi_size: int, strides: Sequence[int]) -> None:
        super().__init__(box_head, head_channels, num_classes, cfg, roi_op, roi_size,
                         strides[0])
        self.strides = tuple(strides)
        self.k_min = int(math.log2(strides[0]))
        self.k_max = int(math.log2(strides[-1]))

    def map_levels(self, boxes: Tensor) -> Tensor:
        """[R] level index (0 = the finest pooled level) of boxes [R, 4], by FPN Eq. 1."""
        size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        k = torch.floor(CANONICAL_LEVEL + torch.log2(size / CANONICAL_SIZE)
                        + torch.tensor(LEVEL_EPS, dtype=size.dtype))
        return k.clamp(min=self.k_min, max=self.k_max).to(torch.int64) - self.k_min

    def _pool_level(self, feature: Tensor, rois: Tensor, stride: int) -> Tensor:
        if self.roi_op == "pool":  # inclusive x2, y2, as RoIHeads.pool explains
            return roi_pool(feature, rois - rois.new_tensor([0, 0, 0, 1, 1]), self.roi_size,
                            1.0 / stride)
        return roi_align(feature, rois, self.roi_size, 1.0 / stride, sampling_ratio=2)

    def pool(self, features: list[Tensor], proposals: list[Tensor]) -> Tensor:
        """RoI features [R, C, s, s] of the proposals (all images, in order)."""
        maps = [f.float() for f in features[:len(self.strides)]]
        boxes = torch.cat(proposals)
        image_idx = torch.cat([torch.full_like(p[:, :1], i) for i, p in enumerate(proposals)])
        rois = torch.cat([image_idx, boxes], dim=1)
        if len(maps) == 1:
            return self._pool_level(maps[0], rois, self.strides[0])
        levels = self.map_levels(boxes)
        pooled = rois.new_zeros((rois.shape[0], maps[0].shape[1], self.roi_size, self.roi_size))
        for level, (feature, stride) in enumerate(zip(maps, self.strides, strict=True)):
            index = torch.nonzero(levels == level).squeeze(1)
            pooled[index] = self._pool_level(feature, rois[index], stride)
        return pooled


def level_heads(recipe: Recipe, parts, num_classes: int) -> tuple[LevelRPN, RoIHeads]:
    """The RPN and detection head of a model whose RPN runs through this module."""
    m, backbone = recipe.model, parts.backbone
    if isinstance(backbone, PyramidBackbone):
        anchors = LevelAnchors.from_recipe(recipe, backbone.strides)
        pooled = backbone.strides[:backbone.pooled_levels]
        roi_heads: RoIHeads = LevelRoIHeads(parts.box_head, parts.head_channels, num_classes,
                                            recipe.roi_heads, m.roi_op, m.roi_size, pooled)
    else:
        anchors = LevelAnchors.from_recipe(recipe)
        if recipe.anchors.stride != backbone.stride:
            raise RecipeError(f"anchors.stride is {recipe.anchors.stride} but the {m.backbone} "
                              f"backbone has stride {backbone.stride}")
        roi_heads = RoIHeads(parts.box_head, parts.head_channels, num_classes,
                             recipe.roi_heads, m.roi_op, m.roi_size, backbone.stride)
    rpn = LevelRPN(backbone.out_channels, anchors, recipe.rpn, recipe.input.size_divisible)
    return rpn, roi_heads
