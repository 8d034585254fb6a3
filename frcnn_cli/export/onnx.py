"""ONNX export: the captured detector (:mod:`frcnn_cli.export.capture`) as one ONNX graph.

Input ``image``: float32 ``[3, H, W]``, RGB in 0..1, H and W dynamic. Outputs ``boxes``
``[D, 4]`` (x1 y1 x2 y2 in the input's pixels), ``scores [D]``, ``labels [D]`` int64, D
dynamic (zero included). Class names and dataset ids are in the model's ``metadata_props``
(``classes``: JSON ``[{"id", "name"}]``, label i is ``classes[i - 1]``).

The conversion is ``torch.onnx.export`` of the ``torch.export`` capture, with four
translations of our own:

- ``torchvision::roi_pool`` -> ``MaxRoiPool`` (the same Caffe rounding as torchvision's
  kernel); onnxscript's own translation of it does not match the operator's signature.
- symbolic float arithmetic (the resize factor) in float64 rather than float32, so
  ``round(side * scale)`` gives the same whole number of pixels as Python does;
- ``round`` of it to an integer (``Round`` is half to even, like Python's);
- ``//`` on sizes, rounding down as Python does: onnxscript's is ONNX ``Div``, which
  truncates toward zero, so ``-(-24 // 16)`` (24 rounded up to a multiple of 16, the padding)
  would come out 1 instead of 2.

``torchvision::nms`` becomes ``NonMaxSuppression`` through onnxscript's translation.
"""

from __future__ import annotations

import builtins
import operator
from typing import Any

import torch
from torch import nn

from frcnn_cli.export.capture import (
    OUTPUT_NAMES,
    capture,
    example_image,
    metadata,
    quiet_torchvision,
)

DEFAULT_OPSET = 18


def _translations() -> dict[Any, Any]:
    """``custom_translation_table`` for ``torch.onnx.export`` (onnxscript functions)."""
    from onnxscript import DOUBLE, INT64
    from onnxscript import opset18 as op

    def roi_pool(features, rois, spatial_scale: float, pooled_height: int,
                 pooled_width: int):
        pooled = op.MaxRoiPool(features, rois, pooled_shape=[pooled_height, pooled_width],
                               spatial_scale=spatial_scale)
        # torchvision's op also returns the argmax (for its backward); nothing reads it.
        return pooled, op.Cast(pooled, to=INT64.dtype)

    def sym_float(value):
        return op.Cast(value, to=DOUBLE.dtype)

    def truediv(a, b):
        return op.Div(op.Cast(a, to=DOUBLE.dtype), op.Cast(b, to=DOUBLE.dtype))

    def sym_round(value, ndigits=None):
        return op.Cast(op.Round(value), to=INT64.dtype)

    def floordiv(a, b):
        quotient = op.Div(a, b)  # integers: truncated toward zero
        inexact = op.Not(op.Equal(op.Mul(quotient, b), a))
        down = op.And(inexact, op.Xor(op.Less(a, op.CastLike(0, a)),
                                      op.Less(b, op.CastLike(0, b))))
        return op.Sub(quotient, op.Cast(down, to=INT64.dtype))

    return {torch.ops.torchvision.roi_pool.default: roi_pool, torch.sym_float: sym_float,
            operator.truediv: truediv, builtins.round: sym_round, operator.floordiv: floordiv}


def onnx_bytes(model: nn.Module, opset: int | None = None, **extra: Any) -> bytes:
    """The ONNX file of ``model`` (eval mode, CPU) as bytes, metadata included."""
    program = capture(model)
    with quiet_torchvision():  # the conversion traces the graph again
        onnx_program = torch.onnx.export(
            program, (example_image(),), dynamo=True, input_names=["image"],
            output_names=list(OUTPUT_NAMES), opset_version=opset or DEFAULT_OPSET,
            custom_translation_table=_translations(), optimize=True, verbose=False)
    proto = onnx_program.model_proto
    for key, value in metadata(model, **extra).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()
