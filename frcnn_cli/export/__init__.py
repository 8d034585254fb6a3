"""Export and speed: deployable files of a detector, and its timings.

- :mod:`~frcnn_cli.export.capture`: the whole detector for one image of any size as one
  ``torch.export`` graph, which both file formats are written from;
- :mod:`~frcnn_cli.export.onnx` and :mod:`~frcnn_cli.export.torchscript`: the files;
- :mod:`~frcnn_cli.export.verify`: does a file detect what the PyTorch model detects;
- :mod:`~frcnn_cli.export.int8`: INT8 ONNX files calibrated on the user's images;
- :mod:`~frcnn_cli.inference.exported`: exported files as detectors that eval, predict and
  benchmark run (onnxruntime, OpenVINO, torch.jit);
- :mod:`~frcnn_cli.export.svd`: fc6/fc7 compressed by truncated SVD (Fast R-CNN Section 3.1),
  and the head's speed before and after;
- :mod:`~frcnn_cli.export.benchmark`: per-stage latency, FLOPs and memory, and the same for
  torchvision's ``FasterRCNN`` built to the recipe.

::

    data = export_bytes(model, "onnx")                 # model: eval mode, on the CPU
    run = load_exported("onnx", data)
    boxes, scores, labels = run(image)                 # image: [3, H, W] float in 0..1
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads with the functions, so importing the package stays cheap
    from torch import Tensor, nn

FORMATS = ("onnx", "torchscript")
# Images of the user's dataset an INT8 export calibrates on (frcnn export --int8
# --calib-images): a few dozen cover the activation ranges; more cost time, not accuracy
# (benchmarks/int8.py). Here, not in export/int8.py, so that the CLI reads it without torch.
DEFAULT_CALIB_IMAGES = 32


def export_bytes(model: nn.Module, fmt: str, opset: int | None = None, **extra: Any) -> bytes:
    """The exported file of ``model`` in ``fmt`` (onnx, torchscript); ``extra`` goes into
    its metadata."""
    if fmt == "onnx":
        from frcnn_cli.export.onnx import onnx_bytes

        return onnx_bytes(model, opset, **extra)
    from frcnn_cli.export.torchscript import torchscript_bytes

    return torchscript_bytes(model, **extra)


def load_exported(fmt: str, data: bytes) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]:
    """``run(image [3, H, W]) -> (boxes, scores, labels)`` with onnxruntime or torch.jit, on
    the CPU (the runtime :func:`~frcnn_cli.inference.exported.load_exported_model` uses)."""
    from frcnn_cli.inference.exported import exported_runtime

    return exported_runtime(fmt, data).run
