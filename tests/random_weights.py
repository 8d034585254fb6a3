"""Random weights that behave like trained ones where a comparison needs it."""

from __future__ import annotations

import torch


def spread_batchnorm(net: torch.nn.Module, g: torch.Generator) -> None:
    """Give every BatchNorm2d of ``net`` statistics and an affine part away from the identity
    (a freshly built layer has mean 0, variance 1, weight 1, bias 0), so that a layer mapped
    or exported wrongly changes the outputs."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.2, generator=g)
                m.bias.normal_(0, 0.1, generator=g)


def spread_weights(net: torch.nn.Module, g: torch.Generator) -> None:
    """:func:`spread_batchnorm`, and the prediction layers (RPN objectness and deltas, class
    scores and box deltas) drawn wide enough that proposals and detections get distinct
    scores (scores equal in float32, which a saturated sigmoid gives, are ordered by each
    runtime's own sort)."""
    spread_batchnorm(net, g)
    with torch.no_grad():
        net.rpn.head.cls_logits.weight.normal_(0, 0.2, generator=g)
        net.rpn.head.cls_logits.bias.normal_(0, 1, generator=g)
        net.rpn.head.bbox_pred.weight.normal_(0, 0.02, generator=g)
        net.roi_heads.cls_score.weight.normal_(0, 0.3, generator=g)
        net.roi_heads.bbox_pred.weight.normal_(0, 0.05, generator=g)
