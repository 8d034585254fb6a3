"""Region Proposal Network (Section 3.1): objectness and box deltas for k anchors per place.

Three parts, in the paper's order, over one map or every level of a feature pyramid:

- :class:`RPNHead`: a 3x3 conv (512-d for VGG16) + ReLU, then two sibling 1x1 convs, ``2k``
  objectness scores (softmax over object / not object, as the paper) or ``k`` (sigmoid), and
  ``4k`` box deltas; one head serves every level.
- anchor targets (Section 3.1.2): positive at IoU >= 0.7 with an object, or the best anchor of
  an object; negative below 0.3; anchors crossing the image border ignored, and anchors mostly
  inside an ignore region (crowd, tile cut); 256 sampled per image (all levels together), up to
  half positive. Loss (Eq. 1): log loss / N_cls + lambda * smooth L1 / N_reg.
- the proposal layer: decode every anchor, clip to the image, then ``rpn.proposal_filter``:
  "paper" (the original) drops boxes under the minimum size (and below ``rpn.score_thresh``)
  and keeps the pre-NMS top N of the rest; "torchvision" keeps the top N first, then drops
  (``filter_proposals``). On a pyramid the top N counts per level. Then NMS within each level
  and the post-NMS top N. The paper's setting (one map, its anchors and its filter) runs the
  original's layer: all images in one NMS call on the objectness logits, tried first on a short
  prefix of the candidates. Any other runs torchvision's: image by image, NMS within each level
  on the probabilities (which rank saturated scores as equal: the two orders differ there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from frcnn_cli.boxes import clip_boxes
from frcnn_cli.config import RPNConfig
from frcnn_cli.model.anchors import AnchorGenerator, inside_image
from frcnn_cli.model.box_coder import BoxCoder, nms_by_level, nms_per_image
from frcnn_cli.model.matching import Matcher, in_ignore_regions, sample_balanced
from frcnn_cli.model.precision import full_precision
from frcnn_cli.model.tracing import tracing


class RPNHead(nn.Module):
    """features [B, C, H, W] -> logits [B, H*W*k, 2 or 1], deltas [B, H*W*k, 4].

    Outputs are ordered place by place, k anchors per place, like :class:`AnchorGenerator`. With
    softmax, the 2k channels hold k "not object" then k "object" scores, the original layout.
    """

    def __init__(self, in_channels: int, channels: int, num_anchors: int,
                 objectness: str = "softmax", convs: int = 1) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.num_scores = 2 if objectness == "softmax" else 1
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        # further 3x3 conv + ReLU layers (torchvision's v2 FPN detector has 2 in all)
        self.extra_convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1)
                                         for _ in range(convs - 1))
        self.cls_logits = nn.Conv2d(channels, num_anchors * self.num_scores, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)
        for layer in (self.conv, *self.extra_convs, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)  # the original's gaussian fillers
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.conv(features))
        for conv in self.extra_convs:
            x = F.relu(conv(x))
        b, _, h, w = x.shape
        k = self.num_anchors
        with full_precision(x):  # objectness and deltas in fp32 under autocast too
            x = x.float()
            logits = self.cls_logits(x).reshape(b, self.num_scores, k, h, w)
            deltas = self.bbox_pred(x).reshape(b, k, 4, h, w)
        return (logits.permute(0, 3, 4, 2, 1).reshape(b, h * w * k, self.num_scores),
                deltas.permute(0, 3, 4, 1, 2).reshape(b, h * w * k, 4))


def paper_proposal_layer(anchors: AnchorGenerator, cfg: RPNConfig) -> bool:
    """Do these anchors and RPN settings make the original's proposal layer (module doc)?"""
    return (len(anchors.strides) == 1 and anchors.style == "paper"
            and cfg.proposal_filter == "paper")


