"""Process-group helpers for training and inference under ``torchrun``, on one machine or
several (``--nnodes``).

Without torchrun (no ``WORLD_SIZE`` in the environment) everything here is a no-op for a single
process, so the training and inference code reads the same either way.

A process that dies (killed, out of memory, its node lost) leaves the others waiting in a
collective operation: gloo notices the closed connection at once, NCCL at its timeout.
:data:`TIMEOUT` bounds every wait (``FRCNN_DIST_TIMEOUT`` seconds, default 600), and torchrun
stops the other workers with SIGTERM, which a training run turns into a saved ``last.pt``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from frcnn_cli.devices import resolve_device
from frcnn_cli.errors import InputError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def timeout() -> datetime.timedelta:
    """How long a process waits for the others in one collective operation."""
    text = os.environ.get("FRCNN_DIST_TIMEOUT", "600")
    try:
        seconds = float(text)
    except ValueError:
        raise InputError(f"FRCNN_DIST_TIMEOUT must be seconds, got {text!r}") from None
    return datetime.timedelta(seconds=seconds)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timeout())
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_over_processes(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average a dict of floats over all processes (for logging)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def gather_to_main(obj: Any, info: DistInfo) -> list[Any] | None:
    """Collect one picklable object from every process on the main one (None elsewhere)."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any, info: DistInfo) -> Any:
    """The main process's value of ``obj``, on every process."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every process the main one's buffers (BatchNorm's running statistics): DDP sends
    them at the start of each forward pass, so after the last one each process holds those
    its own batch left, and a model evaluated in shares must be one model, the main one's."""
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def processes(device: str) -> Iterator[tuple[torch.device, DistInfo]]:
    """``with processes("auto") as (device, dist):`` this process's device and place among
    torchrun's for one command (eval, predict, propose), the group left at the end."""
    resolved, info = join_processes(device)
    try:
        yield resolved, info
    finally:
        shutdown(info)


def is_peer_failure(error: BaseException) -> bool:
    """A collective that failed because another process stopped (a closed connection, a
    timeout), not a fault of this one."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("connection closed", "connection reset", "timed out", "timeout",
                            "broken pipe", "gloo", "nccl"))


def training_device(device: str, amp: bool) -> torch.device:
    """A run's ``--device``, refusing ``--amp`` anywhere but on a GPU."""
    resolved = resolve_device(device)
    if amp and resolved.type != "cuda":
        raise InputError("--amp needs a CUDA device (mixed precision training runs on GPUs)")
    return resolved


def join_processes(device: str, amp: bool = False) -> tuple[torch.device, DistInfo]:
    """This process's device and its place among torchrun's processes (alone without it): a
    training run's (``--amp`` refused off a GPU), and eval's, predict's and propose's."""
    resolved = training_device(device, amp)
    info = init_distributed(resolved)
    if info.enabled and resolved.type == "cuda":
        resolved = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(resolved)
    return resolved, info
