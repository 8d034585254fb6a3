"""Training: joint and 4-step alternating runs on a tiny synthetic set, resume, freezing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from frcnn_cli.checkpoint import load_checkpoint

# 128 px images, 2 per batch, a metrics line every iteration: seconds per run on a CPU.
FAST = ["--set", "input.min_size=128", "--set", "input.max_size=128",
        "--set", "data.num_workers=0", "--set", "solver.images_per_batch=2",
        "--set", "alt.rpn_images_per_batch=2", "--set", "alt.detector_images_per_batch=2",
        "--set", "train.log_every=1", "--set", "solver.warmup_iters=0"]


def _losses(run: Path, key: str = "loss") -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)[key] for x in lines if key in json.loads(x)]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _same(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


def _changed(a: dict, b: dict, prefix: str) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix)
               and a[k].is_floating_point())


def test_joint_training_loss_falls_and_writes_the_run(cli, shapes_data, tmp_path):
    run = tmp_path / "run"
    r = cli("train", "--recipe", "shapes", "--train", shapes_data / "train.json",
            "--val", shapes_data / "val.json", "--out", run, "--iters", "60", *FAST,
            "--set", "solver.lr=0.01")
    assert r.exit_code == 0, r.output
    for name in ("config.yaml", "last.pt", "model.pt", "metrics.jsonl", "eval.json",
                 "best.pt", "plots/loss.png"):
        assert (run / name).is_file(), name
    losses = _losses(run)
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    ckpt = load_checkpoint(run / "model.pt")
    assert ckpt["meta"]["iteration"] == 60 and ckpt["meta"]["stage"] == "joint"
    assert [c["name"] for c in ckpt["meta"]["classes"]] == ["circle", "square", "triangle"]
    assert all(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in ckpt["model"])
    last = load_checkpoint(run / "last.pt")
    assert {"optimizer", "scheduler", "rng"} <= set(last)
    # --val scores the final model as frcnn eval does
    evaluation = json.loads((run / "eval.json").read_text())
    again = tmp_path / "again.json"
    r = cli("eval", run / "model.pt", "--data", shapes_data / "val.json", "--json", again,
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert evaluation["metric"] == "voc07"
    assert evaluation["mAP"] == json.loads(again.read_text())["mAP"]


def test_resume_gives_identical_weights(cli, shapes_data, tmp_path, monkeypatch):
    """2N iterations in one go == N iterations, interrupted, then resumed for N more."""
    from frcnn_cli.model import faster_rcnn

    args = ["--recipe", "shapes", "--train", shapes_data / "train.json", "--iters", "8",
            *FAST, "--set", "data.num_workers=1", "--set", "model.dropout=0.5"]
    r = cli("train", *args, "--out", tmp_path / "whole")
    assert r.exit_code == 0, r.output

    forward = faster_rcnn.FasterRCNN.forward
    calls = {"n": 0}

    def interrupt_after_4(self, *a, **k):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
        return forward(self, *a, **k)

    monkeypatch.setattr(faster_rcnn.FasterRCNN, "forward", interrupt_after_4)
    r = cli("train", *args, "--out", tmp_path / "split")
    assert r.exit_code == 130
    assert f"frcnn train --resume {tmp_path / 'split'}" in r.output
    assert load_checkpoint(tmp_path / "split" / "last.pt")["meta"]["iteration"] == 4
    monkeypatch.setattr(faster_rcnn.FasterRCNN, "forward", forward)

    r = cli("train", "--resume", tmp_path / "split")
    assert r.exit_code == 0, r.output
    whole, split = _state(tmp_path / "whole" / "model.pt"), _state(tmp_path / "split" / "model.pt")
    assert whole.keys() == split.keys()
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert _losses(tmp_path / "whole") == _losses(tmp_path / "split")


def _interrupt_in_detector_head(monkeypatch, at_call: int, presses: int = 1) -> None:
    """Ctrl-C (a real SIGINT) while iteration ``at_call`` runs its detector head: after the
    RPN sampled anchors and proposals from the random generators, before the weights update."""
    import signal

    from frcnn_cli.model import faster_rcnn

    forward = faster_rcnn.FasterRCNN.forward
    calls = {"n": 0}

    def interrupted(self, *a, **k):
        if self.training:
            calls["n"] += 1
            if calls["n"] == at_call:
                head = self.roi_heads.forward

                def press(*ha, **hk):
                    self.roi_heads.forward = head
                    for _ in range(presses):
                        os.kill(os.getpid(), signal.SIGINT)
                    return head(*ha, **hk)

                self.roi_heads.forward = press
        return forward(self, *a, **k)

    monkeypatch.setattr(faster_rcnn.FasterRCNN, "forward", interrupted)


def test_ctrl_c_inside_an_iteration_finishes_it_and_resumes_exactly(cli, shapes_data, tmp_path,
                                                                    monkeypatch):
    """A Ctrl-C that lands mid-iteration stops the run after that iteration, with the random
    state of that boundary and the unlogged losses saved, so the resumed run is the same run."""
    args = ["--recipe", "shapes", "--train", shapes_data / "train.json", "--iters", "8",
            *FAST, "--set", "train.log_every=3"]
    r = cli("train", *args, "--out", tmp_path / "whole")
    assert r.exit_code == 0, r.output

    _interrupt_in_detector_head(monkeypatch, at_call=5)
    r = cli("train", *args, "--out", tmp_path / "split")
    assert r.exit_code == 130, r.output
    assert "interrupted at iteration 5" in r.output
    assert load_checkpoint(tmp_path / "split" / "last.pt")["meta"]["iteration"] == 5
    monkeypatch.undo()

    r = cli("train", "--resume", tmp_path / "split")
    assert r.exit_code == 0, r.output
    whole, split = _state(tmp_path / "whole" / "model.pt"), _state(tmp_path / "split" / "model.pt")
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    # logged at 3, 6 and 8: the line at 6 averages iterations 4-6 across the interruption
    assert _losses(tmp_path / "whole") == _losses(tmp_path / "split")
    assert len(_losses(tmp_path / "split")) == 3


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_good_checkpoint(cli, shapes_data,
                                                                          tmp_path, monkeypatch):
    run = tmp_path / "run"
    _interrupt_in_detector_head(monkeypatch, at_call=5, presses=2)
    r = cli("train", "--recipe", "shapes", "--train", shapes_data / "train.json", "--iters", "8",
            *FAST, "--checkpoint-every", "3", "--out", run)
    assert r.exit_code == 130, r.output
    assert "stopped during iteration 5" in r.output and "(iteration 3)" in r.output
    assert load_checkpoint(run / "last.pt")["meta"]["iteration"] == 3
    assert f"frcnn train --resume {run}" in " ".join(r.output.split())


COMMON = ["--recipe", "--train", "--out", "--iters", "--set", "--device", "--seed",
          "--checkpoint-every", "--resume", "--amp"]
TRAINING = {"train": [], "train-rpn": ["--stage", "1"], "train-alt": [],
            "train-detector": ["--stage", "1", "--proposals", "p.pt"]}


@pytest.mark.parametrize("command", sorted(TRAINING))
def test_every_training_command_takes_the_common_options(cli, shapes_data, tmp_path, command):
    help_text = cli(command, "--help").output
    assert all(option in help_text for option in COMMON), help_text
    # --amp is mixed precision on a GPU: refused on the CPU before anything is written
    extra = [str(tmp_path / a) if a == "p.pt" else a for a in TRAINING[command]]
    if command == "train-detector":
        (tmp_path / "p.pt").touch()
    r = cli(command, "--recipe", "shapes", "--train", shapes_data / "train.json", *extra,
            "--out", tmp_path / "run", "--device", "cpu", "--amp")
    assert r.exit_code == 2, r.output
    assert "--amp needs a CUDA device" in r.output
    assert not (tmp_path / "run").exists()
    r = cli(command, "--resume", tmp_path / "run", "--amp")
    assert r.exit_code == 2 and "drop --amp" in r.output


def test_train_alt_freezes_what_the_paper_freezes(cli, shapes_data, tmp_path):
    from frcnn_cli import config
    from frcnn_cli.data.annotations import load_annotations
    from frcnn_cli.engine.rng import seed_everything
    from frcnn_cli.model.faster_rcnn import build_model

    run = tmp_path / "alt"
    r = cli("train-alt", "--recipe", "shapes", "--train", shapes_data / "train.json",
            "--val", shapes_data / "val.json", "--out", run, "--iters", "4", *FAST)
    assert r.exit_code == 0, r.output
    s = {name: _state(run / name / "model.pt") for name in
         ("stage1-rpn", "stage1-detector", "stage2-rpn", "stage2-detector")}
    final = _state(run / "model.pt")
    assert (run / "eval.json").is_file() and (run / "config.yaml").is_file()
    # each stage logs to TensorBoard in its folder: tensorboard --logdir RUN shows four runs
    assert all(len(list((run / name).glob("events.out.tfevents.*"))) == 1 for name in s)

    # The initial weights both stage-1 runs start from (the seed fixes them).
    recipe = config.load_recipe("shapes", [FAST[i + 1] for i in range(0, len(FAST), 2)])
    classes = load_annotations(shapes_data / "train.json").classes
    seed_everything(recipe.train.seed)
    init = build_model(recipe, len(classes), classes=classes).state_dict()

    # 1. RPN + shared convs trained; the detector head untouched.
    assert _changed(init, s["stage1-rpn"], "rpn.") and _changed(init, s["stage1-rpn"], "backbone.")
    assert _same(init, s["stage1-rpn"], "roi_heads.")
    # 2. Detector + shared convs trained from the same start; the RPN untouched.
    assert _changed(init, s["stage1-detector"], "roi_heads.")
    assert _same(init, s["stage1-detector"], "rpn.")
    # 3. From step 2: shared convs and head frozen, only the RPN learns.
    assert _same(s["stage1-detector"], s["stage2-rpn"], "backbone.")
    assert _same(s["stage1-detector"], s["stage2-rpn"], "roi_heads.")
    assert _changed(s["stage1-detector"], s["stage2-rpn"], "rpn.")
    # 4. From step 3: shared convs and RPN frozen, only the head learns.
    assert _same(s["stage2-rpn"], s["stage2-detector"], "backbone.")
    assert _same(s["stage2-rpn"], s["stage2-detector"], "rpn.")
    assert _changed(s["stage2-rpn"], s["stage2-detector"], "roi_heads.")
    # The final model is step 4's: step-3 RPN and step-4 head on step 2's backbone.
    assert all(torch.equal(final[k], s["stage2-detector"][k]) for k in final)

    # Repeating the command reruns nothing.
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("stage*/model.pt")}
    r = cli("train-alt", "--resume", run)
    assert r.exit_code == 0, r.output
    assert stamps == {p: p.stat().st_mtime_ns for p in run.glob("stage*/model.pt")}


def test_train_alt_keeps_the_recipe_it_started_with(cli, shapes_data, tmp_path, monkeypatch):
    """Resuming train-alt (the same command again, or --resume) trains every stage, those not
    started yet too, with the recipe stored in RUN/config.yaml, not the recipe file's."""
    from frcnn_cli.model import faster_rcnn

    recipe = tmp_path / "recipe.yaml"
    original = (Path(__file__).parents[1] / "recipes" / "shapes.yaml").read_text()
    recipe.write_text(original)
    command = ["train-alt", "--recipe", recipe, "--train", shapes_data / "train.json",
               "--iters", "2", *FAST]
    assert cli(*command, "--out", tmp_path / "whole").exit_code == 0

    # Ctrl-C in the first iteration of step 2; then, after the file is edited, of step 4
    # (detector forward passes 1 and 2 + 2).
    forward, calls = faster_rcnn.FasterRCNN.forward, {"n": 0}

    def ctrl_c_in_detector_steps(self, *a, **k):
        if self.training and k.get("proposals") is not None:
            calls["n"] += 1
            if calls["n"] in (1, 4):
                raise KeyboardInterrupt
        return forward(self, *a, **k)

    monkeypatch.setattr(faster_rcnn.FasterRCNN, "forward", ctrl_c_in_detector_steps)
    run = tmp_path / "split"
    assert cli(*command, "--out", run).exit_code == 130
    stored = (run / "config.yaml").read_text()
    recipe.write_text(original.replace("lr: 0.02", "lr: 0.5"))
    r = cli(*command, "--out", run)
    assert r.exit_code == 130 and (run / "stage2-rpn" / "model.pt").is_file(), r.output
    monkeypatch.undo()
    assert cli("train-alt", "--resume", run).exit_code == 0

    assert (run / "config.yaml").read_text() == stored
    for name in ("stage1-rpn", "stage1-detector", "stage2-rpn", "stage2-detector", "."):
        whole = _state(tmp_path / "whole" / name / "model.pt")
        split = _state(run / name / "model.pt")
        assert all(torch.equal(whole[k], split[k]) for k in whole), name
        assert load_checkpoint(run / name / "model.pt")["meta"]["recipe"]["solver"]["lr"] == 0.02
    # The folder continues only its own run.
    r = cli(*command, "--iters", "3", "--out", run)
    assert r.exit_code == 2 and "--iters 2 then, 3 now" in r.output, r.output


