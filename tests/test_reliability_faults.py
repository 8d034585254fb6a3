"""Faults during training: a SIGKILL, a crash in the middle of writing a checkpoint, a full
disk, a diverging loss. Each leaves a loadable last checkpoint the run resumes from; and two
fresh runs with one seed give the same weights bit for bit."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from frcnn_cli.checkpoint import load_checkpoint

FAST = ["--set", "input.min_size=64", "--set", "input.max_size=64", "--set",
        "data.num_workers=0", "--set", "solver.images_per_batch=2", "--set",
        "solver.warmup_iters=0", "--set", "train.log_every=1", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 64 px shapes set: train.json (8 images), val.json (2 images), images/."""
    from frcnn_cli.data.synth import synthesize

    folder = tmp_path_factory.mktemp("data")
    synthesize(folder, train=8, val=2, size=64, seed=0, workers=1)
    return folder


def train_args(data: Path, run: Path, iters: int, *extra) -> list[str]:
    return ["train", "--recipe", "shapes", "--train", str(data / "train.json"), "--out",
            str(run), "--iters", str(iters), *FAST, *map(str, extra)]


def flat(text: str) -> str:
    """Output without whitespace: the log handler wraps long lines."""
    return "".join(text.split())


def logged_iterations(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["iteration"] for line in lines if "loss" in json.loads(line)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def temp_files(run: Path) -> list[Path]:
    return sorted(run.glob(".*.tmp"))


def test_sigkill_then_resume_finishes_the_schedule(cli, data, tmp_path):
    iters = 6
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "frcnn_cli", "--quiet",
                             *train_args(data, run, iters, "--checkpoint-every", 2)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "last.pt").exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "no last.pt within 120 s"
        time.sleep(0.01)
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "model.pt").exists(), "killed too late to test anything"
    killed_at = load_checkpoint(run / "last.pt")["meta"]["iteration"]
    assert 2 <= killed_at < iters

    r = cli("train", "--resume", run)
    assert r.exit_code == 0, r.output
    assert f"fromiteration{killed_at}of{iters}" in flat(r.output)
    final = load_checkpoint(run / "model.pt")
    assert final["meta"]["iteration"] == iters
    assert logged_iterations(run) == list(range(1, iters + 1))  # each step logged once
    # (that a resumed run ends with an uninterrupted run's weights: test_train.py)


# Kills the process (SIGKILL) halfway through writing its second last.pt: half the bytes are
# on disk, fsynced, in the temp file the write goes to.
DIE_WHILE_SAVING = """
import io, os, signal, sys
import torch
real_save = torch.save
def dying_save(obj, f, *args, **kwargs):
    if "optimizer" in obj and obj["meta"]["iteration"] == 4:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = dying_save
from frcnn_cli.cli.app import main
main()
"""


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(cli, data, tmp_path):
    iters = 6
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", DIE_WHILE_SAVING, "--quiet",
                           *train_args(data, run, iters, "--checkpoint-every", 2)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    # the half-written checkpoint died in its temp file; last.pt is the one of iteration 2
    partial = temp_files(run)
    assert len(partial) == 1 and partial[0].name.startswith(".last.pt.")
    with pytest.raises(Exception):  # noqa: B017 (whatever torch makes of half a file)
        torch.load(partial[0], weights_only=True)
    assert load_checkpoint(run / "last.pt")["meta"]["iteration"] == 2
    assert not (run / "model.pt").exists()

    r = cli("train", "--resume", run)
    assert r.exit_code == 0, r.output
    assert "fromiteration2of6" in flat(r.output)
    assert load_checkpoint(run / "model.pt")["meta"]["iteration"] == iters
    assert logged_iterations(run) == list(range(1, iters + 1))


@pytest.mark.parametrize("fail_on", ["last.pt", "model.pt"])
def test_disk_full_is_one_line_and_the_run_resumes(cli, data, tmp_path, monkeypatch, fail_on):
    """ENOSPC halfway through a save: the message names the file, the previous checkpoint is
    intact, no temp file is left, and --resume completes the run."""
    iters = 4
    real_save = torch.save
    failed = []

    def full_disk(obj, f, *args, **kwargs):
        is_last = "optimizer" in obj
        if ((fail_on == "last.pt" and is_last and obj["meta"]["iteration"] == 4)
                or (fail_on == "model.pt" and not is_last)):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[:1000])
            failed.append(obj["meta"]["iteration"])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    r = cli(*train_args(data, run, iters, "--checkpoint-every", 2))
    assert failed == [4]
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and r.output.strip().endswith(errors[0]), r.output
    assert f"no space left on device while writing {run / fail_on}" in errors[0]
    if fail_on == "last.pt":
        assert errors[0].endswith("the previous file is intact")
        assert load_checkpoint(run / "last.pt")["meta"]["iteration"] == 2
    else:
        assert errors[0].endswith("nothing was written")
        assert load_checkpoint(run / "last.pt")["meta"]["iteration"] == 4
    assert not (run / "model.pt").exists() and not temp_files(run)

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    r = cli("train", "--resume", run)
    assert r.exit_code == 0, r.output
    assert load_checkpoint(run / "model.pt")["meta"]["iteration"] == iters
    assert logged_iterations(run) == list(range(1, iters + 1))


