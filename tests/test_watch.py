"""Training a person can watch: TensorBoard's event files, the validation loss, early stopping
(train.patience) and repeat-factor sampling (data.repeat_threshold), each through a resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from frcnn_cli.checkpoint import load_checkpoint
from frcnn_cli.data.sampler import TrainingSampler, class_repeat_factors, repeat_factors

# 64 px images, 2 per batch, a metrics line every iteration (tests/test_reliability_faults.py)
FAST = ["--set", "input.min_size=64", "--set", "input.max_size=64", "--set",
        "data.num_workers=0", "--set", "solver.images_per_batch=2", "--set",
        "solver.warmup_iters=0", "--set", "train.log_every=1", "--device", "cpu"]
LOSS_TERMS = ("loss_rpn_cls", "loss_rpn_box", "loss_det_cls", "loss_det_box", "loss")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 64 px shapes set: train.json (8 images), val.json (3 images), images/."""
    from frcnn_cli.data.synth import synthesize

    folder = tmp_path_factory.mktemp("data")
    synthesize(folder, train=8, val=3, size=64, seed=0, workers=1)
    return folder


def train_args(data: Path, run: Path, iters: int, *extra, val: bool = True) -> list[str]:
    return ["train", "--recipe", "shapes", "--train", str(data / "train.json"), "--out",
            str(run), "--iters", str(iters), *(["--val", str(data / "val.json")] if val else []),
            *FAST, *map(str, extra)]


