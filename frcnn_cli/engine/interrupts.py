"""Ctrl-C during training: held back while an iteration updates the weights."""

from __future__ import annotations

import signal
import threading

from frcnn_cli.errors import FrcnnError


class Interrupted(FrcnnError):
    """Ctrl-C: the run saved its state and can be resumed."""

    exit_code = 130


class HoldInterrupts:
    """Holds Ctrl-C (SIGINT) back while an iteration updates the weights.

    A run stopped half-way through ``optimizer.step()``, or after the iteration's RPN and RoI
    sampling drew from the random generators, would save a state that no iteration boundary
    had, and its resume would not continue the run exactly. Between ``begin()`` and ``end()``
    a first Ctrl-C is noted and raised as ``KeyboardInterrupt`` by ``end()``; a second one
    raises at once (``forced``: the state in memory is then half-way and must not be saved).
    Outside (loading the next batch, validating) Ctrl-C stops at once, which is safe: nothing
    there changes the weights or draws from the trainer's generators.
    """

    def __init__(self) -> None:
        self.pending = self.forced = self._installed = False
        self._previous = None

    def _hold(self, signum, frame) -> None:
        if self.pending:
            self.forced = True
            raise KeyboardInterrupt
        self.pending = True

    def begin(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._hold)
            self._installed = True

    def end(self) -> None:
        self.release()
        if self.pending:
            raise KeyboardInterrupt

    def release(self) -> None:
        """Puts the previous Ctrl-C handler back."""
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