def test_propose_writes_proposals_in_image_pixels(cli, shapes_data, tmp_path):
    from frcnn_cli.proposals.files import read_proposals, read_raw

    run = tmp_path / "rpn"
    r = cli("train-rpn", "--recipe", "shapes", "--train", shapes_data / "train.json",
            "--out", run, "--stage", "1", "--iters", "3", *FAST)
    assert r.exit_code == 0, r.output
    out = tmp_path / "p.pt"
    r = cli("propose", run / "model.pt", "--data", shapes_data / "val.json", "--out", out)
    assert r.exit_code == 0, r.output
    obj = read_raw(out)
    from frcnn_cli.data.annotations import load_annotations

    ann = load_annotations(shapes_data / "val.json")
    assert obj["image_ids"].tolist() == [im["id"] for im in ann.images]
    assert int(obj["counts"].max()) <= 500  # shapes: rpn.post_nms_top_n_train
    boxes = obj["boxes"]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 128).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert set(read_proposals(out, ann).boxes) == {im["id"] for im in ann.images}
    # the file and the output say how many of the objects the proposals cover
    cover = obj["meta"]["coverage"]
    assert cover["objects"] == len(ann.annotations)
    assert 0 <= cover["iou_0.7"] <= cover["iou_0.5"] <= 1
    assert f"cover {100 * cover['iou_0.5']:.1f} % of the {cover['objects']} objects" in r.output
    # proposals of another dataset are refused with a clear message
    r = cli("train-detector", "--recipe", "shapes", "--train", shapes_data / "train.json",
            "--proposals", out, "--out", tmp_path / "det", "--stage", "1", "--iters", "2", *FAST)
    assert r.exit_code == 2 and "was made for another dataset" in r.output