def lines(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock times."""
    text = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in text]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def crash_at(monkeypatch, iteration: int) -> None:
    """The process dies (an exception, no state saved) as iteration ``iteration`` begins."""
    from frcnn_cli.engine.trainer import Run

    step = Run.step

    def crashing(self, *args):
        if self.iteration + 1 == iteration:
            raise RuntimeError("power cut")
        return step(self, *args)

    monkeypatch.setattr(Run, "step", crashing)


def crashed(result) -> bool:
    """The command ended on :func:`crash_at`'s failure (exit 1, as for any bug)."""
    return result.exit_code == 1 and "power cut" in result.output


# --------------------------------------------------------------------------- validation loss


@pytest.fixture(scope="module")
def validated_runs(data, tmp_path_factory):
    """Three 6-iteration runs of one seed, validating every 2 iterations (a checkpoint every 2
    too): ``whole`` uninterrupted; ``split`` crashed as iteration 6 began (after logging
    iteration 5; its last.pt is iteration 4's, written after that validation) and resumed;
    ``plain`` without --val."""
    from typer.testing import CliRunner

    from frcnn_cli.cli.app import app

    root = tmp_path_factory.mktemp("validated")
    runs = {name: root / name for name in ("whole", "split", "plain")}
    extra = ("--checkpoint-every", 2, "--set", "train.val_every=2")

    def cli(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    r = cli(*train_args(data, runs["whole"], 6, *extra))
    assert r.exit_code == 0, r.output
    r = cli(*train_args(data, runs["plain"], 6, *extra, val=False))
    assert r.exit_code == 0, r.output
    with pytest.MonkeyPatch.context() as monkeypatch:
        crash_at(monkeypatch, 6)
        r = cli(*train_args(data, runs["split"], 6, *extra))
        assert crashed(r)
    assert load_checkpoint(runs["split"] / "last.pt")["meta"]["iteration"] == 4
    assert [x["iteration"] for x in lines(runs["split"])][-1] == 5  # logged, then the crash
    r = cli("train", "--resume", runs["split"])
    assert r.exit_code == 0, r.output
    return runs


def test_validation_loss_is_logged_and_changes_nothing_in_training(validated_runs):
    runs = validated_runs
    validations = [x for x in lines(runs["whole"]) if "val_mAP" in x]
    assert [x["iteration"] for x in validations] == [2, 4, 6]
    for x in validations:
        assert all(math.isfinite(x[f"val_{k}"]) and x[f"val_{k}"] > 0 for k in LOSS_TERMS)
        assert x["val_loss"] == pytest.approx(sum(x[f"val_{k}"] for k in LOSS_TERMS[:-1]),
                                              abs=1e-5)
        assert set(x["val_AP"]) == {"circle", "square", "triangle"}
    # The validation loss draws its samples from generators of its own and leaves BatchNorm's
    # statistics alone: a run that validates trains exactly as one that does not.
    assert same_weights(runs["whole"] / "model.pt", runs["plain"] / "model.pt")
    assert [x for x in lines(runs["whole"]) if "loss" in x] == lines(runs["plain"])


def test_a_resumed_run_with_validation_is_the_same_run(validated_runs):
    whole, split = validated_runs["whole"], validated_runs["split"]
    assert same_weights(whole / "model.pt", split / "model.pt")
    assert same_weights(whole / "best.pt", split / "best.pt")
    assert lines(whole) == lines(split)  # losses, validation losses and mAPs, each once


# --------------------------------------------------------------------------- TensorBoard


def tensorboard_scalars(run: Path) -> dict[tuple[str, int], list[float]]:
    """``{(tag, step): [values]}`` as TensorBoard reads the run folder's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    found: dict[tuple[str, int], list[float]] = {}
    for tag in events.Tags()["scalars"]:
        for e in events.Scalars(tag):
            found.setdefault((tag, e.step), []).append(e.value)
    return found


def expected_scalars(run: Path) -> dict[tuple[str, int], float]:
    """What TensorBoard should show of metrics.jsonl: each number at its iteration, tagged
    train/<key>, or val/<key without val_>, a dict's entries one level down."""
    expected = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        step = record.pop("iteration")
        for key, value in record.items():
            tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
            items = value.items() if isinstance(value, dict) else [("", value)]
            for name, v in items:
                if isinstance(v, (int, float)):
                    expected[(f"{tag}/{name}" if name else tag, step)] = float(np.float32(v))
    return expected


def test_tensorboard_shows_metrics_jsonl_once_across_a_resume(validated_runs):
    """The resumed run's event files hold each value of its metrics.jsonl once, at its
    iteration: the points its first process logged after last.pt (iteration 5's) are purged
    and logged again."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    split = validated_runs["split"]
    assert len(list(split.glob("events.out.tfevents.*"))) == 2  # the start and the resume
    found = tensorboard_scalars(split)
    assert {key: len(values) for key, values in found.items() if len(values) > 1} == {}
    expected = expected_scalars(split)
    assert ("val/loss", 4) in expected and ("val/AP/square", 6) in expected
    assert {key: values[0] for key, values in found.items()} == expected
    events = EventAccumulator(str(split), size_guidance={"images": 0})
    events.Reload()
    pictures = [tag for tag in events.Tags()["images"] if tag.startswith("val/detections/")]
    assert len(pictures) == 3  # every validation image (there are 3)
    assert sorted(e.step for e in events.Images(pictures[0])) == [2, 4, 6]


# --------------------------------------------------------------------------- patience


def test_patience_stops_a_run_that_no_longer_learns_and_keeps_the_best(cli, data, tmp_path,
                                                                         monkeypatch):
    """lr ~0: the weights stay put and validation mAP only jitters (BatchNorm's statistics
    still move), so two validations after the best the run ends, long before its 12
    iterations, with model.pt = best.pt and exit 0; a run crashed between those validations
    and resumed stops at the same place (the count is in last.pt)."""
    extra = ("--set", "solver.lr=1e-12", "--set", "train.val_every=1", "--set",
             "train.patience=2", "--checkpoint-every", 1)
    run = tmp_path / "run"
    r = cli(*train_args(data, run, 12, *extra))
    assert r.exit_code == 0, r.output
    records = lines(run)
    maps = [x["val_mAP"] for x in records if "val_mAP" in x]  # one per iteration
    best = maps.index(max(maps)) + 1  # the first best: a tie is no progress
    stop = best + 2
    assert len(maps) == stop < 12, maps
    assert f"stoppingearlyatiteration{stop}" in "".join(r.output.split())
    assert records[-1] == {"iteration": stop, "stopped_early": records[-1]["stopped_early"]}
    assert "has not improved for 2 validations" in records[-1]["stopped_early"]
    assert load_checkpoint(run / "last.pt")["meta"]["iteration"] == stop
    model = load_checkpoint(run / "model.pt")
    assert model["meta"]["iteration"] == best
    assert "train.patience 2" in model["meta"]["stopped_early"]
    assert same_weights(run / "model.pt", run / "best.pt")
    assert not same_weights(run / "model.pt", run / "last.pt")  # (BatchNorm's statistics moved)
    scores = json.loads((run / "eval.json").read_text())  # the best validation's
    assert scores["iteration"] == best and scores["mAP"] == pytest.approx(maps[best - 1], abs=1e-6)

    r = cli("train", "--resume", run)  # a finished run stays finished
    assert r.exit_code == 0 and "nothing to resume" in r.output, r.output
    assert lines(run) == records

    split = tmp_path / "split"
    crash_at(monkeypatch, stop)
    assert crashed(cli(*train_args(data, split, 12, *extra)))
    monkeypatch.undo()
    assert load_checkpoint(split / "last.pt")["meta"]["stale_validations"] == 1
    r = cli("train", "--resume", split)
    assert r.exit_code == 0, r.output
    assert lines(split) == records
    assert same_weights(split / "model.pt", run / "model.pt")


def test_patience_counts_validations_since_the_best():
    from frcnn_cli.engine.patience import Patience

    patience = Patience(3)
    seen = [(patience.observe(v, it), patience.stop_reason) for it, v in
            enumerate([0.1, 0.3, 0.3, 0.2, 0.4, 0.4, 0.39, 0.4], start=1)]
    assert [new for new, _ in seen] == [True, True, False, False, True, False, False, False]
    assert [reason is not None for _, reason in seen] == [False] * 7 + [True]
    assert patience.best == 0.4 and patience.best_iteration == 5
    again = Patience.from_meta(Patience(3, 0.4, 5, 2).meta(), 3)
    assert again == Patience(3, 0.4, 5, 2) and Patience(None, 0.4, 5, 9).stop_reason is None


def test_patience_needs_validations_to_count():
    from frcnn_cli.config import load_recipe
    from frcnn_cli.errors import RecipeError

    with pytest.raises(RecipeError, match="set train.val_every too"):
        load_recipe("shapes", ["train.patience=3"])
    assert load_recipe("shapes", ["train.patience=3", "train.val_every=100"]).train.patience == 3


# --------------------------------------------------------------------------- repeat factors


# Ten images, the labels of each one's objects: class 1 in 8 images (f = 0.8), class 2 in
# 2 (f = 0.2), class 3 in 1 (f = 0.1), one image without objects.
HISTOGRAM = [[1], [1, 1], [1], [1], [1], [1, 2], [1, 3], [1], [2, 2], []]


def test_repeat_factors_of_a_hand_worked_histogram():
    # t = 0.5: r(1) = max(1, sqrt(0.5 / 0.8)) = 1, r(2) = sqrt(0.5 / 0.2) = sqrt(2.5),
    # r(3) = sqrt(0.5 / 0.1) = sqrt(5); class 4 is in no image: 1.
    per_class = class_repeat_factors(HISTOGRAM, 4, 0.5)
    assert per_class == pytest.approx([1.0, 1.0, 1.5811388300841898, 2.23606797749979, 1.0])
    # an image repeats by its rarest class; one without objects once
    per_image = repeat_factors(HISTOGRAM, 4, 0.5)
    assert per_image == pytest.approx([1, 1, 1, 1, 1, 1.5811388300841898, 2.23606797749979,
                                       1, 1.5811388300841898, 1])
    # a threshold below every frequency changes nothing
    assert (repeat_factors(HISTOGRAM, 4, 0.05) == 1).all()


def test_repeat_factor_epochs_round_stochastically():
    """Each epoch takes an image floor(r) times and once more with probability r - floor(r)."""
    sampler = TrainingSampler(3, 1, seed=4, repeat=[1.0, 2.5, 1.25])
    counts = np.array([np.bincount(sampler.epoch_order(e), minlength=3) for e in range(400)])
    assert (counts[:, 0] == 1).all()
    assert set(counts[:, 1]) == {2, 3} and set(counts[:, 2]) == {1, 2}
    assert counts[:, 1].mean() == pytest.approx(2.5, abs=0.1)
    assert counts[:, 2].mean() == pytest.approx(1.25, abs=0.1)


def test_sampler_with_repeat_factors_resumes_exactly_in_every_shard():
    """Repeat factors with aspect grouping over two processes: a sampler started at iteration
    25 continues the uninterrupted stream, and the rare images come more often."""
    groups = np.array([0, 1] * 10 + [0] * 7)
    repeat = np.ones(27)
    repeat[[3, 8]] = [3.5, 2.2]

    def stream(rank: int, start_iter: int = 0, factors=repeat) -> list:
        it = iter(TrainingSampler(27, 2, seed=3, group_ids=groups, world_size=2, rank=rank,
                                  start_iter=start_iter, repeat=factors))
        return [next(it) for _ in range(60 - start_iter)]

    first, second = stream(0), stream(1)
    assert stream(0, start_iter=25) == first[25:]
    assert stream(1, start_iter=25) == second[25:]
    seen = [i for a, b in zip(first, second, strict=True) for i, _ in a + b]
    for a, b in zip(first, second, strict=True):
        assert len({int(groups[i]) for i, _ in a + b}) == 1  # aspect-homogeneous
    plain = [i for a, b in zip(stream(0, factors=None), stream(1, factors=None), strict=True)
             for i, _ in a + b]
    assert seen.count(3) > 2 * plain.count(3) and seen.count(8) > plain.count(8)


def test_data_stats_shows_what_repeat_factors_make_of_the_classes(cli, data, tmp_path):
    from frcnn_cli.data.annotations import load_annotations

    recipe = tmp_path / "rare.yaml"
    recipe.write_text("base: shapes\ndata: {repeat_threshold: 0.5}\n")
    out = tmp_path / "stats.json"
    r = cli("data", "stats", data / "train.json", "--recipe", recipe, "--json", out)
    assert r.exit_code == 0, r.output
    assert "repeat-factor sampling" in r.output
    summary = json.loads(out.read_text())["repeat_factors"]

    # by hand from the set: each image's classes, f(c), r(c), r(image)
    ann = load_annotations(data / "train.json")
    holds = [{a["category_id"] for a in ann.objects(im["id"])} for im in ann.images]
    ids = [c["id"] for c in ann.classes]
    f = {c: sum(c in h for h in holds) / len(holds) for c in ids}
    r_class = {c: max(1.0, math.sqrt(0.5 / f[c])) for c in ids}
    r_image = [max((r_class[c] for c in h), default=1.0) for h in holds]
    assert summary["images_per_epoch"] == {"before": len(holds),
                                           "after": pytest.approx(sum(r_image))}
    for row in summary["classes"]:
        c = row["id"]
        after = sum(r for r, h in zip(r_image, holds, strict=True) if c in h)
        assert row["repeat"] == pytest.approx(r_class[c])
        assert row["images"] == {"before": sum(c in h for h in holds),
                                 "after": pytest.approx(after)}
        assert row["frequency"] == {"before": pytest.approx(f[c]),
                                    "after": pytest.approx(after / sum(r_image))}
    assert any(row["repeat"] > 1 for row in summary["classes"])  # the set has rarer classes
    r = cli("data", "stats", data / "train.json", "--recipe", "shapes", "--json", out)
    assert r.exit_code == 0 and "repeat_factors" not in json.loads(out.read_text())


def test_training_with_repeat_factors_resumes_exactly(cli, data, tmp_path, monkeypatch):
    """A run with repeat-factor sampling, crashed and resumed, ends with the weights of the
    run never stopped; a run without it sees other images."""
    extra = ("--checkpoint-every", 2, "--set", "data.repeat_threshold=0.9")
    assert cli(*train_args(data, tmp_path / "whole", 5, *extra, val=False)).exit_code == 0
    crash_at(monkeypatch, 4)
    assert crashed(cli(*train_args(data, tmp_path / "split", 5, *extra, val=False)))
    monkeypatch.undo()
    assert cli("train", "--resume", tmp_path / "split").exit_code == 0
    assert same_weights(tmp_path / "whole" / "model.pt", tmp_path / "split" / "model.pt")
    assert lines(tmp_path / "whole") == lines(tmp_path / "split")
    assert cli(*train_args(data, tmp_path / "plain", 5, "--checkpoint-every", 2, val=False)) \
        .exit_code == 0
    assert not same_weights(tmp_path / "whole" / "model.pt", tmp_path / "plain" / "model.pt")


def test_a_stage_stopped_before_its_first_checkpoint_starts_again_events_and_all(tmp_path):
    """train-alt clears a stage folder that holds only what a stage writes before its first
    checkpoint, TensorBoard's event file included; anything else stays for the refusal."""
    from frcnn_cli.engine.stages import _clear_unstarted

    stage = tmp_path / "stage1-rpn"
    stage.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "events.out.tfevents.1796000000.host.7.0"):
        (stage / name).write_text("")
    _clear_unstarted(stage)
    assert list(stage.iterdir()) == []
    (stage / "events.out.tfevents.1796000000.host.7.0").write_text("")
    (stage / "notes.txt").write_text("mine")
    _clear_unstarted(stage)
    assert len(list(stage.iterdir())) == 2
