"""Shared fixtures. Tests run offline, on the CPU, on tiny data."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on two cores, two compute threads each: threads
    # that wait sleep instead of spinning, so a worker in Python code leaves its core to the
    # other's convolutions (4:46 against 6:12 with one thread each, here).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def cli():
    """Invoke the real CLI in-process: ``cli("data", "check", path)`` -> Result."""
    from typer.testing import CliRunner

    from frcnn_cli.cli.app import app

    runner = CliRunner()

    def run(*args):
        return runner.invoke(app, [str(a) for a in args])

    return run


@pytest.fixture
def one_thread():
    """Small models run faster on one thread, and do not wait on busy cores; restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def data(tmp_path):
    """A fresh 64 px shapes set per test (the trust and reliability tests damage it):
    train.json (4 images, ids 1..4), val.json (2, ids 1..2), images/."""
    from reliability import small_shapes

    return small_shapes(tmp_path / "data")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained, complete model checkpoint for the three shapes classes."""
    from reliability import untrained_checkpoint

    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


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
    untrained or mis-wired one does not. Trained once per session: pytest-xdist's workers
    share it through their common temporary folder (made fresh for each session)."""
    from filelock import FileLock
    from typer.testing import CliRunner

    from frcnn_cli.cli.app import app

    shared = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp().parent if shared else tmp_path_factory.mktemp("t")
    out = root / "trained-shapes" / "run"
    with FileLock(str(root / "trained-shapes.lock")):
        if not (out / "model.pt").is_file():
            args = ["train", "--recipe", "shapes", "--train", shapes_four, "--out", out,
                    "--iters", 120, "--device", "cpu", "--seed", 0,
                    "--set", "solver.images_per_batch=4", "--set", "solver.warmup_iters=10",
                    "--set", "input.min_size=160", "--set", "input.max_size=160",
                    "--set", "rpn.min_size=16", "--set", "data.num_workers=0"]
            result = CliRunner().invoke(app, [str(a) for a in args])
            assert result.exit_code == 0, result.output
    return out / "model.pt"


@pytest.fixture(scope="session")
def shapes_exports(trained_shapes):
    """``trained_shapes`` exported once per session from one capture, as ``frcnn export``
    writes it: ``{"onnx": path, "torchscript": path}``. Shared by the workers as the model is
    (exports take most of the time of the tests that run them)."""
    from filelock import FileLock

    from frcnn_cli import load_model
    from frcnn_cli.export import capture as capture_mod
    from frcnn_cli.export import export_bytes
    from frcnn_cli.export import onnx as onnx_export
    from frcnn_cli.export import torchscript as torchscript_export

    folder = trained_shapes.parent.parent
    paths = {"onnx": folder / "model.onnx", "torchscript": folder / "model.ts"}
    with FileLock(str(folder / "exports.lock")):
        if not all(p.is_file() for p in paths.values()):
            model = load_model(trained_shapes)
            captured = capture_mod.capture(model)
            with pytest.MonkeyPatch.context() as patch:
                for module in (onnx_export, torchscript_export):
                    patch.setattr(module, "capture", lambda _: captured)
                for fmt, path in paths.items():
                    path.write_bytes(export_bytes(model, fmt))
    return paths