def test_training_errors_are_one_line(cli, shapes_data, tmp_path):
    train = shapes_data / "train.json"
    r = cli("train-rpn", "--recipe", "shapes", "--train", train, "--out", tmp_path / "a",
            "--stage", "2")
    assert r.exit_code == 2 and "needs --init CKPT" in r.output
    r = cli("train", "--recipe", "shapes", "--train", train)
    assert r.exit_code == 2 and "needs --out" in r.output
    r = cli("train", "--resume", tmp_path / "nothing")
    assert r.exit_code == 2 and "run folder not found" in r.output
    r = cli("train", "--resume", tmp_path, "--iters", "5")
    assert r.exit_code == 2 and "drop --iters" in r.output
    r = cli("train", "--recipe", "shapes", "--train", train, "--out", tmp_path / "b",
            "--device", "cuda:7")
    assert r.exit_code == 2 and "cuda:7" in r.output
    assert all("Traceback" not in x for x in [r.output])


def test_existing_run_is_not_overwritten(cli, shapes_data, tmp_path):
    run = tmp_path / "run"
    args = ["--recipe", "shapes", "--train", shapes_data / "train.json", "--out", run,
            "--iters", "2", *FAST]
    assert cli("train", *args).exit_code == 0
    before = (run / "model.pt").read_bytes()
    r = cli("train", *args)
    assert r.exit_code == 2 and "already holds a run" in r.output
    assert (run / "model.pt").read_bytes() == before


