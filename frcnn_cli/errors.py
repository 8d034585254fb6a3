"""Typed errors raised by library code.

Every error a user can cause (a bad file, a bad recipe value, a missing path) is a
:class:`FrcnnError`. The CLI turns it into one red line naming the culprit and exit code 2;
anything else is a bug and exits 1 with a hint to rerun with ``--debug``.
"""

from __future__ import annotations


class FrcnnError(Exception):
    """Base class of the errors a user can fix; ``str(error)`` is one line naming the culprit."""

    exit_code = 2


class DataError(FrcnnError):
    """A dataset, annotation file or image is malformed."""


class RecipeError(FrcnnError):
    """A recipe is unknown, unreadable, or has a bad key or value."""


class CheckpointError(FrcnnError):
    """A checkpoint or proposal file is missing, truncated, unsafe or of the wrong kind."""


class InputError(FrcnnError):
    """A path or argument is unusable: missing input, output over an input, unwritable folder."""


class TrainingError(FrcnnError):
    """Training cannot go on (a non-finite loss, say); the last good checkpoint is kept."""


class ExportError(FrcnnError):
    """An export that cannot be written, run or does not reproduce the model: a defect of the
    exporter or the runtime, not of the user's input, hence exit code 1 (not 2)."""

    exit_code = 1
