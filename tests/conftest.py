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
def shapes_four(shapes_data):
    """The first four training images of ``shapes_data`` (nine objects) as their own set."""
    import json

    data = json.loads((shapes_data / "train.json").read_text())
    images = data["images"][:4]
    ids = {im["id"] for im in images}
    data.update(images=images,
                annotations=[a for a in data["annotations"] if a["image_id"] in ids])
    path = shapes_data / "four.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="session")
def trained_shapes(shapes_four, tmp_path_factory):
    """A shapes detector that has learnt ``shapes_four`` by heart (120 iterations of
    ``frcnn train``), at 160 px (the 128 px files are resized by the model), with the paper's
    16 px minimum proposal size (so that it counts input pixels shows): the path of its
    ``model.pt``. A model trained this way finds those objects (VOC07 mAP > 0.8 on them); an
    untrained or mis-wired one does not."""
    from typer.testing import CliRunner

    from frcnn_cli.cli.app import app

    out = tmp_path_factory.mktemp("trained") / "run"
    args = ["train", "--recipe", "shapes", "--train", shapes_four, "--out", out,
            "--iters", 120, "--device", "cpu", "--seed", 0,
            "--set", "solver.images_per_batch=4", "--set", "solver.warmup_iters=10",
            "--set", "input.min_size=160", "--set", "input.max_size=160",
            "--set", "rpn.min_size=16", "--set", "data.num_workers=0"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return out / "model.pt"
