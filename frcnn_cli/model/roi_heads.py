"""The detection head (Section 3.2: a Fast R-CNN detector on the RPN's proposals).

In the paper's order:

- proposal targets (training): the ground truth joins the proposals; each is labelled by its
  best IoU with an object (foreground >= 0.5, background in [bg_lo, 0.5)), those mostly inside
  an ignore region (crowd, tile cut) left out; 128 are sampled per image, at most 25 %
  foreground, with class labels and box targets normalised by stds.
- RoI pooling (:mod:`frcnn_cli.model.poolers`): each RoI becomes a 7 x 7 grid of the shared
  conv map (max pooling at 1/16, the paper), or RoIAlign as an option; on a feature pyramid,
  of the level that fits its size.
- the box head: fc6/fc7 (VGG16, tiny, FPN) or res5 + average pool (ResNet C4, MobileNet),
  from :mod:`frcnn_cli.model.box_heads`, then sibling layers: K + 1 class scores and
  class-specific box deltas.
- loss: log loss over the sampled RoIs + smooth L1 on the foreground's deltas for its class.
- postprocess (test): class probabilities, decoded and clipped boxes, score >= 0.05 (and
  boxes of at least ``roi_heads.min_size``), NMS 0.3 per class, at most 100 detections per
  image; all images and classes in one NMS call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from frcnn_cli.boxes import clip_boxes
from frcnn_cli.config import RoIHeadsConfig
from frcnn_cli.model.box_coder import BoxCoder, nms_per_image
from frcnn_cli.model.matching import Matcher, in_ignore_regions, sample_balanced
from frcnn_cli.model.poolers import RoIPooler
from frcnn_cli.model.precision import full_precision


class RoIHeads(nn.Module):
    """``forward(features, proposals, image_sizes, targets=None, score_thresh=None,
    detections_per_img=None)``.

    ``box_roi_pool`` pools each RoI from ``features`` (one map [B, C, H, W], or a pyramid's
    list of maps), ``box_head`` turns it into a [head_channels] vector, and the class scores
    and box deltas read that. proposals list of [P_i, 4] boxes in network pixels; image_sizes
    [B, 2] (height, width); targets (training) list of dicts with ``boxes`` [G_i, 4],
    ``labels`` [G_i] in 1..K and optionally ``ignore`` [M_i, 4] (ignore regions). Returns
    (detections, losses): in training ``([], losses)``; otherwise one dict per image with
    ``boxes`` [D, 4], ``scores`` [D], ``labels`` [D]. The test-time limits default to the
    recipe's (score >= 0.05, 100 per image).
    """

    def __init__(self, box_roi_pool: RoIPooler, box_head: nn.Module, head_channels: int,
                 num_classes: int, cfg: RoIHeadsConfig) -> None:
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.cls_score = nn.Linear(head_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(head_channels, 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)  # the original's fillers
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.num_classes = num_classes
        self.box_coder = BoxCoder.from_stds(cfg.box_stds)
        self.matcher = Matcher(cfg.fg_iou_thresh, cfg.bg_iou_thresh_hi, cfg.bg_iou_thresh_lo)
        self.batch_size_per_image = cfg.batch_size_per_image
        self.positive_fraction = cfg.positive_fraction
        self.add_gt_as_proposals = cfg.add_gt_as_proposals
        self.smooth_l1_beta = cfg.smooth_l1_beta
        self.score_thresh = cfg.score_thresh
        self.nms_thresh = cfg.nms_thresh
        self.detections_per_img = cfg.detections_per_img
        self.min_size = cfg.min_size

    def forward(self, features: Tensor | list[Tensor], proposals: list[Tensor],
                image_sizes: Tensor, targets: list[dict[str, Tensor]] | None = None,
                score_thresh: float | None = None, detections_per_img: int | None = None
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if targets is not None:
            proposals, labels, box_targets = self.proposal_targets(proposals, targets)
        class_logits, deltas = self.classify(features, proposals)
        if targets is not None:
            return [], self.loss(class_logits, deltas, labels, box_targets)
        return self.postprocess(class_logits, deltas, proposals, image_sizes, score_thresh,
                                detections_per_img), {}

    # ------------------------------------------------------------------ proposal targets

    def proposal_targets(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
                         ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Sample RoIs and their targets. Returns per-image RoIs [R_i, 4] (positives first),
        class labels [R] (0 = background) and box targets [R_fg, 4] of the positives."""
        rois, labels, box_targets = [], [], []
        for props, target in zip(proposals, targets, strict=True):
            objects, classes = target["boxes"], target["labels"]
            if self.add_gt_as_proposals:
                props = torch.cat([props, objects.to(props.dtype)])
            valid = ~in_ignore_regions(props, target.get("ignore"))
            iou_labels, matched = self.matcher(box_iou(objects, props), valid)
            pos, neg = sample_balanced(iou_labels, self.batch_size_per_image,
                                       self.positive_fraction)
            roi_labels = classes.new_zeros(len(pos) + len(neg))
            roi_labels[:len(pos)] = classes[matched[pos]]
            rois.append(torch.cat([props[pos], props[neg]]))
            labels.append(roi_labels)
            box_targets.append(self.box_coder.encode(objects[matched[pos]], props[pos]))
        return rois, torch.cat(labels), torch.cat(box_targets)

    # ------------------------------------------------------------------ RoI pooling and head

    def map_levels(self, boxes: Tensor) -> Tensor:
        """[R] the pyramid level (0 = the finest pooled) each RoI [R, 4] is pooled from."""
        return self.box_roi_pool.map_levels(boxes)

    def classify(self, features: Tensor | list[Tensor], proposals: list[Tensor]
                 ) -> tuple[Tensor, Tensor]:
        """Class logits [R, K + 1] and deltas [R, K + 1, 4] for the proposals."""
        x = self.box_head(self.box_roi_pool(features, proposals))
        with full_precision(x):  # class scores and deltas in fp32 under autocast too
            x = x.float()
            deltas = self.bbox_pred(x).reshape(-1, self.num_classes + 1, 4)
            return self.cls_score(x), deltas

    def loss(self, class_logits: Tensor, deltas: Tensor, labels: Tensor,
             box_targets: Tensor) -> dict[str, Tensor]:
        """Multi-task loss over the sampled RoIs (an image without RoIs adds nothing)."""
        num = max(len(labels), 1)
        fg = torch.nonzero(labels > 0).squeeze(1)  # in the order of box_targets
        box = F.smooth_l1_loss(deltas[fg, labels[fg]], box_targets, beta=self.smooth_l1_beta,
                               reduction="sum")
        return {"loss_det_cls": F.cross_entropy(class_logits, labels, reduction="sum") / num,
                "loss_det_box": box / num}

    # ------------------------------------------------------------------ postprocess

    def postprocess(self, class_logits: Tensor, deltas: Tensor, proposals: list[Tensor],
                    image_sizes: Tensor, score_thresh: float | None = None,
                    detections_per_img: int | None = None) -> list[dict[str, Tensor]]:
        """Detections per image: boxes [D, 4] (network pixels), scores [D] at least
        ``score_thresh``, labels [D]; at most ``detections_per_img``, best first (None: the
        recipe's)."""
        if score_thresh is None:
            score_thresh = self.score_thresh
        detections_per_img = detections_per_img or self.detections_per_img
        num_images, k = len(proposals), self.num_classes
        image_idx = torch.cat([torch.full_like(p[:, 0], i, dtype=torch.int64)
                               for i, p in enumerate(proposals)])
        scores = F.softmax(class_logits, dim=-1)[:, 1:]  # [R, K], background dropped
        boxes = self.box_coder.decode(deltas[:, 1:], torch.cat(proposals)[:, None])  # [R, K, 4]
        sizes = image_sizes[image_idx]
        boxes = clip_boxes(boxes, sizes[:, :1], sizes[:, 1:])
        labels = torch.arange(1, k + 1, device=boxes.device).expand(boxes.shape[0], k)
        image_idx = image_idx[:, None].expand(-1, k)

        boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
        labels, image_idx = labels.reshape(-1), image_idx.reshape(-1)
        ok = scores >= score_thresh
        if self.min_size > 0:  # torchvision drops (nearly) empty boxes
            ok &= ((boxes[:, 2] - boxes[:, 0] >= self.min_size)
                   & (boxes[:, 3] - boxes[:, 1] >= self.min_size))
        ok = torch.nonzero(ok).squeeze(1)  # one device sync, not four
        boxes, scores, labels, image_idx = boxes[ok], scores[ok], labels[ok], image_idx[ok]
        keeps = nms_per_image(boxes, scores, image_idx, self.nms_thresh, detections_per_img,
                              num_images, labels, k + 1)
        return [{"boxes": boxes[i], "scores": scores[i], "labels": labels[i]} for i in keeps]
