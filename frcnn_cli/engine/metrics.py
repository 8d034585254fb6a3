"""``metrics.jsonl`` and TensorBoard's event files beside it, and the losses averaged into
each metrics line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frcnn_cli.files import write_text

# The progress line's names for the four losses.
SHORT_NAMES = {"loss_rpn_cls": "rpn_cls", "loss_rpn_box": "rpn_box", "loss_det_cls": "det_cls",
               "loss_det_box": "det_box"}


class MetricsLog:
    """What a run logs: ``metrics.jsonl`` (one JSON object per logged step or validation) and
    the same values in TensorBoard's event files in its folder
    (:mod:`frcnn_cli.engine.events`), both fed by :meth:`write`. ``enabled``: this process
    logs (the main one)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.events = None

    def open(self, after: int | None = None) -> None:
        """Start logging: a new run (``after`` None), or a run resumed from iteration
        ``after``, whose later lines and points (it logs them again) go from both."""
        if not self.enabled:
            return
        from frcnn_cli.engine.events import EventLog

        if after is not None:
            self.truncate_after(after)
        self.events = EventLog(self.path.parent, purge_after=after)

    def truncate_after(self, iteration: int) -> None:
        """Drop lines logged after ``iteration`` (a resumed run logs them again)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
        write_text(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl``, and its values in the event files."""
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.events is not None:
                self.events.write(record)

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        """A picture (uint8 ``[H, W, 3]``) for TensorBoard alone."""
        if self.enabled and self.events is not None:
            self.events.image(tag, pixels, step)

    def flush(self) -> None:
        """Everything logged so far on disk (metrics lines are at once; events are buffered)."""
        if self.events is not None:
            self.events.flush()

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None


class LossWindow:
    """The losses of the iterations since the last logged step, which that step averages.

    ``values`` (``{name: [loss per iteration]}``) goes into ``last.pt``, so a run resumed
    between two logged steps logs the same averages as one never stopped.
    """

    def __init__(self, values: dict[str, list[float]] | None = None) -> None:
        self.values = {} if values is None else values

    def add(self, losses: dict[str, torch.Tensor], total: torch.Tensor) -> None:
        for k, v in losses.items():
            self.values.setdefault(k, []).append(float(v.detach()))
        self.values.setdefault("loss", []).append(float(total.detach()))

    def pop_means(self) -> dict[str, float]:
        """Each loss's mean over the window, which starts again empty."""
        means = {k: sum(v) / len(v) for k, v in self.values.items()}
        self.values.clear()
        return means


def short_names(means: dict[str, float]) -> dict[str, float]:
    return {SHORT_NAMES[k]: v for k, v in means.items() if k in SHORT_NAMES}
