"""The detector, in the paper's order; one map or a feature pyramid's levels alike.

- :mod:`~frcnn_cli.model.transform`: resize (shorter side 600), normalise, pad into a batch
- :mod:`~frcnn_cli.model.backbones`: the shared conv layers (VGG16 conv5_3, ResNet C4, ...),
  and :mod:`~frcnn_cli.model.fpn` their feature-pyramid successors (Lin et al. 2017)
- :mod:`~frcnn_cli.model.anchors`: k anchors at every place of every level (Section 3.1)
- :mod:`~frcnn_cli.model.box_coder`, :mod:`~frcnn_cli.model.matching`: box deltas, NMS, IoU
  labels and balanced sampling, shared by the RPN and the detector
- :mod:`~frcnn_cli.model.rpn`: the Region Proposal Network, its loss and the proposal layer
- :mod:`~frcnn_cli.model.poolers`: RoI pooling, from one map or by FPN Eq. 1 from a level
- :mod:`~frcnn_cli.model.box_heads`: fc6/fc7 (or res5) on each RoI
- :mod:`~frcnn_cli.model.roi_heads`: the Fast R-CNN detector on the proposals (Section 3.2)
- :mod:`~frcnn_cli.model.faster_rcnn`: the whole model, ``build_model`` and ``load_model``

Beside the paper: :mod:`~frcnn_cli.analysis.coverage` (how anchors fit a dataset),
:mod:`~frcnn_cli.model.reference` (torchvision's FasterRCNN built alike, for speed) and
:mod:`~frcnn_cli.model.torchvision_weights` (torchvision's trained detectors as frcnn models).
"""

from frcnn_cli.model.faster_rcnn import FasterRCNN, build_model, load_model

__all__ = ["FasterRCNN", "build_model", "load_model"]
