"""torchvision's own ``FasterRCNN`` built to a recipe's settings: the yardstick for speed.

Same shared convs (built by :mod:`frcnn_cli.model.backbones`), same head on RoIs (fc6/fc7 as
torchvision's own ``TwoMLPHead``; ResNet's res5 as ours), same anchors, image scale, proposal
counts, NMS thresholds, RoI op and test-time limits; the detection machinery around them and
the memory format (NCHW, torchvision's default) are torchvision's.
Used by ``benchmarks/speed_vs_torchvision.py`` and ``frcnn benchmark --compare torchvision``.
The remaining differences are torchvision's design: k sigmoid objectness scores, a 1e-3 px
minimum proposal size, and the RPN conv as wide as the backbone's output. For an FPN backbone
the levels are frcnn's pyramid (the same modules torchvision builds), handed over as the
``OrderedDict`` torchvision reads; anchors per level, proposals per level and
``MultiScaleRoIAlign`` are torchvision's.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import AnchorGenerator, RPNHead
from torchvision.ops import MultiScaleRoIAlign, roi_align, roi_pool

from frcnn_cli.config import Recipe
from frcnn_cli.model.anchors import level_anchor_sizes
from frcnn_cli.model.backbones import build_backbone, is_pyramid
from frcnn_cli.model.box_heads import FCHead


class SingleMapRoIPool(MultiScaleRoIAlign):
    """torchvision's ``box_roi_pool`` over one feature map: RoI max pooling (the paper) or
    RoIAlign, as the recipe's ``model.roi_op`` says. (A MultiScaleRoIAlign subclass, the only
    type FasterRCNN accepts there.)"""

    def __init__(self, op: str, size: int, spatial_scale: float) -> None:
        super().__init__(["0"], size, sampling_ratio=0)
        self.op, self.size, self.spatial_scale = op, size, spatial_scale

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        x = features["0"]
        if self.op == "pool":
            return roi_pool(x, proposals, self.size, self.spatial_scale)
        return roi_align(x, proposals, self.size, self.spatial_scale, sampling_ratio=0,
                         aligned=True)


class PyramidAsDict(nn.Module):
    """An frcnn pyramid backbone as the ``OrderedDict`` of levels torchvision's FasterRCNN
    reads, named as torchvision names them ("0", "1", ..., "pool")."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_channels = backbone.out_channels
        self.names = [str(i) for i in range(len(backbone.strides) - 1)] + ["pool"]

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(zip(self.names, self.backbone(images), strict=True))


def build_reference(recipe: Recipe, num_classes: int) -> TorchvisionFasterRCNN:
    """torchvision ``FasterRCNN`` with the recipe's network and numbers (no ImageNet weights:
    it is for timing). A pyramid's levels, anchors per level, MultiScaleRoIAlign and RPN
    score threshold are torchvision's own machinery too."""
    m, a, rpn, heads = recipe.model, recipe.anchors, recipe.rpn, recipe.roi_heads
    cfg = m.model_copy(update={"backbone_weights": None})
    parts = build_backbone(cfg, m.roi_size, load_weights=False)
    backbone = parts.backbone
    if is_pyramid(m.backbone):
        sizes = level_anchor_sizes(recipe, len(backbone.strides))
        anchors = AnchorGenerator(sizes=tuple(tuple(s) for s in sizes),
                                  aspect_ratios=(tuple(a.ratios),) * len(sizes))
        box_roi_pool: MultiScaleRoIAlign = MultiScaleRoIAlign(
            [str(i) for i in range(backbone.pooled_levels)], m.roi_size, sampling_ratio=2)
        backbone = PyramidAsDict(backbone)
    else:
        anchors = AnchorGenerator(sizes=(tuple(s * a.base_size for s in a.scales),),
                                  aspect_ratios=(tuple(a.ratios),))
        box_roi_pool = SingleMapRoIPool(m.roi_op, m.roi_size, 1.0 / backbone.strides[0])
    model = TorchvisionFasterRCNN(
        backbone, num_classes=None,
        min_size=recipe.input.min_size, max_size=recipe.input.max_size,
        image_mean=list(recipe.input.pixel_mean or parts.backbone.pixel_mean),
        image_std=list(recipe.input.pixel_std or parts.backbone.pixel_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0],
                         conv_depth=rpn.convs),
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=rpn.post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn.post_nms_top_n_test,
        rpn_nms_thresh=rpn.nms_thresh,
        rpn_fg_iou_thresh=rpn.fg_iou_thresh, rpn_bg_iou_thresh=rpn.bg_iou_thresh,
        rpn_batch_size_per_image=rpn.batch_size_per_image,
        rpn_positive_fraction=rpn.positive_fraction, rpn_score_thresh=rpn.score_thresh,
        box_roi_pool=box_roi_pool,
        box_head=(TwoMLPHead(parts.box_head.fc6.in_features, parts.head_channels)
                  if isinstance(parts.box_head, FCHead) else parts.box_head),
        box_predictor=FastRCNNPredictor(parts.head_channels, num_classes + 1),
        box_score_thresh=heads.score_thresh, box_nms_thresh=heads.nms_thresh,
        box_detections_per_img=heads.detections_per_img,
        box_fg_iou_thresh=heads.fg_iou_thresh, box_bg_iou_thresh=heads.bg_iou_thresh_hi,
        box_batch_size_per_image=heads.batch_size_per_image,
        box_positive_fraction=heads.positive_fraction,
        bbox_reg_weights=tuple(1.0 / s for s in heads.box_stds),
    )
    model.transform.size_divisible = recipe.input.size_divisible
    return model
