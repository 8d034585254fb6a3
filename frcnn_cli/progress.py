"""How long-running library code reports progress without knowing about terminals.

Library functions take a ``reporter`` and open tasks on it::

    with reporter.task("training", total=max_iters, completed=start) as task:
        for it in range(start, max_iters):
            ...
            task.update(advance=1, loss=3.2, lr=0.001)

The CLI passes a reporter that draws rich progress bars on a terminal and prints plain
periodic lines in logs (``frcnn_cli.cli.console``); the default reports nothing. Messages for
the user (a skipped image, a resumed run) go through the ``frcnn`` logger.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("frcnn")


class Task:
    """One progress bar. ``update`` takes ``completed`` or ``advance`` and any named metrics."""

    def update(self, completed: int | None = None, advance: int = 0, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Reporter:
    """Opens progress tasks; this base class draws nothing (quiet mode, tests, library use)."""

    def task(self, description: str, total: int | None = None, completed: int = 0) -> Task:
        return Task()


SILENT = Reporter()
