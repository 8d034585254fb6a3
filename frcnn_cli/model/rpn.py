"""Region Proposal Network (Section 3.1): objectness and box deltas for k anchors per place.

Three parts, in the paper's order:

- :class:`RPNHead`: a 3x3 conv (512-d for VGG16) + ReLU, then two sibling 1x1 convs, ``2k``
  objectness scores (softmax over object / not object, as the paper) or ``k`` (sigmoid), and
  ``4k`` box deltas.
- anchor targets (Section 3.1.2): positive at IoU >= 0.7 with an object, or the best anchor of
  an object; negative below 0.3; anchors crossing the image border ignored, and anchors mostly
  inside an ignore region (crowd, tile cut); 256 sampled per image, up to half positive.
  Loss (Eq. 1): log loss / N_cls + lambda * smooth L1 / N_reg.
- the proposal layer: decode every anchor, clip to the image, drop boxes under the minimum
  size (and below ``rpn.score_thresh``), keep the pre-NMS top N, NMS, keep the post-NMS top
  N. All images in one NMS call. (:mod:`frcnn_cli.model.levels` proposes over the levels of a
  feature pyramid, and in torchvision's order.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from frcnn_cli.boxes import clip_boxes
from frcnn_cli.config import RPNConfig
from frcnn_cli.model.anchors import AnchorGrid, inside_image
from frcnn_cli.model.box_coder import BoxCoder, nms_per_image
from frcnn_cli.model.matching import Matcher, in_ignore_regions, sample_balanced
from frcnn_cli.model.precision import full_precision
from frcnn_cli.model.tracing import tracing


class RPNHead(nn.Module):
    """features [B, C, H, W] -> logits [B, H*W*k, 2 or 1], deltas [B, H*W*k, 4].

    Outputs are ordered place by place, k anchors per place, like :class:`AnchorGrid`. With
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


def objectness_score(logits: Tensor) -> Tensor:
    """logits [..., 2 or 1] -> one object-vs-not logit [...] (sigmoid of it = probability)."""
    if logits.shape[-1] == 2:
        return logits[..., 1] - logits[..., 0]  # softmax over 2 == sigmoid of the difference
    return logits[..., 0]


class RegionProposalNetwork(nn.Module):
    """The RPN: head, anchor targets and loss in training, proposals.

    ``forward(features, image_sizes, scales, targets=None, propose=True, pre_nms_top_n=None,
    post_nms_top_n=None, ignore=None)`` with features [B, C, H, W], image_sizes [B, 2]
    (height, width of each image inside the padded batch), scales [B] (each image's resize
    factor: proposals under ``rpn.min_size`` pixels of the input image are dropped), targets
    a list of [G_i, 4] object boxes (training), ignore a list of [M_i, 4] ignore regions (or
    None). The proposal counts default to the recipe's for the mode (training: 12000 -> 2000,
    test: 6000 -> 300). Returns (boxes list of [P_i, 4], scores list of [P_i] objectness
    probabilities, best first; losses dict, empty without targets).
    """

    def __init__(self, in_channels: int, anchors: AnchorGrid, cfg: RPNConfig) -> None:
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

    def forward(self, features: Tensor, image_sizes: Tensor, scales: Tensor,
                targets: list[Tensor] | None = None, propose: bool = True,
                pre_nms_top_n: int | None = None, post_nms_top_n: int | None = None,
                ignore: list[Tensor | None] | None = None
                ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        logits, deltas = self.head(features)
        anchors = self.anchors.grid(features.shape[-2], features.shape[-1], features.device)
        losses: dict[str, Tensor] = {}
        if targets is not None:
            losses = self.loss(logits, deltas, anchors, image_sizes, targets,
                               places=features.shape[-2] * features.shape[-1], ignore=ignore)
        boxes: list[Tensor] = []
        scores: list[Tensor] = []
        if propose:
            pre_n, post_n = self.proposal_counts(pre_nms_top_n, post_nms_top_n)
            boxes, scores = self.propose(anchors, objectness_score(logits.detach()),
                                         deltas.detach(), image_sizes, self.min_size * scales,
                                         pre_n, post_n)
        return boxes, scores, losses

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
                min_sizes: Tensor, pre_n: int, post_n: int) -> tuple[list[Tensor], list[Tensor]]:
        """anchors [A, 4], objectness [B, A] logits, deltas [B, A, 4] -> per image boxes
        [P_i, 4] and probabilities [P_i], best first: the ``pre_n`` best boxes of at least
        ``min_sizes`` [B] pixels, NMS, at most ``post_n`` survivors."""
        boxes = clip_boxes(self.box_coder.decode(deltas, anchors[None]), image_sizes[:, :1],
                           image_sizes[:, 1:])
        # As the original: drop small boxes first, then take the top N of the rest.
        drop = ((boxes[..., 2] - boxes[..., 0] < min_sizes[:, None])
                | (boxes[..., 3] - boxes[..., 1] < min_sizes[:, None]))
        if self.score_thresh > 0:
            drop |= torch.sigmoid(objectness) < self.score_thresh
        objectness = objectness.masked_fill(drop, float("-inf"))
        top, order = objectness.topk(torch.sym_min(pre_n, objectness.shape[1]), dim=1)
        boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))

        # Greedy NMS keeps a box iff no better kept box overlaps it, so once the best m
        # candidates of every image yield post_n survivors, those are the final ones: try a
        # short prefix first (exact, and much cheaper than NMS over all 6000).
        m = 4 * post_n
        if not tracing() and m <= top.shape[1] // 2:
            result = self._nms(boxes[:, :m], top[:, :m], post_n)
            if all(len(b) == post_n for b in result[0]):
                return result
        return self._nms(boxes, top, post_n)

    def _nms(self, boxes: Tensor, scores: Tensor, post_n: int) -> tuple[list[Tensor], list[Tensor]]:
        """boxes [B, n, 4], score logits [B, n] (-inf: dropped) -> per image NMS survivors
        (at most post_n) and their probabilities."""
        num_images = scores.shape[0]
        image_idx = torch.arange(num_images, device=boxes.device)[:, None].expand_as(scores)
        ok = torch.nonzero(torch.isfinite(scores).flatten()).squeeze(1)  # one device sync
        boxes = boxes.reshape(-1, 4)[ok]
        scores, image_idx = scores.flatten()[ok], image_idx.flatten()[ok]
        keeps = nms_per_image(boxes, scores, image_idx, self.nms_thresh, post_n, num_images)
        probs = torch.sigmoid(scores)
        return [boxes[k] for k in keeps], [probs[k] for k in keeps]
