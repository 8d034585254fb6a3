"""Detection metrics and running a model over data.

- ``voc``: PASCAL VOC AP at IoU 0.5 (VOC2007 11-point and VOC2010+ area), the devkit's rules
- ``coco``: COCO AP/AR through pycocotools
- ``recall``: the RPN's proposal recall (the paper's Section 4)
- ``detections``: the COCO results format (read, check, write)
- ``evaluate``: :func:`evaluate_detections`, one entry point for the three metrics
- ``inference``: a model over a dataset (``evaluate_model``, ``evaluate_proposals``)
- ``predict``, ``draw``: a model over image files, with drawings
- ``plots``: precision-recall and recall-vs-IoU PNGs

Only ``inference`` and ``predict`` import torch.
"""

from frcnn_cli.evaluation.detections import load_detections, save_detections
from frcnn_cli.evaluation.evaluate import METRICS, EvalResult, evaluate_detections

__all__ = ["METRICS", "EvalResult", "evaluate_detections", "load_detections",
           "save_detections"]