def test_non_finite_loss_stops_and_keeps_last_good(cli, shapes_data, tmp_path, monkeypatch):
    from frcnn_cli.model import faster_rcnn

    forward = faster_rcnn.FasterRCNN.forward
    calls = {"n": 0}

    def nan_at_5(self, *a, **k):
        out = forward(self, *a, **k)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                out = {**out, "loss_rpn_box": out["loss_rpn_box"] * float("nan")}
        return out

    monkeypatch.setattr(faster_rcnn.FasterRCNN, "forward", nan_at_5)
    run = tmp_path / "run"
    r = cli("train", "--recipe", "shapes", "--train", shapes_data / "train.json", "--out", run,
            "--iters", "8", "--checkpoint-every", "2", *FAST)
    assert r.exit_code == 2
    assert "non-finite at iteration 5" in r.output and "iteration 4" in r.output
    assert load_checkpoint(run / "last.pt")["meta"]["iteration"] == 4
    assert not (run / "model.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", [["train"], ["train-rpn", "--stage", "1"]],
                         ids=["joint", "stage1-rpn"])
def test_torchrun_two_processes_write_one_run(shapes_data, tmp_path, command):
    # The RPN stage leaves the detector head frozen and unused: DDP must not wait for it.
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", "-m", "frcnn_cli", "--quiet", *command, "--recipe",
           "shapes", "--train", str(shapes_data / "train.json"), "--out", str(run), "--iters",
           "6", "--device", "cpu", *FAST]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    assert load_checkpoint(run / "model.pt")["meta"]["iteration"] == 6
    assert len(_losses(run)) == 6  # one process writes the metrics
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # and TensorBoard's events
    assert "find_unused_parameters" not in proc.stderr  # no DDP warning about the setting