def objectness_score(logits: Tensor) -> Tensor:
    """logits [..., 2 or 1] -> one object-vs-not logit [...] (sigmoid of it = probability)."""
    if logits.shape[-1] == 2:
        return logits[..., 1] - logits[..., 0]  # softmax over 2 == sigmoid of the difference
    return logits[..., 0]


class RegionProposalNetwork(nn.Module):
    """The RPN: head, anchor targets and loss in training, proposals.

    ``forward(features, image_sizes, scales, targets=None, propose=True, pre_nms_top_n=None,
    post_nms_top_n=None, ignore=None)`` with features one map [B, C, H, W] or a list of level
    maps (finest first), image_sizes [B, 2] (height, width of each image inside the padded
    batch), scales [B] (each image's resize factor: with the paper's filter, proposals under
    ``rpn.min_size`` pixels of the input image are dropped), targets a list of [G_i, 4] object
    boxes (training), ignore a list of [M_i, 4] ignore regions (or None). The proposal counts
    default to the recipe's for the mode (training: 12000 -> 2000, test: 6000 -> 300). Returns
    (boxes list of [P_i, 4], scores list of [P_i] objectness probabilities, best first; losses
    dict, empty without targets). ``size_divisible``: the transform's padding, from which
    torchvision's anchors take their strides.
    """

    def __init__(self, in_channels: int, anchors: AnchorGenerator, cfg: RPNConfig,
                 size_divisible: int) -> None:
        super().__init__()
        self.anchors = anchors
        self.head = RPNHead(in_channels, cfg.channels, anchors.num_anchors, cfg.objectness,
                            cfg.convs)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(cfg.fg_iou_thresh, cfg.bg_iou_thresh, 0.0,
                               best_for_each_object=True)
        self.batch_size_per_image = cfg.batch_size_per_image
        self.positive_fraction = cfg.positive_fraction
        self.allowed_border = cfg.allowed_border
        self.loss_norm = cfg.loss_norm
        self.box_loss_weight = cfg.box_loss_weight
        self.smooth_l1_beta = cfg.smooth_l1_beta
        self.pre_nms_top_n_train = cfg.pre_nms_top_n_train
        self.post_nms_top_n_train = cfg.post_nms_top_n_train
        self.pre_nms_top_n_test = cfg.pre_nms_top_n_test
        self.post_nms_top_n_test = cfg.post_nms_top_n_test
        self.nms_thresh = cfg.nms_thresh
        self.min_size = cfg.min_size
        self.score_thresh = cfg.score_thresh
        self.torchvision_filter = cfg.proposal_filter == "torchvision"
        self.paper_layer = paper_proposal_layer(anchors, cfg)
        self.size_divisible = size_divisible

    def forward(self, features: Tensor | list[Tensor], image_sizes: Tensor, scales: Tensor,
                targets: list[Tensor] | None = None, propose: bool = True,
                pre_nms_top_n: int | None = None, post_nms_top_n: int | None = None,
                ignore: list[Tensor | None] | None = None
                ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        maps = [features] if isinstance(features, Tensor) else list(features)
        logits, deltas = self.predict(maps)
        map_sizes = [m.shape[-2:] for m in maps]
        padded = self.padded_size(image_sizes) if self.anchors.style == "torchvision" else None
        anchors = self.anchors.grid(map_sizes, padded, maps[0].device)
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
            boxes, scores = self.propose(anchors, objectness_score(logits.detach()),
                                         deltas.detach(), image_sizes, min_sizes, counts,
                                         pre_n, post_n)
        return boxes, scores, losses

    def predict(self, maps: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The head on every level: logits [B, A, 2 or 1] and deltas [B, A, 4], level by
        level, as the anchors."""
        if len(maps) == 1:
            return self.head(maps[0])
        outputs = [self.head(m) for m in maps]
        return (torch.cat([o[0] for o in outputs], dim=1).float(),
                torch.cat([o[1] for o in outputs], dim=1).float())

    def padded_size(self, image_sizes: Tensor) -> Tensor:
        """[2]: the batch's padded (height, width), as the transform pads."""
        d = self.size_divisible
        return (image_sizes.max(dim=0).values + d - 1) // d * d

    def proposal_counts(self, pre_nms_top_n: int | None, post_nms_top_n: int | None
                        ) -> tuple[int, int]:
        """Boxes kept before and after NMS: the arguments, or the recipe's for training or
        test, whichever mode the module is in."""
        if self.training:
            pre_n, post_n = self.pre_nms_top_n_train, self.post_nms_top_n_train
        else:
            pre_n, post_n = self.pre_nms_top_n_test, self.post_nms_top_n_test
        return pre_nms_top_n or pre_n, post_nms_top_n or post_n

    # ------------------------------------------------------------------ anchor targets and loss

    def anchor_targets(self, anchors: Tensor, image_size: Tensor, objects: Tensor,
                       ignore: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Label and sample the anchors [A, 4] of one image of size (h, w) with objects [G, 4]
        and ignore regions [M, 4] (anchors mostly inside one take no part).

        Returns sampled positive indices [P], negative indices [M], and the positives'
        regression targets [P, 4].
        """
        valid = inside_image(anchors, image_size[0], image_size[1], self.allowed_border)
        valid &= ~in_ignore_regions(anchors, ignore)
        labels, matched = self.matcher(box_iou(objects, anchors), valid)
        pos, neg = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
        return pos, neg, self.box_coder.encode(objects[matched[pos]], anchors[pos])

    def loss(self, logits: Tensor, deltas: Tensor, anchors: Tensor, image_sizes: Tensor,
             targets: list[Tensor], places: int,
             ignore: list[Tensor | None] | None = None) -> dict[str, Tensor]:
        """Eq. 1 over the batch. ``places``: anchor places per image (N_reg of the paper)."""
        num_anchors = len(anchors)
        pos_all, neg_all, box_targets = [], [], []
        for i, objects in enumerate(targets):
            pos, neg, t = self.anchor_targets(anchors, image_sizes[i], objects,
                                              ignore[i] if ignore is not None else None)
            pos_all.append(pos + i * num_anchors)
            neg_all.append(neg + i * num_anchors)
            box_targets.append(t)
        pos, neg = torch.cat(pos_all), torch.cat(neg_all)
        sampled = torch.cat([pos, neg])
        labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
        logits = logits.reshape(-1, logits.shape[-1])[sampled]
        if logits.shape[-1] == 2:
            cls = F.cross_entropy(logits, labels, reduction="sum")
        else:
            cls = F.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype),
                                                     reduction="sum")
        box = F.smooth_l1_loss(deltas.reshape(-1, 4)[pos], torch.cat(box_targets),
                               beta=self.smooth_l1_beta, reduction="sum")
        num_sampled = max(len(sampled), 1)
        if self.loss_norm == "paper":  # lambda = 10, N_reg = anchor places (~2400 at 600 px)
            box = self.box_loss_weight * box / (places * len(targets))
        else:  # torchvision / detectron: both terms over the sampled anchors
            box = box / num_sampled
        return {"loss_rpn_cls": cls / num_sampled, "loss_rpn_box": box}

    # ------------------------------------------------------------------ proposal layer

    def propose(self, anchors: Tensor, objectness: Tensor, deltas: Tensor, image_sizes: Tensor,
                min_sizes: Tensor, counts: list[int], pre_n: int, post_n: int
                ) -> tuple[list[Tensor], list[Tensor]]:
        """anchors [A, 4], objectness [B, A] logits, deltas [B, A, 4], ``counts`` anchors per
        level -> per image boxes [P_i, 4] and probabilities [P_i], best first: boxes of at
        least ``min_sizes`` [B] pixels, the ``pre_n`` best of each level, NMS, at most
        ``post_n`` survivors (the order of the filter and the NMS: module doc)."""
        if not self.torchvision_filter:  # the original's order: drop first, then the top N
            boxes = self.box_coder.decode(deltas, anchors[None])
            boxes = clip_boxes(boxes, image_sizes[:, :1], image_sizes[:, 1:])
            objectness = objectness.masked_fill(self._dropped(boxes, objectness, min_sizes),
                                                float("-inf"))
        top, order, levels = self._top_n(objectness, counts, pre_n)
        if self.torchvision_filter:  # torchvision's: the top N, then drop
            picked = deltas.gather(1, order[..., None].expand(-1, -1, 4))
            boxes = self.box_coder.decode(picked, anchors[order])
            boxes = clip_boxes(boxes, image_sizes[:, :1], image_sizes[:, 1:])
            top = top.masked_fill(self._dropped(boxes, top, min_sizes), float("-inf"))
        else:
            boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        if self.paper_layer:
            return self._nms_prefix(boxes, top, post_n)
        return self._nms_by_level(boxes, top, levels, len(counts), post_n)

    def _dropped(self, boxes: Tensor, logits: Tensor, min_sizes: Tensor) -> Tensor:
        """[B, n] bool: boxes [B, n, 4] under ``min_sizes`` [B] or below ``rpn.score_thresh``."""
        drop = ((boxes[..., 2] - boxes[..., 0] < min_sizes[:, None])
                | (boxes[..., 3] - boxes[..., 1] < min_sizes[:, None]))
        if self.score_thresh > 0:
            drop |= torch.sigmoid(logits) < self.score_thresh
        return drop

    @staticmethod
    def _top_n(objectness: Tensor, counts: list[int], pre_n: int
               ) -> tuple[Tensor, Tensor, Tensor]:
        """The ``pre_n`` best logits [B, n] of each level, best first within a level, their
        anchors' indices [B, n] and levels [n]."""
        if len(counts) == 1:
            top, order = objectness.topk(torch.sym_min(pre_n, objectness.shape[1]), dim=1)
            return top, order, torch.zeros_like(order[0])
        order, levels, start = [], [], 0
        for level, n in enumerate(counts):
            k = torch.sym_min(pre_n, n)
            order.append(objectness[:, start:start + n].topk(k, dim=1).indices + start)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=objectness.device))
            start = start + n
        order = torch.cat(order, dim=1)
        return objectness.gather(1, order), order, torch.cat(levels)

    def _nms_prefix(self, boxes: Tensor, top: Tensor, post_n: int
                    ) -> tuple[list[Tensor], list[Tensor]]:
        """:meth:`_nms` of the best-first candidates [B, n, 4], first on a prefix.

        Greedy NMS keeps a box iff no better kept box overlaps it, so once the best m
        candidates of every image yield post_n survivors, those are the final ones: try a
        short prefix first (exact, and much cheaper than NMS over all 6000)."""
        m = 4 * post_n
        if not tracing() and m <= top.shape[1] // 2:
            result = self._nms(boxes[:, :m], top[:, :m], post_n)
            if all(len(b) == post_n for b in result[0]):
                return result
        return self._nms(boxes, top, post_n)

    def _nms(self, boxes: Tensor, scores: Tensor, post_n: int) -> tuple[list[Tensor], list[Tensor]]:
        """boxes [B, n, 4], score logits [B, n] (-inf: dropped) -> per image NMS survivors
        (at most post_n) and their probabilities, all images in one NMS call."""
        num_images = scores.shape[0]
        image_idx = torch.arange(num_images, device=boxes.device)[:, None].expand_as(scores)
        ok = torch.nonzero(torch.isfinite(scores).flatten()).squeeze(1)  # one device sync
        boxes = boxes.reshape(-1, 4)[ok]
        scores, image_idx = scores.flatten()[ok], image_idx.flatten()[ok]
        keeps = nms_per_image(boxes, scores, image_idx, self.nms_thresh, post_n, num_images)
        probs = torch.sigmoid(scores)
        return [boxes[k] for k in keeps], [probs[k] for k in keeps]

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
