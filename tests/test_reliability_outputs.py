"""Outputs: no command writes over its input (named directly, through another spelling, a
link, or as one of the dataset's images), and an unwritable output place is a clear one-line
error before any slow work, with every input left byte for byte as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from reliability import FAST, assert_user_error, digest

# the plain progress lines of slow work: "detect 2/4  3.1/s", "reading images 1/6", ...
PROGRESS = re.compile(r"^(detect|proposals|train|predict|synthesising|reading images) \d",
                      re.MULTILINE)
@pytest.fixture
def detections(data, tmp_path):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10],
                                 "score": 0.9}]))
    return path


def _copy_checkpoint(checkpoint: Path, tmp_path: Path) -> Path:
    path = tmp_path / "ckpt" / "model.pt"
    path.parent.mkdir()
    shutil.copy(checkpoint, path)
    return path


def _writes_over_inputs(data: Path, ckpt: Path, dets: Path) -> dict[str, tuple]:
    """Every command that writes a file, told to write it over one of its inputs."""
    train, val = data / "train.json", data / "val.json"
    other = data / "sub" / ".." / "val.json"  # the same file, spelled differently
    return {
        "data convert --out SRC": ("data", "convert", train, "-f", "coco", "--out", train),
        "data check --fix ANN": ("data", "check", train, "--fix", train),
        "data split --out ANN's folder": ("data", "split", train, "--out", data),
        "data stats --json ANN": ("data", "stats", train, "--json", train),
        "anchors --json DATA": ("anchors", "--recipe", "shapes", "--data", train, "--json",
                                train),
        "train --out ANN": ("train", "--recipe", "shapes", "--train", train, "--out", train,
                            "--iters", 1, *FAST),
        "propose --out CKPT": ("propose", ckpt, "--data", val, "--out", ckpt),
        "propose --out DATA": ("propose", ckpt, "--data", val, "--out", other),
        "eval --json CKPT": ("eval", ckpt, "--data", val, "--json", ckpt),
        "eval --json DATA": ("eval", ckpt, "--data", val, "--json", other),
        "eval --save-detections DATA": ("eval", ckpt, "--data", val, "--save-detections", val),
        "eval --detections --json DETS": ("eval", "--detections", dets, "--data", val,
                                          "--json", dets),
        "eval --proposals --json DATA": ("eval", ckpt, "--data", val, "--proposals",
                                         "--json", val),
        "predict --out the image folder": ("predict", ckpt, data / "images" / "val", "--out",
                                           data / "images" / "val"),
        "export --out CKPT": ("export", ckpt, "--format", "onnx", "--out", ckpt),
        "export --out --check-image": ("export", ckpt, "--format", "torchscript",
                                       "--check-image", data / "images" / "val" / "000001.jpg",
                                       "--out", data / "images" / "val" / "000001.jpg"),
        "benchmark --json CKPT": ("benchmark", ckpt, "--json", ckpt),
    }


def test_no_command_writes_over_its_input(cli, data, checkpoint, detections, tmp_path):
    (data / "sub").mkdir()
    ckpt = _copy_checkpoint(checkpoint, tmp_path)
    before = digest(data, ckpt, detections)
    for name, args in _writes_over_inputs(data, ckpt, detections).items():
        assert _command_exists(args[0]), name  # a removed command must not pass unnoticed
        r = cli(*args)
        line = assert_user_error(r)
        assert any(words in line for words in ("same file as the input", "is an input",
                                               "would replace the input")), (name, line)
        assert digest(data, ckpt, detections) == before, name


def test_a_link_to_the_input_is_the_input(cli, data, tmp_path):
    train = data / "train.json"
    before = digest(data)
    (tmp_path / "soft.json").symlink_to(train)
    os.link(train, tmp_path / "hard.json")
    for link in ("soft.json", "hard.json"):
        r = cli("data", "check", train, "--fix", tmp_path / link)
        assert_user_error(r, "same file as the input")
        r = cli("data", "convert", train, "-f", "coco", "--out", tmp_path / link)
        assert_user_error(r, "same file as the input")
    assert digest(data) == before


def test_no_output_replaces_an_image_of_the_dataset(cli, data, checkpoint, tmp_path):
    """A slip of the keyboard (--fix images/1.jpg) must not turn a photo into JSON."""
    train, val = data / "train.json", data / "val.json"
    train_image = data / json.loads(train.read_text())["images"][0]["file_name"]
    val_image = data / json.loads(val.read_text())["images"][0]["file_name"]
    before = digest(data)
    runs = {
        "data check --fix": ("data", "check", train, "--fix", train_image),
        "data convert --out": ("data", "convert", train, "-f", "coco", "--out", train_image),
        "data stats --json": ("data", "stats", train, "--json", train_image),
        "eval --json": ("eval", checkpoint, "--data", val, "--json", val_image, "--device",
                        "cpu"),
        "eval --save-detections": ("eval", checkpoint, "--data", val, "--save-detections",
                                   val_image, "--device", "cpu"),
        "eval --detections --json": ("eval", "--detections", tmp_path / "dets.json",
                                     "--data", val, "--json", val_image),
    }
    (tmp_path / "dets.json").write_text("[]")
    for name, args in runs.items():
        r = cli(*args)
        line = assert_user_error(r)
        assert "same file as the input" in line or "holds an image" in line, (name, line)
        assert digest(data) == before, name


def test_propose_does_not_replace_an_image_of_the_dataset(cli, data, checkpoint):
    val = data / "val.json"
    image = data / json.loads(val.read_text())["images"][0]["file_name"]
    before = digest(data)
    r = cli("propose", checkpoint, "--data", val, "--out", image, "--device", "cpu")
    assert digest(data) == before
    assert_user_error(r, "same file as the input")


def test_synth_never_replaces_an_existing_dataset(cli, data):
    before = digest(data)
    r = cli("data", "synth", data, "--train", 2, "--val", 1, "--size", 32)
    assert_user_error(r, "already holds a dataset", "train.json")
    assert digest(data) == before
    # a YOLO-style folder with images/train/ but no JSON is protected too
    yolo = data / "yolo"
    (yolo / "images" / "train").mkdir(parents=True)
    (yolo / "images" / "train" / "000001.jpg").write_bytes(b"a user's photo")
    r = cli("data", "synth", yolo, "--train", 2, "--val", 1, "--size", 32)
    assert_user_error(r, "already holds a dataset", "images")
    assert (yolo / "images" / "train" / "000001.jpg").read_bytes() == b"a user's photo"
    # an empty folder is fine
    (data / "empty").mkdir()
    assert cli("data", "synth", data / "empty", "--train", 1, "--val", 1,
               "--size", 32).exit_code == 0


@pytest.fixture
def unwritable(tmp_path):
    """A folder no file can be created in. Root ignores permission bits, so there it is
    /proc (which holds no regular files); others get a folder with its write bit cleared."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
    elif Path("/proc/self").is_dir():
        yield Path("/proc")
    else:
        pytest.skip("running as root without /proc: no folder is unwritable here")


