"""Unsafe files: every command that loads a file with torch (or YAML) refuses a pickle payload
with a clear one-line error, exit code 2, and the payload never runs.

Each crafted file would create a marker file when unpickled; each fixture first proves that
(an unsafe load does create it), so a test that sees no marker after a command means the
command refused the file, not that the payload was a dud.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reliability import FAST, digest, small_shapes


class Payload:
    """Unpickling this runs code that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))

def assert_refused(r, marker: Path, *fragments: str, command: str = "") -> None:
    """Exit 2 with one ``error:`` line holding ``fragments`` and nothing after it, no
    traceback, and the payload never ran."""
    where = f"{command}: {r.output}"
    assert not marker.exists(), f"{command}: the payload ran"
    assert r.exit_code == 2, where
    assert "Traceback" not in r.output, where
    lines = r.output.strip().splitlines()
    assert lines and lines[-1].startswith("error:"), where
    assert sum(line.startswith("error:") for line in lines) == 1, where
    for fragment in fragments:
        assert fragment in lines[-1], where


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 64 px shapes set: train.json (4 images), val.json (2 images), images/."""
    return small_shapes(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def good_checkpoint(data, tmp_path_factory):
    """An untrained but complete model checkpoint for the shapes classes."""
    from frcnn_cli import config
    from frcnn_cli.checkpoint import checkpoint_meta, save_checkpoint
    from frcnn_cli.data.annotations import load_annotations
    from frcnn_cli.model.faster_rcnn import build_model

    recipe = config.load_recipe("shapes", ["input.min_size=64", "input.max_size=64"])
    classes = load_annotations(data / "train.json").classes
    model = build_model(recipe, len(classes), classes=classes)
    path = tmp_path_factory.mktemp("good") / "model.pt"
    save_checkpoint({"model": model.state_dict(), "meta": checkpoint_meta(model)}, path)
    return path


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "payload-ran"


def _potent(path: Path, marker: Path) -> Path:
    """Check that loading ``path`` unsafely runs its payload, then clean up."""
    with contextlib.suppress(Exception):  # the payload runs before anything can fail
        torch.load(path, weights_only=False)
    assert marker.exists(), f"{path} is not a working payload"
    marker.unlink()
    return path


def make_evil_checkpoint(good: Path, path: Path, marker: Path, kind: str = "zip") -> Path:
    """A real checkpoint with a payload in its meta, in torch's zip format, its legacy format
    or as a bare pickle stream."""
    from frcnn_cli.checkpoint import load_checkpoint

    ckpt = load_checkpoint(good)
    ckpt["meta"]["note"] = Payload(marker)
    if kind == "raw-pickle":
        path.write_bytes(pickle.dumps(ckpt, protocol=2))
    else:
        torch.save(ckpt, path, _use_new_zipfile_serialization=kind == "zip")
    return _potent(path, marker)


@pytest.fixture(params=["zip", "legacy", "raw-pickle"])
def evil_checkpoint(request, good_checkpoint, tmp_path, marker):
    return make_evil_checkpoint(good_checkpoint, tmp_path / "evil.pt", marker, request.param)


@pytest.fixture
def good_proposals(data, tmp_path):
    """A valid proposals file for the training set (one box per image)."""
    from frcnn_cli.data.annotations import load_annotations
    from frcnn_cli.proposals.files import save_proposals

    ann = load_annotations(data / "train.json")
    ids = [im["id"] for im in ann.images]
    props = {i: (torch.tensor([[4.0, 4.0, 40.0, 40.0]]), torch.tensor([0.9])) for i in ids}
    return save_proposals(props, ann.images, tmp_path / "good-proposals.pt", {}, ann.path)


@pytest.fixture(params=["zip", "raw-pickle"])
def evil_proposals(request, good_proposals, tmp_path, marker):
    """A proposals file as frcnn propose writes it, with a payload in its meta."""
    obj = torch.load(good_proposals, weights_only=True)
    obj["meta"] = {"checkpoint": Payload(marker)}
    path = tmp_path / "evil-proposals.pt"
    if request.param == "raw-pickle":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path)
    return _potent(path, marker)


def test_eval_predict_propose_refuse_a_payload_checkpoint(cli, data, evil_checkpoint, marker,
                                                          tmp_path):
    before = digest(data, evil_checkpoint)
    runs = {
        "eval": ("eval", evil_checkpoint, "--data", data / "val.json", "--json",
                 tmp_path / "e.json", "--device", "cpu"),
        "eval --proposals": ("eval", evil_checkpoint, "--data", data / "val.json",
                             "--proposals", "--json", tmp_path / "r.json", "--device", "cpu"),
        "predict": ("predict", evil_checkpoint, data / "images" / "val", "--out",
                    tmp_path / "pred", "--device", "cpu"),
        "propose": ("propose", evil_checkpoint, "--data", data / "train.json", "--out",
                    tmp_path / "p.pt", "--device", "cpu"),
    }
    for name, args in runs.items():
        r = cli(*args)
        assert_refused(r, marker, "not safe to load", "pickle payload", str(evil_checkpoint),
                       command=name)
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "r.json").exists()
    assert not (tmp_path / "p.pt").exists()
    assert not (tmp_path / "pred" / "detections.json").exists()
    assert digest(data, evil_checkpoint) == before


def test_training_refuses_a_payload_init_checkpoint(cli, data, evil_checkpoint, good_proposals,
                                                    marker, tmp_path):
    before = digest(data, evil_checkpoint)
    train = data / "train.json"
    runs = [
        ("train", "--recipe", "shapes", "--train", train, "--out", tmp_path / "a",
         "--init", evil_checkpoint, "--iters", 1, *FAST),
        ("train-rpn", "--recipe", "shapes", "--train", train, "--out", tmp_path / "b",
         "--stage", 2, "--init", evil_checkpoint, "--iters", 1, *FAST),
        ("train-detector", "--recipe", "shapes", "--train", train, "--out", tmp_path / "c",
         "--stage", 2, "--init", evil_checkpoint, "--proposals", good_proposals,
         "--iters", 1, *FAST),
    ]
    for args in runs:
        r = cli(*args)
        assert_refused(r, marker, "not safe to load", str(evil_checkpoint))
    for run in ("a", "b", "c"):
        assert not (tmp_path / run / "last.pt").exists()
        assert not (tmp_path / run / "model.pt").exists()
    assert digest(data, evil_checkpoint) == before


def test_train_detector_refuses_a_payload_proposals_file(cli, data, evil_proposals, marker,
                                                         tmp_path):
    before = digest(data, evil_proposals)
    r = cli("train-detector", "--recipe", "shapes", "--train", data / "train.json",
            "--proposals", evil_proposals, "--out", tmp_path / "run", "--stage", 1,
            "--iters", 1, *FAST)
    assert_refused(r, marker, "proposals file", "not safe to load", str(evil_proposals))
    assert not (tmp_path / "run" / "model.pt").exists()
    assert digest(data, evil_proposals) == before


def test_backbone_weights_with_a_payload_are_refused(cli, data, tmp_path, marker):
    """--backbone-weights is loaded when the recipe uses ImageNet weights (MobileNetV3 here)."""
    path = tmp_path / "imagenet.pth"
    torch.save({"features.0.0.weight": torch.zeros(1), "x": Payload(marker)}, path)
    _potent(path, marker)
    r = cli("train", "--recipe", "voc07-mobilenet", "--train", data / "train.json",
            "--out", tmp_path / "run", "--backbone-weights", path, "--iters", 1,
            "--device", "cpu")
    assert_refused(r, marker, "backbone weights file", "not safe to load")


@pytest.fixture(scope="module")
def finished_run(cli_module, data, tmp_path_factory):
    """A real one-iteration run folder (config.yaml, last.pt, model.pt)."""
    run = tmp_path_factory.mktemp("run") / "run"
    r = cli_module("train", "--recipe", "shapes", "--train", data / "train.json", "--out", run,
                   "--iters", 1, *FAST)
    assert r.exit_code == 0, r.output
    return run


@pytest.fixture(scope="module")
def cli_module():
    from typer.testing import CliRunner

    from frcnn_cli.cli.app import app

    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def _copy_run(run: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in ("config.yaml", "last.pt", "metrics.jsonl"):
        (dest / f).write_bytes((run / f).read_bytes())
    return dest


def test_resume_refuses_a_payload_in_last_pt(cli, finished_run, tmp_path, marker):
    from frcnn_cli.checkpoint import load_checkpoint

    run = _copy_run(finished_run, tmp_path / "run")
    state = load_checkpoint(run / "last.pt")
    state["rng"]["python"] = Payload(marker)
    torch.save(state, run / "last.pt")
    _potent(run / "last.pt", marker)
    before = digest(run)
    r = cli("train", "--resume", run)
    assert_refused(r, marker, "not safe to load", "last.pt")
    assert digest(run) == before and not (run / "model.pt").exists()


def test_yaml_with_python_tags_is_never_constructed(cli, finished_run, data, tmp_path, marker):
    """Run configs, recipes and YOLO data.yaml files are read with yaml.safe_load: a
    !!python tag is an error, never a call."""
    import yaml

    tag = f"!!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').close()\"]"
    yaml.unsafe_load(f"x: {tag}")  # the tag works when loaded unsafely...
    assert marker.exists()
    marker.unlink()

    run = _copy_run(finished_run, tmp_path / "run")
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + f"extra: {tag}\n")
    before = digest(run)
    r = cli("train", "--resume", run)
    assert not marker.exists() and r.exit_code == 2, r.output
    assert r.output.startswith(f"error: {run / 'config.yaml'} is not a valid run configuration")
    assert "Traceback" not in r.output and digest(run) == before
    # (that its message is one line is test_run_config_error_is_one_line's business)

    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: evil\nsolver: {{lr: {tag}}}\n")
    for args in (("recipe", "show", recipe),
                 ("train", "--recipe", recipe, "--train", data / "train.json", "--out",
                  tmp_path / "r2", "--iters", 1)):
        assert_refused(cli(*args), marker, "evil.yaml")

    yolo = tmp_path / "yolo"
    (yolo / "images").mkdir(parents=True)
    (yolo / "data.yaml").write_text(f"names: {tag}\n")
    r = cli("data", "convert", yolo, "--format", "yolo", "--out", tmp_path / "y.json")
    assert_refused(r, marker, "data.yaml")


def _command_exists(name: str) -> bool:
    from frcnn_cli.cli.app import app

    return any(c.name == name for c in app.registered_commands)


@pytest.mark.parametrize("command", ["export", "benchmark"])
def test_export_and_benchmark_refuse_a_payload_checkpoint(cli, command, good_checkpoint, marker,
                                                          tmp_path):
    assert _command_exists(command), command  # a removed command must not pass unnoticed
    evil_checkpoint = make_evil_checkpoint(good_checkpoint, tmp_path / "evil.pt", marker)
    args = (("export", evil_checkpoint, "--format", "onnx", "--out", tmp_path / "m.onnx")
            if command == "export" else ("benchmark", evil_checkpoint, "--device", "cpu"))
    before = digest(evil_checkpoint)
    assert_refused(cli(*args), marker, "not safe to load", str(evil_checkpoint))
    assert not (tmp_path / "m.onnx").exists()
    assert digest(evil_checkpoint) == before


def test_refusal_is_the_only_line_on_stderr(good_checkpoint, tmp_path, marker, data):
    """A pickle stream of protocol 4 or 5 (Python's default) makes torch print a warning with a
    site-packages path; the user should see only the one error line."""
    from frcnn_cli.checkpoint import load_checkpoint

    ckpt = load_checkpoint(good_checkpoint)
    ckpt["meta"]["note"] = Payload(marker)
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(ckpt, protocol=pickle.DEFAULT_PROTOCOL))
    _potent(path, marker)
    proc = subprocess.run([sys.executable, "-m", "frcnn_cli", "eval", str(path), "--data",
                           str(data / "val.json"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2 and not marker.exists()
    assert "not safe to load" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


def test_run_config_error_is_one_line(cli, finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path / "run")
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "extra: [1, 2\n")
    r = cli("train", "--resume", run)
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0, r.output
