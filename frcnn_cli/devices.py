"""Which device a command runs on: the ``--device`` option of every command."""

from __future__ import annotations

import torch

from frcnn_cli.errors import InputError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; a CUDA device that is absent is an InputError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise InputError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device '{name}' asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device '{name}' does not exist "
                             f"({torch.cuda.device_count()} CUDA device(s))")
    elif device.type != "cpu":
        raise InputError(f"unsupported device '{name}'; use auto, cpu, cuda or cuda:N")
    return device
