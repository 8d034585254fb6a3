"""Beyond one process: eval, predict and propose sharded over torchrun's processes (gloo on
the CPU) give exactly the one-process results; two torchrun launchers acting as two nodes
train the model one launcher of two processes trains; a killed process ends the run with a
clear error in bounded time, its folder resumable."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability import FAST

from frcnn_cli.checkpoint import load_checkpoint
from frcnn_cli.proposals.files import read_raw

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc: int = 2, launcher: list[str] | None = None, **kw):
    """``torchrun --nproc-per-node N -m frcnn_cli ARGS`` (one launcher, its own port)."""
    launcher = launcher or ["--standalone", "--nproc-per-node", str(nproc)]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "frcnn_cli",
           *map(str, args)]
    if "--standalone" not in launcher:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=ENV, **kw)
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300, **kw)


def unmarked(path: Path) -> list[dict]:
    """A detections file's entries without frcnn's mark."""
    return [{k: v for k, v in d.items() if k != "frcnn"} for d in json.loads(path.read_text())]


def test_sharded_eval_equals_one_process(cli, trained_shapes, shapes_data, tmp_path):
    """Two processes each detect half the images; the main one scores all: the same mAP and
    the same detections, whole images and tiled (the tiles of each image shared)."""
    val = shapes_data / "val.json"
    for tiled in ([], ["--tile", 64]):
        name = "tiled" if tiled else "whole"
        one, two = tmp_path / f"one-{name}", tmp_path / f"two-{name}"
        args = ["eval", trained_shapes, "--data", val, *tiled, "--device", "cpu"]
        r = cli(*args, "--json", one.with_suffix(".json"), "--save-detections",
                one.with_suffix(".dets.json"))
        assert r.exit_code == 0, r.output
        proc = torchrun(*args, "--json", two.with_suffix(".json"), "--save-detections",
                        two.with_suffix(".dets.json"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(one.with_suffix(".json").read_text()) == \
            json.loads(two.with_suffix(".json").read_text())
        assert unmarked(one.with_suffix(".dets.json")) == unmarked(two.with_suffix(".dets.json"))
        assert len(unmarked(one.with_suffix(".dets.json"))) > 0
        assert proc.stdout.count("VOC2007 11-point") == 1  # the main process alone prints


def test_sharded_predict_and_propose_write_the_one_process_files(cli, trained_shapes,
                                                                 shapes_data, tmp_path):
    images = shapes_data / "images" / "val"
    r = cli("predict", trained_shapes, images, "--out", tmp_path / "one", "--device", "cpu")
    assert r.exit_code == 0, r.output
    proc = torchrun("predict", trained_shapes, images, "--out", tmp_path / "two", "--device",
                    "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert unmarked(tmp_path / "one" / "detections.json") == \
        unmarked(tmp_path / "two" / "detections.json")
    drawings = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert drawings == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(drawings) == 9  # eight drawings, every one of them by the main process

    data = shapes_data / "val.json"
    r = cli("propose", trained_shapes, "--data", data, "--out", tmp_path / "one.pt",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    proc = torchrun("propose", trained_shapes, "--data", data, "--out", tmp_path / "two.pt",
                    "--device", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one, two = read_raw(tmp_path / "one.pt"), read_raw(tmp_path / "two.pt")
    for key in ("image_ids", "counts", "boxes", "scores"):
        assert torch.equal(one[key], two[key]), key
    assert one["file_names"] == two["file_names"]


def test_two_nodes_train_what_one_node_of_two_processes_trains(cli, shapes_data, tmp_path):
    """Two torchrun launchers, one process each, rendezvous as two nodes on this machine. The
    run's validation is sharded too: its eval.json is what eval of its model.pt gives."""
    train = ["train", "--recipe", "shapes", "--train", shapes_data / "train.json", "--iters",
             4, "--seed", 3, *FAST]
    proc = torchrun(*train, "--out", tmp_path / "standalone", "--val", shapes_data / "val.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = cli("eval", tmp_path / "standalone" / "model.pt", "--data", shapes_data / "val.json",
            "--json", tmp_path / "one.json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    validated = json.loads((tmp_path / "standalone" / "eval.json").read_text())
    assert validated["mAP"] == json.loads((tmp_path / "one.json").read_text())["mAP"]
    port = free_port()
    nodes = [torchrun(*train, "--out", tmp_path / "nodes",
                      launcher=["--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node",
                                "1", "--master-addr", "127.0.0.1", "--master-port", str(port)])
             for rank in (0, 1)]
    for node in nodes:
        output, _ = node.communicate(timeout=300)
        assert node.returncode == 0, output
    one = load_checkpoint(tmp_path / "standalone" / "model.pt")["model"]
    two = load_checkpoint(tmp_path / "nodes" / "model.pt")["model"]
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_a_killed_process_ends_the_run_with_a_clear_error(shapes_data, tmp_path):
    """One process is killed mid-run: the others stop within seconds (torchrun's SIGTERM, or
    the broken collective), say what happened, and leave last.pt for --resume."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "frcnn_cli", "train", "--recipe", "shapes", "--train",
           str(shapes_data / "train.json"), "--out", str(run), "--iters", "100000",
           "--checkpoint-every", "2", *FAST]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=ENV)
    deadline = time.monotonic() + 180
    while not (run / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (run / "last.pt").is_file()
    victim = _worker(launcher.pid, rank=1)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    output, _ = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert time.monotonic() - killed < 60, output
    said = " ".join(output.split())
    assert ("terminated (SIGTERM) at iteration" in said
            or "another process of the run stopped" in said), output
    assert "Resume with" in said, output
    assert load_checkpoint(run / "last.pt")["meta"]["iteration"] >= 2


def _worker(launcher: int, rank: int) -> int:
    """The pid of the launcher's worker process of this ``rank`` (its RANK environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = next((line.split()[1] for line in status.splitlines()
                       if line.startswith("PPid:")), None)
        if parent == str(launcher) and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    pytest.fail(f"no worker of rank {rank} under process {launcher}")
