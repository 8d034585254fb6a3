"""INT8 ONNX files: static quantization calibrated on the user's own images.

``frcnn export CKPT --format onnx --int8 --calibrate ANN.json`` writes the fp32 ONNX file
(:mod:`frcnn_cli.export.onnx`), runs it on :data:`DEFAULT_CALIB_IMAGES` images of the
dataset, picked evenly over its order (:func:`spread`), to record the range of every tensor
the quantized layers read and write (onnxruntime's MinMax calibration), then rewrites it in
onnxruntime's QDQ form: weights int8 per output channel, activations uint8 per tensor
(:data:`QUANTIZER`). The images go in as the file takes them, decoded pixels in 0..1; the
graph resizes and normalises them itself, so the ranges are those of the model's own
preprocessing.

Which layers: the convolutions and fully connected layers (:data:`QUANTIZED_OPS`; with the
ReLUs and max pools between them, which QDQ folds away so that 8-bit activations flow from
one convolution to the next), except those whose role is in :data:`KEEP_FP32`. The roles
(:func:`layer_roles`) come from the PyTorch model: the backbone's layers, the RPN's 3x3 conv
and its sibling 1x1 convs (objectness, deltas), the per-RoI head (fc6/fc7, or res5) and its
class-score and box layers. The 1x1 and predictor layers are a sliver of the work and their
outputs decide which proposals survive NMS and where boxes land, so they stay fp32
(``benchmarks/int8.py --sensitivity`` measures each choice). Everything else in the graph
(resize, anchors, decoding, NMS, RoI pooling) stays as exported.

The file keeps the fp32 file's interface and metadata, and adds ``precision: int8``,
``calibration`` (dataset, image ids, method) and ``fp32_layers``. Calibration is
deterministic: the same model and images give the same file, byte for byte.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from frcnn_cli.errors import DataError, InputError
from frcnn_cli.export import DEFAULT_CALIB_IMAGES

CHECK_IMAGES = 8  # dataset images the export check compares on (not calibration ones)
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Relu", "MaxPool")
ROLES = {
    "backbone": "backbone convolutions",
    "rpn": "RPN 3x3 conv",
    "rpn_predict": "RPN 1x1 convs (objectness, box deltas)",
    "head": "per-RoI head (fc6/fc7 or res5)",
    "head_predict": "class scores and box deltas",
}
KEEP_FP32 = ("rpn_predict", "head_predict")
CALIBRATION_METHOD = "minmax"
# onnxruntime's advice for x86 CPUs: uint8 activations, int8 weights, per channel. reduce_range
# (7-bit weights) avoids the saturation of the u8 x s8 instruction of AVX2 CPUs without VNNI
# (on one, pairs' box IoU 0.967 instead of 0.953, mAP the same within noise) but gives up a bit
# of weight precision on VNNI CPUs, where INT8 pays off; the export check passes without it.
QUANTIZER = {"per_channel": True, "reduce_range": False, "activation_type": "QUInt8",
             "weight_type": "QInt8"}


@dataclass
class Calibration:
    """What an INT8 file was calibrated on: ``dataset`` (its file name), the ``image_ids``
    used, the ``method``; and the roles of the layers left in fp32."""

    dataset: str
    image_ids: list[Any]
    method: str = CALIBRATION_METHOD
    fp32_roles: list[str] = field(default_factory=lambda: list(KEEP_FP32))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spread(total: int, count: int) -> list[int]:
    """``count`` indices of ``range(total)`` evenly spread over it, first included (all of
    them when ``count >= total``): a deterministic sample that covers the dataset's order."""
    if count >= total:
        return list(range(total))
    return [i * total // count for i in range(count)]


def calibration_and_check(total: int, count: int, check: int = CHECK_IMAGES
                          ) -> tuple[list[int], list[int]]:
    """Indices of the calibration images (:func:`spread`) and of up to ``check`` others to
    compare on, spread over the rest (the calibration images again when there is no rest)."""
    calib = spread(total, count)
    taken = set(calib)
    rest = [i for i in range(total) if i not in taken] or calib
    return calib, [rest[i] for i in spread(len(rest), check)]


def read_images(ann, indices: Sequence[int]) -> list[tuple[str, Tensor]]:
    """``(file name, [3, H, W] float in 0..1)`` of the dataset's images at ``indices``: the
    decoded file, as the exported graph takes it."""
    from frcnn_cli.data.images import read_image
    from frcnn_cli.export.verify import as_input

    return [(ann.images[i]["file_name"], as_input(read_image(ann.image_path(ann.images[i]))))
            for i in indices]


def quantize_on(fp32: bytes, model: nn.Module, ann, count: int,
                keep_fp32: Sequence[str] = KEEP_FP32) -> tuple[bytes, Calibration]:
    """The INT8 file of the fp32 ONNX file ``fp32`` of ``model``, calibrated on ``count``
    images of the dataset ``ann`` (:func:`calibration_and_check`), ``keep_fp32``'s layers
    left in fp32; and what it was calibrated on."""
    calib, _ = calibration_and_check(len(ann.images), count)
    calibration = Calibration(Path(str(ann.path)).name if ann.path else "",
                              [ann.images[i]["id"] for i in calib], fp32_roles=list(keep_fp32))
    images = [image for _, image in read_images(ann, calib)]
    return quantize(fp32, model, images, calibration), calibration


def layer_roles(model: nn.Module) -> dict[str, str]:
    """``{module name: role}`` (:data:`ROLES`) of the model's convolutions and linear layers.

    A layer belongs to the part its name starts with (``backbone``, ``rpn``, ``roi_heads``);
    the RPN's 1x1 convs are its predictors, and a linear layer of the RoI head that outputs
    K + 1 class scores or 4 (K + 1) (or 4) box deltas is the head's."""
    classes = model.num_classes + 1
    roles = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        part = name.split(".", 1)[0]
        if part == "rpn":
            roles[name] = "rpn_predict" if module.kernel_size == (1, 1) else "rpn"
        elif part == "roi_heads":
            predicts = (isinstance(module, nn.Linear)
                        and module.out_features in (classes, 4 * classes, 4))
            roles[name] = "head_predict" if predicts else "head"
        else:
            roles[name] = "backbone"
    return roles


def node_roles(proto, roles: dict[str, str]) -> dict[str, str]:
    """``{node name: role}`` of the ONNX graph's Conv, Gemm and MatMul nodes, found by the
    module their weight belongs to (initialiser ``model.<module>.weight``, or the module
    scopes the exporter records on each node)."""
    found = {}
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        names = [_module_of(i) for i in node.input[1:2]] + _scopes(node)[::-1]
        role = next((roles[n] for n in names if n in roles), None)
        if role is not None:
            found[node.name] = role
    return found


def _module_of(initializer: str) -> str:
    """``model.rpn.head.conv.weight`` -> ``rpn.head.conv``."""
    return _without_root(initializer).rsplit(".", 1)[0]


def _without_root(name: str) -> str:
    """A name inside the exported wrapper (``model.<name>``) as the model's own."""
    return name[len("model."):] if name.startswith("model.") else name


def _scopes(node) -> list[str]:
    """The module names the torch exporter recorded for a node, outermost first."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return [_without_root(s) for s in ast.literal_eval(prop.value)]
            except (ValueError, SyntaxError, TypeError):
                return []
    return []


class _Images:
    """onnxruntime's calibration reader: ``{"image": [3, H, W] float32}`` one at a time."""

    def __init__(self, images: Sequence[Tensor]) -> None:
        self.images = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self.images, None)
        return None if image is None else {"image": image.numpy().astype(np.float32)}

    def rewind(self) -> None:  # part of onnxruntime's reader interface; one pass is made
        pass


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer advises pre-processing through the root logger (symbolic shape
    inference, which cannot follow this graph's data-dependent sizes); a handler on the root
    logger keeps that call from configuring logging for the whole process."""
    root = logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    before = root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)
        root.removeHandler(handler)


def quantize(fp32: bytes, model: nn.Module, images: Sequence[Tensor],
             calibration: Calibration) -> bytes:
    """The INT8 file of the fp32 ONNX file ``fp32`` of ``model``, calibrated on ``images``
    (``[3, H, W]`` float in 0..1), the layers of roles ``calibration.fp32_roles`` left in
    fp32."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    keep_fp32 = calibration.fp32_roles
    if not images:
        raise InputError("INT8 calibration needs at least one image")
    unknown = set(keep_fp32) - set(ROLES)
    if unknown:
        raise InputError(f"unknown layer roles {sorted(unknown)}; known: {', '.join(ROLES)}")
    proto = onnx.load_from_string(fp32)
    roles = node_roles(proto, layer_roles(model))
    excluded = sorted(n for n, role in roles.items() if role in keep_fp32)
    with tempfile.TemporaryDirectory(prefix="frcnn-int8-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(fp32)
        with _quiet_quantizer():
            quantize_static(
                source, target, _Images(images), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=excluded,
                per_channel=QUANTIZER["per_channel"], reduce_range=QUANTIZER["reduce_range"],
                activation_type=getattr(QuantType, QUANTIZER["activation_type"]),
                weight_type=getattr(QuantType, QUANTIZER["weight_type"]),
                calibrate_method=CalibrationMethod.MinMax)
        quantized = onnx.load(target)
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update(precision="int8", calibration=json.dumps(calibration.to_dict()),
                fp32_layers=json.dumps(sorted({n for n, r in layer_roles(model).items()
                                               if r in keep_fp32})))
    del quantized.metadata_props[:]
    for key, value in meta.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    return quantized.SerializeToString()


@dataclass
class Int8Export:
    """What :func:`export_int8` made: the INT8 file's bytes, its calibration, and the check's
    results (None with ``check=False``): the fp32 file against PyTorch (exact), the INT8
    file against PyTorch (by objects)."""

    data: bytes
    calibration: Calibration
    fp32_check: list[Any] | None = None
    int8_check: Any = None


def export_int8(model: nn.Module, ann, count: int = DEFAULT_CALIB_IMAGES, *,
                check: bool = True, check_paths: Sequence[str] = (), opset: int | None = None,
                **extra: Any) -> Int8Export:
    """``model`` (eval mode, CPU) as an INT8 ONNX file calibrated on ``count`` images of the
    dataset ``ann`` (:func:`calibration_and_check`), ``extra`` in its metadata.

    With ``check``, the fp32 file is first compared with the model as any export is
    (:func:`~frcnn_cli.export.verify.check_export` on two synthetic pictures), then the INT8
    file by objects (:func:`~frcnn_cli.export.verify.check_int8`) on ``check_paths`` or on
    :data:`CHECK_IMAGES` dataset images that calibration did not use. The caller judges the
    results (``.ok``); nothing is refused here. DataError for a dataset without images.
    """
    from frcnn_cli.export import export_bytes, load_exported, verify

    if not ann.images:
        raise DataError(f"{ann.path}: no images to calibrate on")
    fp32 = export_bytes(model, "onnx", opset, **extra)
    fp32_check = (verify.check_export(model, load_exported("onnx", fp32), verify.check_images())
                  if check else None)
    result = Int8Export(*quantize_on(fp32, model, ann, count), fp32_check)
    if check:
        _, others = calibration_and_check(len(ann.images), count)
        compared = (verify.check_images(check_paths) if check_paths
                    else read_images(ann, others))
        result.int8_check = verify.check_int8(model, load_exported("onnx", result.data),
                                              compared)
    return result
