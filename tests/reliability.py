"""Checks shared by the reliability suites: nothing lost, one clear error line."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Training options that make a run of a few iterations take seconds: 64 px, no worker
# processes, two images a batch, no warm-up, the CPU.
FAST = ["--set", "input.min_size=64", "--set", "input.max_size=64", "--set",
        "data.num_workers=0", "--set", "solver.images_per_batch=2", "--set",
        "solver.warmup_iters=0", "--device", "cpu"]


def flat(text: str) -> str:
    """Output without whitespace or box borders: the log handler wraps lines."""
    return "".join(text.split()).replace("│", "")


def digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders)."""
    out = {}
    for p in paths:
        for f in sorted([p] if p.is_file() else p.rglob("*")):
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def assert_user_error(r, *fragments: str) -> str:
    """Exit 2, no traceback, and the last line is the one ``error:`` line holding
    ``fragments``; returns that line."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output, r.output
    lines = r.output.strip().splitlines()
    assert lines and lines[-1].startswith("error:"), r.output
    assert sum(line.startswith("error:") for line in lines) == 1, r.output
    for fragment in fragments:
        assert fragment in lines[-1], r.output
    return lines[-1]


def small_shapes(folder: Path) -> Path:
    """A 64 px shapes set in ``folder``: train.json (4 images), val.json (2), images/."""
    from frcnn_cli.data.synth import synthesize

    synthesize(folder, train=4, val=2, size=64, seed=0, workers=1)
    return folder


def untrained_checkpoint(path: Path) -> Path:
    """An untrained, complete model checkpoint for the three shapes classes, at ``path``."""
    from frcnn_cli import config
    from frcnn_cli.checkpoint import checkpoint_meta, save_checkpoint
    from frcnn_cli.model.faster_rcnn import build_model

    recipe = config.load_recipe("shapes", ["input.min_size=64", "input.max_size=64"])
    classes = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
               {"id": 3, "name": "triangle"}]
    model = build_model(recipe, 3, classes=classes)
    save_checkpoint({"model": model.state_dict(), "meta": checkpoint_meta(model)}, path)
    return path
