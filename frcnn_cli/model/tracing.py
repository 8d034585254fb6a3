"""Whether the model is being traced: the one switch between eager fast paths and export."""

from __future__ import annotations

import torch


def tracing() -> bool:
    """True while the model is being traced, scripted, compiled or exported: code then takes
    its plain tensor path, without caches, shortcuts or data-dependent branches."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export())
