"""Where reduced precision stops: the prediction layers run in fp32 under autocast.

Under bf16 or fp16 autocast the convolutions and fc6/fc7 carry almost all of the work and
lose little; the layers that predict objectness, box deltas and class scores are tiny, and
their outputs decide which proposals survive NMS and how boxes land. Rounding those to bf16's
8 bits of mantissa moved VOC07 mAP by about 0.01 on a briefly trained shapes model, so they
run in fp32 (benchmarks/README.md, "bf16").
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from frcnn_cli.model.tracing import tracing


def full_precision(x: Tensor):
    """A context that turns autocast off on ``x``'s device (nothing to do outside autocast and
    while tracing); run the layer on ``x.float()`` inside it."""
    if tracing() or not torch.is_autocast_enabled(x.device.type):
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, enabled=False)
