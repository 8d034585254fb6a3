"""Trust: no silent wrong results, no file written over that a command did not make, one run
per folder. Each case is what a new user tried; each ends in a clear line and exit 2, or in a
correct result with a warning."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability import (
    FAST,
    assert_user_error,
    digest,
    flat,
)


def edited(path: Path, out: Path, edit) -> Path:
    """A copy of the dataset ``path`` at ``out`` (same folder: file names stay valid), changed
    by ``edit(dict)``."""
    coco = json.loads(path.read_text())
    edit(coco)
    out.write_text(json.dumps(coco))
    return out


def perfect_detections(coco: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.9} for a in coco["annotations"]]


# --------------------------------------------------------------------------- silent results


def test_duplicate_image_ids_are_refused_by_every_command(cli, data, checkpoint, tmp_path):
    """Two images with one id: training gave one the other's boxes, eval merged them, --fix
    called the copy clean. The loader refuses, naming the id and both files."""
    def repeat(coco):
        coco["images"][1]["id"] = coco["images"][0]["id"]
    ann = edited(data / "train.json", data / "dup.json", repeat)
    first, second = (im["file_name"] for im in json.loads(ann.read_text())["images"][:2])
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    before = digest(data)
    runs = {
        "data check": ("data", "check", ann),
        "data check --fix": ("data", "check", ann, "--fix", tmp_path / "fixed.json"),
        "eval --detections": ("eval", "--detections", dets, "--data", ann),
        "eval CKPT": ("eval", checkpoint, "--data", ann, "--device", "cpu"),
        "train": ("train", "--recipe", "shapes", "--train", ann, "--out", tmp_path / "run",
                  "--iters", 1, *FAST),
    }
    for name, args in runs.items():
        r = cli(*args)
        assert_user_error(r, "image id 1 is used twice", first, second), name
    assert not (tmp_path / "fixed.json").exists() and not (tmp_path / "run").exists()
    assert digest(data) == before


def test_image_sizes_that_differ_from_the_files_stop_train_and_eval(cli, data, checkpoint,
                                                                    tmp_path):
    """The JSON says 128 px, the file is 64: training clipped the boxes into the smaller
    image and eval scored against them, without a word."""
    def double(coco):
        coco["images"][0]["width"] = coco["images"][0]["height"] = 128
    train = edited(data / "train.json", data / "big-train.json", double)
    val = edited(data / "val.json", data / "big-val.json", double)
    name = json.loads(train.read_text())["images"][0]["file_name"]
    r = cli("train", "--recipe", "shapes", "--train", train, "--out", tmp_path / "run",
            "--iters", 1, *FAST)
    assert_user_error(r, name, "64x64", "128x128", "data check")
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
    r = cli("eval", checkpoint, "--data", val, "--device", "cpu")
    assert_user_error(r, "64x64", "128x128")


def test_degenerate_ground_truth_is_left_out_of_every_metric_with_a_warning(data, caplog):
    """NaN, infinite, negative and zero-size boxes counted as objects no detection can match:
    perfect detections scored AP 0.818. Eval leaves them out and says so, as training does."""
    from frcnn_cli.data.annotations import load_annotations
    from frcnn_cli.evaluation.evaluate import evaluate_detections

    coco = json.loads((data / "val.json").read_text())
    dets = perfect_detections(coco)
    image, cat = coco["images"][0]["id"], coco["categories"][0]["id"]
    next_id = max(a["id"] for a in coco["annotations"]) + 1
    for k, box in enumerate(([float("nan"), 1, 5, 5], [1, 1, float("inf"), 5], [4, 4, -3, 5],
                             [4, 4, 0, 5])):
        coco["annotations"].append({"id": next_id + k, "image_id": image, "category_id": cat,
                                    "bbox": box})
    (data / "broken-val.json").write_text(json.dumps(coco))
    ann = load_annotations(data / "broken-val.json")
    for metric in ("voc07", "voc", "coco"):
        caplog.clear()
        result = evaluate_detections(ann, dets, metric)
        assert result.mAP == pytest.approx(1.0), metric
        assert "4 degenerate boxes left out, in training and evaluation alike" in caplog.text


def test_the_cli_warns_about_degenerate_ground_truth(cli, data):
    coco = json.loads((data / "val.json").read_text())
    dets = perfect_detections(coco)
    coco["annotations"].append({"id": 999, "image_id": coco["images"][0]["id"],
                                "category_id": 1, "bbox": [3, 3, 0, 0]})
    (data / "v.json").write_text(json.dumps(coco))
    (data / "d.json").write_text(json.dumps(dets))
    r = cli("eval", "--detections", data / "d.json", "--data", data / "v.json", "--json",
            data / "e.json")
    assert r.exit_code == 0, r.output
    assert json.loads((data / "e.json").read_text())["mAP"] == pytest.approx(1.0)
    assert "1degenerateboxleftout,intrainingandevaluationalike" in flat(r.output)


def test_classes_are_matched_by_name_when_the_ids_differ():
    """The checkpoint knows its classes by name: a dataset numbering them otherwise gets its
    own ids for them; one without a name of the model is refused."""
    from frcnn_cli.data.annotations import annotations_from_dict
    from frcnn_cli.data.usable import match_classes as check_classes
    from frcnn_cli.errors import DataError

    model = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
             {"id": 3, "name": "triangle"}]

    def dataset(cats):
        return annotations_from_dict({"images": [], "annotations": [], "categories": cats})

    same = dataset([dict(c) for c in model])
    assert check_classes(model, same) == model
    permuted = dataset([{"id": 1, "name": "square"}, {"id": 2, "name": "triangle"},
                        {"id": 3, "name": "circle"}])
    assert check_classes(model, permuted) == [
        {"id": 3, "name": "circle"}, {"id": 1, "name": "square"}, {"id": 2, "name": "triangle"}]
    renamed = dataset([{"id": 1, "name": "disc"}, {"id": 2, "name": "square"},
                       {"id": 3, "name": "triangle"}])
    with pytest.raises(DataError, match="another label set"):
        check_classes(model, renamed)


def test_eval_on_permuted_ids_scores_each_class_by_name(cli, data, checkpoint, tmp_path):
    """The same dataset with its category ids permuted: the model's detections get the ids
    of their class names there, so every class scores as before (they were scored by id,
    circles against triangles), with a note saying so."""
    new = {1: 3, 2: 1, 3: 2}

    def permute(coco):
        for c in coco["categories"]:
            c["id"] = new[c["id"]]
        for a in coco["annotations"]:
            a["category_id"] = new[a["category_id"]]
    val = data / "val.json"
    permuted = edited(val, data / "val-permuted.json", permute)
    runs = []
    for ann, name in ((val, "a"), (permuted, "b")):
        r = cli("eval", checkpoint, "--data", ann, "--device", "cpu", "--json",
                tmp_path / f"{name}.json", "--save-detections", tmp_path / f"{name}-dets.json")
        assert r.exit_code == 0, r.output
        runs.append((json.loads((tmp_path / f"{name}.json").read_text()),
                     json.loads((tmp_path / f"{name}-dets.json").read_text())))
    (result_a, dets_a), (result_b, dets_b) = runs
    assert len(dets_a) > 10  # the model detects something, so the ids are checked
    assert [new[d["category_id"]] for d in dets_a] == [d["category_id"] for d in dets_b]
    assert result_a["per_class"] == result_b["per_class"]
    assert "matchedtoitscategoriesbyname" in flat(r.output)


def test_a_training_set_without_objects_is_refused_before_training(cli, data, tmp_path):
    def no_objects(coco):
        coco["annotations"] = []
    def all_crowd(coco):
        for a in coco["annotations"]:
            a["iscrowd"] = 1
    for edit, words in ((no_objects, "no annotations"), (all_crowd, "difficult, crowd")):
        ann = edited(data / "train.json", data / f"{edit.__name__}.json", edit)
        r = cli("train", "--recipe", "shapes", "--train", ann, "--out", tmp_path / "run",
                "--iters", 1, *FAST)
        assert_user_error(r, "no object to learn from", words)
        assert not (tmp_path / "run").exists()


def test_one_box_rule_for_datasets_detections_and_proposals(cli, data, tmp_path):
    """String boxes were taken by eval --detections though the loader refuses them."""
    coco = json.loads((data / "val.json").read_text())
    dets = perfect_detections(coco)
    dets[0]["bbox"] = [str(v) for v in dets[0]["bbox"]]
    (tmp_path / "d.json").write_text(json.dumps(dets))
    r = cli("eval", "--detections", tmp_path / "d.json", "--data", data / "val.json")
    assert_user_error(r, "detection 0: 'bbox' must be [x, y, w, h] numbers")
    coco["annotations"][0]["bbox"] = [str(v) for v in coco["annotations"][0]["bbox"]]
    (data / "s.json").write_text(json.dumps(coco))
    r = cli("data", "check", data / "s.json")
    assert_user_error(r, "'bbox' must be [x, y, w, h] numbers")

    from frcnn_cli.checkpoint import save_safe
    from frcnn_cli.data.annotations import load_annotations
    from frcnn_cli.errors import CheckpointError
    from frcnn_cli.outputs import PROPOSALS_FORMAT
    from frcnn_cli.proposals.files import read_proposals

    ann = load_annotations(data / "val.json")
    ids = [im["id"] for im in ann.images]
    boxes = torch.tensor([[1.0, 1, 9, 9], [2, 2, 8, 8], [5, 5, float("nan"), 9]])
    path = save_safe({"format": PROPOSALS_FORMAT, "version": 1,
                      "image_ids": torch.tensor(ids), "counts": torch.tensor([1, 2]),
                      "boxes": boxes, "scores": torch.ones(3), "meta": {}},
                     tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match=f"of image id {ids[1]} is not finite"):
        read_proposals(path, ann)


# --------------------------------------------------------------------------- written over


def test_eval_json_never_replaces_a_checkpoint_but_replaces_its_own_result(cli, data,
                                                                           checkpoint,
                                                                           tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    last = run / "last.pt"
    shutil.copy(checkpoint, last)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(perfect_detections(json.loads((data / "val.json").read_text()))))
    before = digest(run, data)
    r = cli("eval", "--detections", dets, "--data", data / "val.json", "--json", last)
    assert_user_error(r, str(last), "holds a checkpoint, not an eval result")
    assert digest(run, data) == before
    out = tmp_path / "eval.json"
    for _ in range(2):  # the second run replaces the first one's result
        r = cli("eval", "--detections", dets, "--data", data / "val.json", "--json", out)
        assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["mAP"] == pytest.approx(1.0)


def test_dataset_outputs_replace_only_what_the_same_command_wrote(cli, data, tmp_path):
    """--fix replaced a different dataset; data split wrote over a converted set."""
    other = tmp_path / "other.json"
    shutil.copy(data / "val.json", other)  # someone's dataset (data synth wrote it)
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    photo = data / "images" / "val" / "000001.jpg"
    shutil.copy(photo, tmp_path / "photo.jpg")
    before = digest(tmp_path)
    for target, what in ((other, "a dataset written by frcnn data synth"),
                         (mine, "a dataset (COCO JSON)"), (tmp_path / "photo.jpg", "an image")):
        r = cli("data", "check", data / "train.json", "--fix", target)
        assert_user_error(r, str(target), f"holds {what}",
                          "not a dataset written by frcnn data check --fix")
    assert digest(tmp_path) == before
    fixed = tmp_path / "train.clean.json"
    for _ in range(2):
        r = cli("data", "check", data / "train.json", "--fix", fixed)
        assert r.exit_code == 0, r.output
    assert json.loads(fixed.read_text())["frcnn"] == {"written_by": "data check --fix"}

    split = tmp_path / "split"
    split.mkdir()
    r = cli("data", "convert", data / "train.json", "-f", "coco", "--out", split / "train.json")
    assert r.exit_code == 0, r.output
    converted = (split / "train.json").read_bytes()
    r = cli("data", "split", data / "train.json", "--out", split)
    assert_user_error(r, "a dataset written by frcnn data convert")
    assert (split / "train.json").read_bytes() == converted and not (split / "val.json").exists()
    (split / "train.json").unlink()
    for _ in range(2):
        r = cli("data", "split", data / "train.json", "--val-fraction", 0.5, "--out", split)
        assert r.exit_code == 0, r.output


def test_every_output_kind_refuses_what_it_did_not_make(data, checkpoint, tmp_path):
    """The one rule, kind by kind: an earlier output of the kind is replaceable; a checkpoint,
    a dataset, an image and a file of unknown kind are not."""
    from frcnn_cli import outputs
    from frcnn_cli.errors import InputError
    from frcnn_cli.files import prepare_output_file

    strangers = {"checkpoint": checkpoint, "dataset": data / "train.json",
                 "image": data / "images" / "val" / "000001.jpg",
                 "unknown": tmp_path / "notes.txt"}
    (tmp_path / "notes.txt").write_text("my notes")
    mark = outputs.result_marker
    own = {
        outputs.EVAL_RESULT: {**mark(outputs.EVAL_RESULT), "metric": "voc07", "mAP": 0.5},
        outputs.DETECTIONS: [{**mark(outputs.DETECTIONS), "image_id": 1, "category_id": 1,
                              "bbox": [1, 2, 3, 4], "score": 0.5}],
        outputs.ANCHORS: {**mark(outputs.ANCHORS), "stride": 16, "base_anchors": []},
        outputs.DATA_STATS: {**mark(outputs.DATA_STATS), "images": 1, "distributions": {}},
        outputs.dataset_kind("data split"): {**outputs.dataset_marker("data split"),
                                              "images": [], "categories": []},
    }
    for kind, content in own.items():
        path = tmp_path / f"{kind.name}.json"
        path.write_text(json.dumps(content))
        assert prepare_output_file(path, kind) == path
        for name, stranger in strangers.items():
            with pytest.raises(InputError, match="replaces only"):
                prepare_output_file(stranger, kind)
            assert stranger.exists(), name
    with pytest.raises(InputError, match="holds a dataset written by frcnn data split"):
        prepare_output_file(tmp_path / "dataset written by frcnn data split.json",
                            outputs.dataset_kind("data convert"))
    assert not outputs.PROPOSALS.recognise(checkpoint)
    for kind in outputs.EXPORT_KINDS.values():
        assert not kind.recognise(checkpoint)
    assert not outputs.PLOT.recognise(strangers["image"])


def test_predict_replaces_its_own_drawings_and_no_photo(cli, data, checkpoint, tmp_path):
    images = data / "images" / "val"
    out = tmp_path / "preds"
    for _ in range(2):
        r = cli("predict", checkpoint, images, "--out", out, "--device", "cpu")
        assert r.exit_code == 0, r.output
    backup = tmp_path / "backup"
    shutil.copytree(images, backup)  # a copy of the photos, under the drawings' names
    before = digest(backup)
    r = cli("predict", checkpoint, images, "--out", backup, "--device", "cpu")
    assert_user_error(r, "holds an image, not a drawing")
    assert digest(backup) == before


def test_train_out_takes_only_a_missing_or_empty_folder(cli, data, tmp_path):
    train = data / "train.json"
    mine = tmp_path / "mine"
    (mine / "plots").mkdir(parents=True)
    (mine / "config.yaml").write_text("my: settings\n")
    (mine / "plots" / "a.png").write_bytes(b"my plot")
    before = digest(mine)
    r = cli("train", "--recipe", "shapes", "--train", train, "--out", mine, "--iters", 1, *FAST)
    assert_user_error(r, str(mine), "stopped before its first checkpoint", "config.yaml")
    (mine / "config.yaml").unlink()
    (mine / "notes.txt").write_text("mine")
    r = cli("train", "--recipe", "shapes", "--train", train, "--out", mine, "--iters", 1, *FAST)
    assert_user_error(r, "is not empty", "notes.txt", "plots/")
    assert digest(mine) == {k: v for k, v in before.items() if not k.endswith("config.yaml")} \
        | digest(mine / "notes.txt")

    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "model.pt").write_bytes(b"weights")
    r = cli("train", "--recipe", "shapes", "--train", train, "--out", stray, "--iters", 1, *FAST)
    assert_user_error(r, "holds model.pt but no run", "move model.pt away")
    r = cli("train", "--resume", stray)
    assert_user_error(r, "holds model.pt but no config.yaml or last.pt", "nothing to resume",
                      "frcnn eval")
    assert (stray / "model.pt").read_bytes() == b"weights"
    assert sorted(p.name for p in stray.iterdir()) == ["model.pt"]


_HOLD = textwrap.dedent("""
    import sys, time
    from frcnn_cli.files import lock_folder
    lock = lock_folder(sys.argv[1], command="frcnn train")
    print("locked", flush=True)
    time.sleep(600)
