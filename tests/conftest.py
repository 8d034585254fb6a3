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


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """A small synthetic shapes set, made once per session: the folder holding ``train.json``
    (24 images), ``val.json`` (8 images) and ``images/``, 128 px, 3 classes, seed 0."""
    from frcnn_cli.data.synth import synthesize

    folder = tmp_path_factory.mktemp("shapes")
    synthesize(folder, train=24, val=8, size=128, seed=0, num_classes=3, workers=1)
    return folder


@pytest.fixture(scope="session")
def trained_shapes(shapes_data, tmp_path_factory):
    """A shapes detector trained briefly by ``frcnn train`` at 160 px (the 128 px files are
    resized by the model), with the paper's 16 px minimum proposal size (so the rule that it
    counts input pixels shows): the path of its ``model.pt``."""
    from typer.testing import CliRunner

    from frcnn_cli.cli.app import app

    out = tmp_path_factory.mktemp("trained") / "run"
    args = ["train", "--recipe", "shapes", "--train", shapes_data / "train.json", "--out", out,
            "--iters", 20, "--device", "cpu", "--seed", 0,
            "--set", "solver.images_per_batch=2", "--set", "input.min_size=160",
            "--set", "input.max_size=160", "--set", "rpn.min_size=16",
            "--set", "data.num_workers=0"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return out / "model.pt"
