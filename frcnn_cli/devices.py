"""Which device a command runs on, and in which precision: the ``--device`` option of every
command and the ``--precision`` option of eval, predict and benchmark."""

from __future__ import annotations

import contextlib

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


# Inference precisions: fp32, or autocast to bfloat16 (CPU and GPU) or float16 (GPU).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str = "fp32", emulated_fp16: bool = False):
    """The context a model runs in for ``precision``: nothing for fp32, else autocast. The
    model keeps its prediction layers (objectness, box deltas, class scores) in fp32 under
    autocast, so only the convolutions and fc6/fc7 run in reduced precision. fp16 off CUDA is
    refused unless ``emulated_fp16`` (``benchmark`` times it, with a note)."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}'; use {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda" and not emulated_fp16:
        raise InputError("--precision fp16 needs a CUDA device; bf16 is the CPU's reduced "
                         "precision")
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer read next measures it (CUDA runs
    asynchronously; a CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
