"""TorchScript export: the captured detector as a module that ``torch.jit.load`` runs at any size.

``torch.jit.trace`` of the model itself would freeze every size it computes in Python (the
resize, the padding, the anchor grid, the number of proposals) at the example's values.
``torch.export`` (:func:`frcnn_cli.export.capture.capture`) has already made each of those
computations an explicit node of a graph (``sym_size``, ``*``, ``round``, ``sym_min``...), so
this module replays that graph under ``torch.jit.trace`` with every such value held as a
0-dim int64 or float64 tensor: the tracer then records the arithmetic instead of its result,
and operators that take sizes receive them through their Python bindings, which the tracer
follows. Symbolic float arithmetic runs in float64, as Python's does, so the resize rounds
exactly as in PyTorch.

The module runs on the CPU: the trace records the devices its tensors are made on (the ONNX
file has no such tie; onnxruntime's CUDA provider runs it on a GPU). The file holds
``frcnn.json`` (class names and ids, recipe, conventions) as an extra file::

    extra = {"frcnn.json": ""}
    module = torch.jit.load("model.torchscript.pt", _extra_files=extra)
    boxes, scores, labels = module(image)          # image: [3, H, W] float in 0..1
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import math
import operator
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, fx, nn

from frcnn_cli.errors import ExportError
from frcnn_cli.export.capture import capture, example_image, metadata
from frcnn_cli.inference.exported import EXTRA_FILE

# Python scalar operations of a captured graph, as operations on 0-dim tensors.
_SCALAR_OPS: dict[Any, Any] = {
    operator.add: torch.add, operator.sub: torch.sub, operator.mul: torch.mul,
    operator.neg: torch.neg, operator.mod: torch.remainder,
    operator.floordiv: lambda a, b: torch.div(a, b, rounding_mode="floor"),
    operator.truediv: lambda a, b: a.double() / b.double(),
    operator.eq: torch.eq, operator.ne: torch.ne, operator.lt: torch.lt,
    operator.le: torch.le, operator.gt: torch.gt, operator.ge: torch.ge,
    torch.sym_min: torch.minimum, torch.sym_max: torch.maximum,
    torch.sym_float: lambda a: a.double(),
    torch.sym_int: lambda a: a.long(),
    builtins.round: lambda a, ndigits=None: torch.round(a).long(),  # half to even, as Python
    math.ceil: lambda a: torch.ceil(a).long(),
    math.floor: lambda a: torch.floor(a).long(),
}
# Nodes that only check what the capture assumed; the replay has concrete values.
_CHECKS = {torch.ops.aten._assert_scalar.default, torch.ops.aten._assert_tensor_metadata.default,
           torch.ops.aten.sym_constrain_range.default,
           torch.ops.aten.sym_constrain_range_for_size.default}


def _as_tensor(value: Any) -> Any:
    """A Python number as a 0-dim tensor (float64 or int64); anything else unchanged."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return torch.tensor(value, dtype=torch.float64 if isinstance(value, float) else torch.int64)


def _slice(x: Tensor, dim: int = 0, start: Any = None, end: Any = None, step: Any = 1) -> Tensor:
    """``aten.slice`` as indexing, the form in which the tracer follows tensor bounds."""
    return x[(slice(None),) * (dim % x.dim()) + (slice(start, end, step),)]


def _python_binding(op: torch._ops.OpOverload):
    """The ``torch.*`` / ``torch.nn.functional`` binding of an aten op: unlike ``torch.ops``,
    it lets the tracer record a size argument that is a traced 0-dim tensor."""
    name = op._schema.name.split("::")[-1]
    if name == "slice":
        return _slice
    for namespace in (torch._C._VariableFunctions, torch._C._nn):
        if hasattr(namespace, name):
            return getattr(namespace, name)
    if hasattr(Tensor, name):
        return getattr(Tensor, name)
    raise ExportError(f"TorchScript export cannot pass a symbolic size to {op} (no Python "
                      "binding); please report this")


class _SizesAsTensors(fx.Interpreter):
    """Runs a captured graph with its symbolic scalars as 0-dim tensors (see module doc)."""

    _takes_size = False

    def run_node(self, n: fx.Node) -> Any:
        # Does this node take a size computed in the graph (rather than a tensor or a constant)?
        self._takes_size = any(isinstance(a.meta.get("val"), _SCALARS) for a in n.all_input_nodes)
        return super().run_node(n)

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if target in _CHECKS:
            return None
        if target is torch.ops.aten.sym_size.int:
            return args[0].size(args[1])  # a traced 0-dim tensor under torch.jit.trace
        if target in _SCALAR_OPS:
            if not any(isinstance(a, Tensor) for a in args):
                return target(*args, **kwargs)  # constants stay Python numbers
            return _SCALAR_OPS[target](*(_as_tensor(a) for a in args), **kwargs)
        if isinstance(target, torch._ops.OpOverload) and self._takes_size:
            if target is torch.ops.aten.scalar_tensor.default:  # the size already is a tensor
                return _as_tensor(args[0]).to(kwargs.get("dtype") or torch.get_default_dtype())
            return _python_binding(target)(*args, **kwargs)
        return super().call_function(target, args, kwargs)

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        if target == "_guards_fn":  # the capture's checks of the input's sizes
            return None
        return super().call_module(target, args, kwargs)


_SCALARS = (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)


class _Replay(nn.Module):
    """``forward(image) -> (boxes, scores, labels)``: the captured graph, replayed."""

    def __init__(self, graph_module: fx.GraphModule) -> None:
        super().__init__()
        self.graph_module = graph_module

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        boxes, scores, labels = _SizesAsTensors(self.graph_module).run(image)
        return boxes, scores, labels


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """TorchScript is deprecated in favour of torch.export and says so on every call; the
    tracer also warns about the constants it records (here: the graph's literal numbers)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def to_torchscript(model: nn.Module) -> torch.jit.ScriptModule:
    """A TorchScript module of ``model`` (eval mode, CPU) for one image of any size."""
    replay = _Replay(capture(model).module())
    with _quiet(), torch.no_grad():
        return torch.jit.trace(replay, (example_image(),), check_trace=False, strict=False)


def torchscript_bytes(model: nn.Module, **extra: Any) -> bytes:
    """The TorchScript file of ``model`` as bytes, with :func:`metadata` as ``frcnn.json``."""
    module = to_torchscript(model)
    buffer = io.BytesIO()
    with _quiet():
        torch.jit.save(module, buffer, _extra_files={
            EXTRA_FILE: json.dumps(metadata(model, **extra), indent=2)})
    return buffer.getvalue()