""")


def test_a_run_folder_is_locked_and_a_stale_lock_is_taken_over(cli, data, tmp_path, capsys):
    """Two runs on one --out both ran and interleaved their metrics; a killed run's lock must
    not block the folder for ever."""
    from frcnn_cli.files import LOCK_NAME, lock_folder

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [str(Path(__file__).parents[1]), *sys.path])})
    try:
        assert holder.stdout.readline().strip() == "locked"
        for command in ("train", "train-alt"):
            r = cli(command, "--recipe", "shapes", "--train", data / "train.json", "--out",
                    run, "--iters", 1, *FAST)
            assert_user_error(r, f"run folder {run} is in use by process {holder.pid}")
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()  # as a crash or SIGKILL would: the lock file stays behind
        holder.wait()
    assert (run / LOCK_NAME).exists()
    capsys.readouterr()
    with lock_folder(run) as lock:
        warning = flat(capsys.readouterr().err)
        assert f"waslockedbyprocess{holder.pid}" in warning and "whichisgone" in warning
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (run / LOCK_NAME).exists()  # released: the folder is empty again
    r = cli("train", "--recipe", "shapes", "--train", data / "train.json", "--out", run,
            "--iters", 1, *FAST)
    assert r.exit_code == 0, r.output
    assert not (run / LOCK_NAME).exists() and (run / "model.pt").is_file()


# --------------------------------------------------------------------------- smaller


def test_square_brackets_in_paths_and_messages_are_printed(cli, data, checkpoint):
    """'images/[draft] shot.jpg' was reported as 'images/ shot.jpg' and "[x, y, w, h]"
    vanished from error lines: user text reached rich as markup."""
    coco = json.loads((data / "val.json").read_text())
    coco["images"][0]["file_name"] = "images/[draft] shot.jpg"
    (data / "draft.json").write_text(json.dumps(coco))
    r = cli("data", "check", data / "draft.json")
    assert r.exit_code == 2
    assert "images/[draft] shot.jpg not found" in r.output
    r = cli("eval", checkpoint, "--data", data / "draft.json", "--device", "cpu")
    assert_user_error(r, "images/[draft] shot.jpg")
    coco["annotations"][0]["bbox"] = "[1, 2]"
    (data / "bad.json").write_text(json.dumps(coco))
    r = cli("data", "check", data / "bad.json")
    assert_user_error(r, "'bbox' must be [x, y, w, h] numbers, got '[1, 2]'")


def test_outputs_get_the_umask_mode(cli, data, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "c.json"
        r = cli("data", "convert", data / "val.json", "-f", "coco", "--out", out)
        assert r.exit_code == 0, r.output
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        os.umask(0o027)
        r = cli("data", "stats", data / "val.json", "--json", tmp_path / "s.json")
        assert r.exit_code == 0, r.output
        assert stat.S_IMODE((tmp_path / "s.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export", "data merge"])
def test_usage_lines_show_plain_metavars(cli, command):
    r = cli(*command.split(), "--help")
    assert r.exit_code == 0
    for odd in ("{checkpoint}", "<list[Path]>", "<bool>", "{"):
        assert odd not in r.output, (command, odd)
    usage = next(line for line in r.output.splitlines() if "Usage:" in line)
    expected = {"train": "[OPTIONS]", "eval": "[OPTIONS] [CHECKPOINT] [PROPOSALS...]",
                "predict": "[OPTIONS] CHECKPOINT IMAGE_OR_DIR...",
                "export": "[OPTIONS] CHECKPOINT", "data merge": "[OPTIONS] ANN.json..."}
    assert usage.strip().endswith(expected[command]), usage


def test_detections_written_by_predict_are_tagged_drawings(cli, data, checkpoint, tmp_path):
    from frcnn_cli.outputs import DRAWING_SOFTWARE, picture_software

    out = tmp_path / "p"
    r = cli("predict", checkpoint, data / "images" / "val" / "000001.jpg", "--out", out,
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert picture_software(out / "000001.jpg") == DRAWING_SOFTWARE
    assert np.asarray(Image.open(out / "000001.jpg")).shape == (64, 64, 3)
