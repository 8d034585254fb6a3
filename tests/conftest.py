"""Shared fixtures. Tests run offline, on the CPU, on tiny data."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def cli():
    """Invoke the real CLI in-process: ``cli("data", "check", path)`` -> Result."""
    from typer.testing import CliRunner

    from frcnn_cli.cli.app import app

    runner = CliRunner()

    def run(*args):
        return runner.invoke(app, [str(a) for a in args])

    return run
