"""TensorBoard's event files in a run folder (``tensorboard --logdir runs/``).

They hold what ``metrics.jsonl`` holds, written by the same call
(:meth:`frcnn_cli.engine.metrics.MetricsLog.write`), so the two cannot differ: every number of
a metrics line becomes a scalar at step ``iteration``, tagged by :func:`tag_of` (``val_*``
keys under ``val/``, the others under ``train/``; a dict's entries one level down, e.g.
``val_AP`` -> ``val/AP/<class>``), and the keys of :data:`TEXT_KEYS` become text. Pictures
(validation images with their detections) go only here.

A resumed run purges what was written after the iteration it resumes from, the standard way
(``SummaryWriter(purge_step=...)``), so TensorBoard shows each point once, as
``metrics.jsonl`` does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_cli.boxes import is_number

# The strings of a metrics line that TensorBoard shows, as text (others, e.g. the metric's
# name beside val_mAP, are not worth a panel).
TEXT_KEYS = ("stopped_early",)

EVENT_FILES = "events.out.tfevents.*"  # TensorBoard's name for them (tensorboard.summary)


def tag_of(key: str) -> str:
    """TensorBoard's tag of a metrics key: ``val_mAP`` -> ``val/mAP``, ``loss`` ->
    ``train/loss``."""
    return f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """``{tag: value}`` of every number of a metrics line but its ``iteration`` (the step),
    a dict's numbers under their key's tag."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "iteration":
            continue
        if isinstance(value, dict):
            out.update({f"{tag_of(key)}/{name}": float(v) for name, v in value.items()
                        if is_number(v)})
        elif is_number(value):
            out[tag_of(key)] = float(value)
    return out


class EventLog:
    """The event files of one run folder (one writer, the main process's).

    ``purge_after``: the iteration a resumed run continues from; points logged after it by the
    interrupted run are hidden (they are logged again). None for a new run.
    """

    def __init__(self, folder: Path, purge_after: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if purge_after is not None:
            _sort_after_earlier_files(folder)
        self.writer = SummaryWriter(str(folder), purge_step=None if purge_after is None
                                    else purge_after + 1)

    def write(self, record: dict[str, Any]) -> None:
        """One metrics line (see the module doc)."""
        step = int(record["iteration"])
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        for key in TEXT_KEYS:
            if key in record:
                self.writer.add_text(tag_of(key), str(record[key]), step)

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        """A picture, uint8 ``[H, W, 3]`` RGB."""
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _sort_after_earlier_files(folder: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the
    second its writer opened: the purge a resumed run writes must come after the points it
    purges, so its file must not share a second with an earlier one. (Only a resume within a
    second of the start waits, for under a second.)"""
    stamps = [int(p.name.split(".")[3]) for p in folder.glob(EVENT_FILES)
              if p.name.split(".")[3].isdigit()]
    wait = max(stamps, default=0) + 1 - time.time()
    if wait > 0:
        time.sleep(wait)
