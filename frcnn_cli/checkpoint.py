"""Checkpoint I/O: atomic saves, and loads that never run code from the file.

A checkpoint is a dict saved with ``torch.save``::

    {"format": "frcnn-checkpoint", "version": 1,
     "model": state_dict,                    # keys start with backbone., rpn., roi_heads.
     "meta": {"iteration", "stage", "classes", "recipe", ...},  # checkpoint_meta()
     # a Fast R-CNN detector trained on Selective Search also has meta["proposals"]:
     #   {"method": "selective-search", "mode", "max_proposals", "max_side"}
     # last.pt only:
     "optimizer": ..., "scheduler": ..., "rng": ...}

Loading goes through ``torch.load(weights_only=True)``: a file whose pickle stream names any
global outside tensors and plain containers is refused before anything in it runs.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from frcnn_cli.errors import CheckpointError
from frcnn_cli.files import atomic_open
from frcnn_cli.outputs import CHECKPOINT_FORMAT

VERSION = 1


def checkpoint_meta(model, iteration: int = 0, stage: str | None = None, recipe=None,
                    **extra: Any) -> dict[str, Any]:
    """The ``meta`` entry of every checkpoint of ``model``: ``iteration``, ``stage``, ``classes``
    (``[{"id", "name"}]`` in label order), ``recipe`` (``model.recipe`` unless given, as a plain
    dict), ``proposals`` for a detector trained on external proposals (the model's
    ``proposal_source``, e.g. Selective Search's settings), and any ``extra`` keys
    (``best_map``, ``seed``, ``svd_of``, ``proposals``)."""
    recipe = model.recipe if recipe is None else recipe
    source = getattr(model, "proposal_source", None)
    return {"iteration": iteration, "stage": stage, "classes": list(model.classes),
            "recipe": recipe.to_dict(), **({"proposals": source} if source else {}), **extra}


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` atomically (temp file, fsync, rename).

    A crash or a full disk mid-write leaves the previous file at ``path`` untouched.
    """
    obj = {"format": CHECKPOINT_FORMAT, "version": VERSION, **obj}
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def save_safe(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomically ``torch.save`` a dict of tensors and plain values (no format key added)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive; the legacy format and bare pickles start with the
    pickle protocol opcode 0x80. A JSON, YAML or image file is neither."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return True  # let torch.load report the reading error
    return head.startswith(b"PK") or head[:1] == b"\x80"


def load_safe(path: str | os.PathLike, what: str = "checkpoint",
              map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with every failure turned into a CheckpointError."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{what} not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"{what} {p} is a folder; give the .pt file inside it")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{what} {p} is empty (truncated or not a PyTorch file)")
    if not _looks_like_torch_file(p):
        raise CheckpointError(f"{what} {p} is not a PyTorch file (neither a zip archive nor a "
                              "pickle stream)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: one line only
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).splitlines()[0] if str(e) else "bad pickle stream"
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it holds Python objects beyond tensors (a pickle payload); refused unread"
        raise CheckpointError(f"{what} {p} is not safe to load: {reason}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            IndexError, AttributeError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        # a bare code such as "(101)" or the zip reader's paragraph tells a user nothing
        detail = f" ({first})" if any(c.isalpha() for c in first) and len(first) < 80 else ""
        raise CheckpointError(f"{what} {p} is truncated or not a PyTorch file{detail}") \
            from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {p} holds a {type(obj).__name__}, not a dict")
    return obj


def load_checkpoint(path: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate an frcnn checkpoint; raise CheckpointError for anything else.

    A bare state dict (``torch.save(model.state_dict())``) is accepted as ``{"model": sd}``
    only if its keys have our layout, so a detector's weights saved by hand still load.
    """
    obj = load_safe(path, "checkpoint", map_location)
    if "model" not in obj and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = {"model": obj, "meta": {}}
    model = obj.get("model")
    if not isinstance(model, dict) or "meta" not in obj:
        raise CheckpointError(f"{path} is not an frcnn checkpoint (no 'model' and 'meta' entries)")
    prefixes = ("backbone.", "rpn.", "roi_heads.")
    bad = [k for k in model if not k.startswith(prefixes)]
    if bad:
        raise CheckpointError(f"{path} is not an frcnn checkpoint (unexpected weight '{bad[0]}')")
    return obj
