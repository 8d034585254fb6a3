"""Everything the CLI prints goes through here: messages, tables and progress.

Text is printed as it is, never read as rich markup: file names, class names and error
messages hold square brackets (``images/[draft] shot.jpg``, ``[x, y, w, h]``) that markup
would swallow. Style comes as ``(text, style)`` parts: ``info(("note:", "yellow"), " ...")``.

On a terminal, progress is a rich bar with the task's metrics; when output is not a terminal
(CI logs, ``| tee``), a plain line every few seconds; with ``--quiet``, nothing but errors and
results.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from frcnn_cli.progress import Reporter, Task

console = Console()
err_console = Console(stderr=True)


class _State:
    quiet = False
    debug = False


state = _State()


def setup_logging(quiet: bool = False, debug: bool = False) -> None:
    """Route the ``frcnn`` logger to stderr: warnings always, info unless quiet. Under
    torchrun the processes other than the main one print only their errors: the main one
    speaks for the run."""
    helper = int(os.environ.get("RANK", "0")) > 0
    state.quiet, state.debug = quiet or helper, debug
    logger = logging.getLogger("frcnn")
    logger.handlers.clear()
    handler = RichHandler(console=err_console, show_time=False, show_path=False,
                          markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.ERROR if helper
                    else logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


Part = str | tuple[str, str]  # plain text, or (text, rich style)


def info(*parts: Part) -> None:
    """A message for the user (suppressed by --quiet): ``parts`` as plain text (see the
    module doc)."""
    if not state.quiet:
        console.print(Text.assemble(*parts), soft_wrap=True)


def result(*parts: Part) -> None:
    """A command's outcome (where it wrote, the figure it measured): printed even with --quiet,
    once under torchrun (by the main process)."""
    if os.environ.get("RANK", "0") == "0":
        console.print(Text.assemble(*parts), soft_wrap=True)


def error(message: str) -> None:
    """One red line on stderr; ``message`` as plain text."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False,
                      soft_wrap=True)


def table(title: str | None, columns: list[str], rows: list[list[Any]],
          justify_numbers: bool = True) -> Table:
    """Build and print a rich table; numbers are right-aligned and floats shown with 4 digits.
    Cells and the title are plain text; a ``(text, style)`` cell is styled."""
    t = Table(title=Text(title) if title is not None else None, title_justify="left",
              show_edge=False, header_style="bold")
    first = rows[0] if rows else []
    for i, col in enumerate(columns):
        numeric = justify_numbers and i < len(first) and isinstance(first[i], (int, float))
        t.add_column(Text(col), justify="right" if numeric else "left")
    for row in rows:
        t.add_row(*[Text(v[0], style=v[1]) if isinstance(v, tuple) else Text(_fmt(v))
                    for v in row])
    console.print(t)
    return t


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _fmt_fields(fields: dict[str, Any]) -> str:
    parts = []
    for k, v in fields.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{k} {v:.3f}")
        else:
            parts.append(f"{k} {v}")
    return "  ".join(parts)


class _RateColumn(ProgressColumn):
    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f}/s" if speed else "-/s", style="cyan")


class _RichTask(Task):
    def __init__(self, progress: Progress, task_id: Any) -> None:
        self.progress, self.task_id = progress, task_id

    def update(self, completed: int | None = None, advance: int = 0, **fields: Any) -> None:
        kw: dict[str, Any] = {"advance": advance}
        if completed is not None:
            kw = {"completed": completed}
        if fields:
            kw["fields"] = _fmt_fields(fields)
        self.progress.update(self.task_id, **kw)

    def close(self) -> None:
        self.progress.stop()


class _PlainTask(Task):
    """Prints ``description  n/total  fields`` at most every ``every`` seconds, and at the end."""

    def __init__(self, description: str, total: int | None, completed: int, every: float) -> None:
        self.description, self.total, self.completed = description, total, completed
        self.every, self.start = every, time.monotonic()
        self.start_completed = completed
        self.last, self.fields = 0.0, ""

    def update(self, completed: int | None = None, advance: int = 0, **fields: Any) -> None:
        self.completed = completed if completed is not None else self.completed + advance
        if fields:
            self.fields = _fmt_fields(fields)
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._print()

    def _print(self) -> None:
        elapsed = time.monotonic() - self.start
        done = self.completed - self.start_completed
        rate = f"{done / elapsed:.2f}/s" if elapsed > 0 and done else "-"
        total = f"/{self.total}" if self.total else ""
        print(f"{self.description} {self.completed}{total}  {rate}  {self.fields}".rstrip(),
              flush=True)

    def close(self) -> None:
        self._print()


class ConsoleReporter(Reporter):
    """Rich bars on a terminal, plain lines elsewhere, nothing when quiet."""

    def __init__(self, quiet: bool | None = None, plain_every: float = 10.0) -> None:
        self.quiet = state.quiet if quiet is None else quiet
        self.plain_every = plain_every

    def task(self, description: str, total: int | None = None, completed: int = 0) -> Task:
        if self.quiet:
            return Task()
        if not console.is_terminal:
            return _PlainTask(description, total, completed, self.plain_every)
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            _RateColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[fields]}", markup=False), console=console, transient=False)
        progress.start()
        task_id = progress.add_task(description, total=total, completed=completed, fields="")
        return _RichTask(progress, task_id)


def reporter() -> Reporter:
    """The reporter for the current invocation (respects --quiet)."""
    return ConsoleReporter()


# --------------------------------------------------------------------------- shared tables


def tiled_table(images, tiling, kept: str, rows: int = 20) -> None:
    """Tiled prediction: one row per image (the first ``rows``), its size, tiles and
    detections (``kept`` says which)."""
    table(f"tiled: {tiling.size} px tiles, overlap {tiling.overlap:g}, at most "
          f"{tiling.max_detections} detections per image",
          ["image", "width", "height", "tiles", f"detections ({kept})"],
          [[r.name, r.width, r.height, r.tiles, r.detections] for r in images[:rows]])
    if len(images) > rows:
        info(f"... and {len(images) - rows} more image(s): "
             f"{sum(r.tiles for r in images[rows:])} tiles, "
             f"{sum(r.detections for r in images[rows:])} detections")


def proposal_timing(source) -> None:
    """Where a detector's external proposals came from, and their seconds per image against
    the network's (``source``: a :class:`~frcnn_cli.proposals.sources.ExternalProposals`
    that ran, or None)."""
    if source is None or not source.images:
        return
    proposals, network = source.proposal_seconds_per_image, source.network_seconds_per_image
    info(f"proposals: {source.describe()}")
    result(f"seconds per image: proposals {proposals:.3f}, detector network {network:.3f}"
           + (f" (the proposals take {proposals / network:.1f}x the network's time)"
              if network > 0 and proposals > network else ""))