def test_a_diverging_loss_stops_and_keeps_the_last_good_checkpoint(cli, data, tmp_path):
    """A real divergence (an absurd learning rate), not an injected NaN as in test_train.py:
    the run stops at the first non-finite loss, names it, and last.pt holds the step before,
    with finite weights."""
    run = tmp_path / "run"
    r = cli(*train_args(data, run, 10, "--checkpoint-every", 1, "--set", "solver.lr=1e12"))
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: loss became non-finite at iteration ")
    bad = int(line.split("at iteration ")[1].split()[0])
    assert bad >= 2 and f"the last good checkpoint is {run / 'last.pt'} (iteration {bad - 1})" \
        in line and "Lower solver.lr" in line
    last = load_checkpoint(run / "last.pt")
    assert last["meta"]["iteration"] == bad - 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert not (run / "model.pt").exists() and not temp_files(run)
    losses = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in losses] == list(range(1, bad))
    assert all(math.isfinite(x["loss"]) for x in losses)

    # before the first checkpoint: nothing to keep, and the message says so
    run = tmp_path / "early"
    r = cli(*train_args(data, run, 10, "--set", "solver.lr=1e12"))
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].endswith(
        "no checkpoint was written yet. Lower solver.lr or set solver.clip_grad_norm.")
    assert not (run / "last.pt").exists() and not (run / "model.pt").exists()


def test_one_seed_gives_the_same_weights_in_two_fresh_runs(cli, data, tmp_path):
    """Two fresh runs, one in a process of its own (another hash seed), one data worker each:
    bit-identical weights and losses. Another seed gives other weights, so the comparison
    can fail."""
    args = ("--seed", 7, "--set", "data.num_workers=1")
    alone = tmp_path / "own-process"
    proc = subprocess.run([sys.executable, "-m", "frcnn_cli", "--quiet",
                           *train_args(data, alone, 3, *args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    here = tmp_path / "this-process"
    assert cli(*train_args(data, here, 3, *args)).exit_code == 0
    assert same_weights(alone / "model.pt", here / "model.pt")

    def losses(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]

    assert len(losses(alone)) == 3 and losses(alone) == losses(here)

    other = tmp_path / "seed8"
    assert cli(*train_args(data, other, 3, "--seed", 8, "--set", "data.num_workers=1")) \
        .exit_code == 0
    assert not same_weights(alone / "model.pt", other / "model.pt")


# Two trainings in one process, as train-alt or a notebook runs them: the first decodes and
# augments in the main process (OpenCV's warpAffine starts its thread pool there), the second
# forks a data worker. OpenCV's pool does not survive fork: the worker used to hang for ever.
TWO_RUNS_ONE_PROCESS = """
import sys
from frcnn_cli.cli.app import app
def run(*args):
    try:
        app(list(args), standalone_mode=False)
    except SystemExit as e:
        assert not e.code, e.code
train, out, *fast = sys.argv[1:]
common = ["--quiet", "train", "--recipe", "shapes", "--train", train, "--iters", "1", *fast]
run(*common, "--out", out + "/main-process", "--set", "data.num_workers=0",
    "--set", "augment.extra=[{name: Affine, rotate: [-5, 5], p: 1.0}]")
run(*common, "--out", out + "/one-worker", "--set", "data.num_workers=1")
"""


def test_a_data_worker_forked_after_opencv_ran_in_the_main_process_does_not_hang(data,
                                                                                 tmp_path):
    try:
        proc = subprocess.run([sys.executable, "-c", TWO_RUNS_ONE_PROCESS,
                               str(data / "train.json"), str(tmp_path), *FAST],
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the second run's data worker hung (OpenCV's thread pool across fork)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert load_checkpoint(tmp_path / "one-worker" / "model.pt")["meta"]["iteration"] == 1
