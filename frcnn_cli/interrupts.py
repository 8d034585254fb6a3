"""Ctrl-C and SIGTERM during training: held back while an iteration updates the weights.

SIGTERM is what schedulers (SLURM, Kubernetes, torchrun stopping its workers) send before they
kill a job. It is raised as :class:`Terminated`, a ``KeyboardInterrupt``, so a run treats it
as Ctrl-C: it saves its state at an iteration boundary and says how to resume.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from frcnn_cli.errors import FrcnnError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python raises Ctrl-C's KeyboardInterrupt."""


class Interrupted(FrcnnError):
    """Ctrl-C (exit 130) or SIGTERM (exit 143): the run saved its state and can be resumed."""

    exit_code = 130

    def __init__(self, message: str, terminated: bool = False) -> None:
        super().__init__(message)
        if terminated:
            self.exit_code = 128 + signal.SIGTERM


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def terminate_as_interrupt() -> None:
    """From now on SIGTERM raises :class:`Terminated` in the main thread instead of killing
    the process at once: outputs being written are left whole, runs save their state."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """:func:`terminate_as_interrupt` for the duration of the block, then the old handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stops_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM do nothing during the block, then their handlers are back: a run
    already stopping and saying why (its state saved, the resume command composed) is not cut
    short by a second stop, such as torchrun's SIGTERM after another process died first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class HoldInterrupts:
    """Holds Ctrl-C (SIGINT) and SIGTERM back while an iteration updates the weights.

    A run stopped half-way through ``optimizer.step()``, or after the iteration's RPN and RoI
    sampling drew from the random generators, would save a state that no iteration boundary
    had, and its resume would not continue the run exactly. Between ``begin()`` and ``end()``
    a first signal is noted and raised by ``end()`` (``KeyboardInterrupt``, or
    :class:`Terminated` for SIGTERM); a second one raises at once (``forced``: the state in
    memory is then half-way and must not be saved). Outside (loading the next batch,
    validating) a signal stops at once, which is safe: nothing there changes the weights or
    draws from the trainer's generators.
    """

    def __init__(self) -> None:
        self.pending = self.forced = self.terminated = self._installed = False
        self._previous: dict[int, object] = {}

    def _hold(self, signum, frame) -> None:
        self.terminated = self.terminated or signum == signal.SIGTERM
        if self.pending:
            self.forced = True
            raise Terminated if self.terminated else KeyboardInterrupt
        self.pending = True

    def begin(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._hold) for s in STOP_SIGNALS}
            self._installed = True

    def end(self) -> None:
        self.release()
        if self.pending:
            raise Terminated if self.terminated else KeyboardInterrupt

    def release(self) -> None:
        """Puts the previous handlers back."""
        if self._installed:
            for s, previous in self._previous.items():
                signal.signal(s, previous)
            self._installed = False