def _writes_into(folder: Path, data: Path, ckpt: Path) -> dict[str, tuple]:
    """Every command that writes, told to write into ``folder``."""
    train, val = data / "train.json", data / "val.json"
    return {
        "data synth": ("data", "synth", folder / "synth", "--train", 1, "--val", 1,
                       "--size", 32),
        "data convert": ("data", "convert", train, "-f", "coco", "--out", folder / "c.json"),
        "data check --fix": ("data", "check", train, "--fix", folder / "fixed.json"),
        "data split": ("data", "split", train, "--out", folder / "split"),
        "data stats --json": ("data", "stats", train, "--json", folder / "stats.json"),
        "data stats --plot": ("data", "stats", train, "--plot", folder / "plots"),
        "anchors --json": ("anchors", "--recipe", "shapes", "--json", folder / "a.json"),
        "train --out": ("train", "--recipe", "shapes", "--train", train, "--out",
                        folder / "run", "--iters", 1, *FAST),
        "propose --out": ("propose", ckpt, "--data", val, "--out", folder / "p.pt",
                          "--device", "cpu"),
        "eval --json": ("eval", ckpt, "--data", val, "--json", folder / "e.json",
                        "--device", "cpu"),
        "eval --save-detections": ("eval", ckpt, "--data", val, "--save-detections",
                                   folder / "d.json", "--device", "cpu"),
        "eval --proposals --json": ("eval", ckpt, "--data", val, "--proposals", "--json",
                                    folder / "r.json", "--device", "cpu"),
        "predict --out": ("predict", ckpt, data / "images" / "val", "--out", folder / "pred",
                          "--device", "cpu"),
        "export --out": ("export", ckpt, "--format", "onnx", "--out", folder / "m.onnx"),
        "benchmark --json": ("benchmark", ckpt, "--runs", 1, "--json", folder / "b.json"),
    }


def _command_exists(name: str) -> bool:
    """A top-level command or group of this checkout (export and benchmark came later)."""
    from frcnn_cli.cli.app import app

    return any(c.name == name for c in [*app.registered_commands, *app.registered_groups])


@pytest.mark.parametrize("place", ["unwritable folder", "under a regular file"])
def test_unwritable_output_is_one_line_before_any_work(cli, data, checkpoint, tmp_path, place,
                                                       request):
    if place == "unwritable folder":
        folder = request.getfixturevalue("unwritable")
    else:
        (tmp_path / "a-file").write_text("not a folder")
        folder = tmp_path / "a-file"
    before = digest(data, checkpoint)
    for name, args in _writes_into(folder, data, checkpoint).items():
        assert _command_exists(args[0]), name  # a removed command must not pass unnoticed
        r = cli(*args)
        line = assert_user_error(r)
        assert str(folder) in line and any(
            words in line for words in ("not writable", "cannot create", "is a file")), \
            (name, line)
        # refused before the slow part: no progress line (images read, model run)
        assert not PROGRESS.search(r.output), (name, r.output)
    assert digest(data, checkpoint) == before
    assert not [p for p in tmp_path.rglob("*.tmp")]
