"""One door for every file: each kind of input is read and checked in one place, so that no
command, and no new path (detection files, proposal files, tiling, resume), skips a rule
another keeps. Each test is a case a user met: a silent wrong result, lost work or a crash.
Each ends in a correct result, or in one clear line and exit 2 with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reliability import (
    FAST,
    assert_user_error,
    digest,
    flat,
)


def edited(path: Path, name: str, edit) -> Path:
    """A copy of the dataset ``path`` beside it, changed by ``edit(dict)``."""
    coco = json.loads(path.read_text())
    edit(coco)
    out = path.parent / name
    out.write_text(json.dumps(coco))
    return out


def perfect(coco: dict, **extra) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.9, **extra} for a in coco["annotations"]]


def train_args(data: Path, out: Path, iters: int = 2, *more) -> list:
    return ["train", "--recipe", "shapes", "--train", data / "train.json", "--out", out,
            "--iters", iters, *FAST, *more]


# --------------------------------------------------------------------------- detection files


def test_predict_then_eval_detections_in_any_order_scores_as_eval(cli, trained_shapes,
                                                                   shapes_four, tmp_path):
    """predict numbers its images 1..N in the order given: given in reverse, eval --detections
    matched them to the dataset by id and scored the ground truth as mAP 0. Detections that
    carry file_name are matched by file."""
    coco = json.loads(shapes_four.read_text())
    files = [shapes_four.parent / im["file_name"] for im in coco["images"]][::-1]
    r = cli("predict", trained_shapes, *files, "--out", tmp_path / "p", "--score-thresh",
            0.05, "--device", "cpu")
    assert r.exit_code == 0, r.output
    dets = json.loads((tmp_path / "p" / "detections.json").read_text())
    dataset_id = {str(shapes_four.parent / im["file_name"]): im["id"] for im in coco["images"]}
    assert any(dataset_id[d["file_name"]] != d["image_id"] for d in dets)  # ids really differ
    r = cli("eval", "--detections", tmp_path / "p" / "detections.json", "--data", shapes_four,
            "--json", tmp_path / "from-file.json")
    assert r.exit_code == 0, r.output
    r = cli("eval", trained_shapes, "--data", shapes_four, "--json", tmp_path / "model.json",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    from_file, model = (json.loads((tmp_path / n).read_text())
                        for n in ("from-file.json", "model.json"))
    assert from_file["mAP"] > 0.8
    assert from_file["mAP"] == model["mAP"] and from_file["per_class"] == model["per_class"]


def test_detections_named_by_file_must_agree_with_the_dataset(cli, data, tmp_path):
    coco = json.loads((data / "train.json").read_text())
    assert len(coco["annotations"]) >= 3
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    cases = {
        "shuffled ids, right files": ([{**d, "image_id": 99 + d["image_id"],
                                        "file_name": names[d["image_id"]]}
                                       for d in perfect(coco)], None),
        "a file the dataset lacks": ([{**d, "file_name": "images/val/nowhere.jpg"}
                                      for d in perfect(coco)], "no image of the dataset"),
        "one file, two ids": ([{**d, "image_id": k, "file_name": names[coco["images"][0]["id"]]}
                               for k, d in enumerate(perfect(coco))], "disagree"),
        "some named, some not": ([{**d, "file_name": names[d["image_id"]]} if k else d
                                  for k, d in enumerate(perfect(coco))], "no 'file_name'"),
    }
    for name, (dets, refusal) in cases.items():
        path = tmp_path / "dets.json"
        path.write_text(json.dumps(dets))
        r = cli("eval", "--detections", path, "--data", data / "train.json", "--json",
                tmp_path / "e.json")
        if refusal is None:
            assert r.exit_code == 0, (name, r.output)
            assert json.loads((tmp_path / "e.json").read_text())["mAP"] == pytest.approx(1.0)
        else:
            assert_user_error(r, refusal)


def test_ground_truth_outside_its_image_is_left_out_of_eval_as_of_training(cli, data,
                                                                           tmp_path):
    """A box wholly outside its image counted as a missed object in eval (perfect detections:
    mAP 0.909) while training left it out with a warning."""
    def outside(coco):
        coco["annotations"].append({"id": 999, "image_id": coco["images"][0]["id"],
                                    "category_id": 1, "bbox": [100, 100, 5, 5]})
    val = edited(data / "val.json", "outside.json", outside)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(perfect(json.loads((data / "val.json").read_text()))))
    r = cli("eval", "--detections", dets, "--data", val, "--json", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e.json").read_text())["mAP"] == pytest.approx(1.0)
    assert "1boxoutsideimageleftout" in flat(r.output)


# --------------------------------------------------------------------------- outputs


def test_results_of_other_tools_are_never_replaced(cli, data, checkpoint, tmp_path):
    """eval --save-detections and --json replaced a user's own results file of the same
    shape. Only files frcnn wrote (and marked) are replaced."""
    coco = json.loads((data / "val.json").read_text())
    theirs = tmp_path / "theirs.json"
    theirs.write_text(json.dumps(perfect(coco)))  # a COCO results list from another tool
    their_eval = tmp_path / "their-eval.json"
    their_eval.write_text(json.dumps({"metric": "voc07", "mAP": 0.5, "per_class": {}}))
    before = digest(theirs, their_eval)
    r = cli("eval", "--detections", theirs, "--data", data / "val.json", "--json", their_eval)
    assert_user_error(r, "holds a JSON file, not an eval result")
    r = cli("eval", checkpoint, "--data", data / "val.json", "--save-detections", theirs,
            "--device", "cpu")
    assert_user_error(r, "not a detections file")
    assert digest(theirs, their_eval) == before
    for _ in range(2):  # frcnn's own outputs are replaced by the next run
        r = cli("eval", checkpoint, "--data", data / "val.json", "--save-detections",
                tmp_path / "mine.json", "--json", tmp_path / "mine-eval.json", "--device", "cpu")
        assert r.exit_code == 0, r.output
    r = cli("eval", "--detections", tmp_path / "mine.json", "--data", data / "val.json")
    assert r.exit_code == 0, r.output


def test_an_export_never_replaces_an_export_of_another_format(cli, checkpoint, tmp_path):
    """export --format torchscript -o m.onnx replaced an ONNX export."""
    onnx = tmp_path / "m.onnx"
    # an ONNX ModelProto as export writes it: ir_version first, frcnn's metadata at the end
    onnx.write_bytes(b"\x08\x0a" + bytes(64) + b"\x72\x10\x0a\x0dfrcnn_version")
    before = digest(onnx)
    r = cli("export", checkpoint, "--format", "torchscript", "--out", onnx, "--no-check")
    assert_user_error(r, "holds an ONNX export, not a TorchScript export")
    assert digest(onnx) == before


def test_a_class_named_all_gets_its_own_plot(cli, data, tmp_path):
    def rename(coco):  # the class of the first object, so that it has a curve
        first = coco["annotations"][0]["category_id"]
        next(c for c in coco["categories"] if c["id"] == first)["name"] = "all"
    val = edited(data / "val.json", "all.json", rename)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(perfect(json.loads(val.read_text()))))
    r = cli("eval", "--detections", dets, "--data", val, "--plot", tmp_path / "plots")
    assert r.exit_code == 0, r.output
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert "pr_all.png" in written and "pr_all_.png" in written, written


# --------------------------------------------------------------------------- proposal files


def test_a_proposals_file_of_another_dataset_is_refused_unless_asked(cli, data, checkpoint,
                                                                     tmp_path):
    """Proposals made for train.json (ids 1..4) were accepted for val.json (ids 1..2)."""
    import torch

    from frcnn_cli.data.annotations import load_annotations
    from frcnn_cli.proposals.files import save_proposals

    train = load_annotations(data / "train.json")
    boxes = {im["id"]: (torch.tensor([[2.0, 2, 30, 30]]), torch.tensor([0.9]))
             for im in train.images}
    made = save_proposals(boxes, train.images, tmp_path / "train-proposals.pt",
                          {"method": "rpn"}, train.path)
    val = data / "val.json"
    runs = [("eval", checkpoint, "--data", val, "--proposal-file", made, "--device", "cpu"),
            ("eval", "--data", val, "--compare-proposals", made),
            ("train-detector", "--recipe", "shapes", "--train", val, "--proposals", made,
             "--out", tmp_path / "det", "--stage", 1, "--iters", 1, *FAST)]
    for args in runs:
        assert_user_error(cli(*args), "was made for another dataset",
                          "images/train/000001.jpg there and images/val/000001.jpg here",
                          "--ignore-dataset-mismatch")
    assert not (tmp_path / "det").exists()
    r = cli("eval", "--data", val, "--compare-proposals", made, "--ignore-dataset-mismatch")
    assert r.exit_code == 0, r.output
    assert "usedanyway" in flat(r.output)


def test_a_detector_on_a_proposals_file_is_not_tiled(cli, data, checkpoint, tmp_path):
    """Tiles run the model's own RPN: external proposals with --tile are refused, not dropped."""
    import torch

    from frcnn_cli.data.annotations import load_annotations
    from frcnn_cli.proposals.files import save_proposals

    val = load_annotations(data / "val.json")
    boxes = {im["id"]: (torch.tensor([[2.0, 2, 30, 30]]), torch.tensor([0.9]))
             for im in val.images}
    made = save_proposals(boxes, val.images, tmp_path / "val-proposals.pt", {"method": "rpn"},
                          val.path)
    r = cli("eval", checkpoint, "--data", data / "val.json", "--proposal-file", made, "--tile",
            32, "--device", "cpu")
    assert_user_error(r, "a detector on external proposals (Selective Search, --proposal-file) "
                      "cannot be tiled")


# --------------------------------------------------------------------------- datasets


def test_eval_tile_checks_the_image_sizes_as_plain_eval(cli, data, checkpoint):
    def double(coco):
        coco["images"][0]["width"] = coco["images"][0]["height"] = 128
    val = edited(data / "val.json", "big.json", double)
    for tiled in ([], ["--tile", 32]):
        r = cli("eval", checkpoint, "--data", val, "--device", "cpu", *tiled)
        assert_user_error(r, "is 64x64 pixels but the JSON says 128x128")


def test_duplicate_categories_are_refused_by_every_command(cli, data, checkpoint, tmp_path):
    """Two classes under one id (eval scored circles as blobs), or one name for two ids."""
    def same_id(coco):
        coco["categories"].append({"id": 1, "name": "blob"})

    def same_name(coco):
        coco["categories"].append({"id": 9, "name": "circle"})
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    for edit, message in ((same_id, "category id 1 is used 2 times"),
                          (same_name, "category name 'circle' is used by ids 1, 9")):
        bad = edited(data / "train.json", f"{edit.__name__}.json", edit)
        before = digest(data)
        for args in (("train", "--recipe", "shapes", "--train", bad, "--out", tmp_path / "r",
                      "--iters", 1, *FAST),
                     ("eval", checkpoint, "--data", bad, "--device", "cpu"),
                     ("eval", "--detections", dets, "--data", bad),
                     ("data", "stats", bad), ("anchors", "--recipe", "shapes", "--data", bad),
                     ("data", "tile", bad, "--size", 32, "--out", tmp_path / "t.json")):
            assert_user_error(cli(*args), message)
        r = cli("data", "check", bad)
        assert r.exit_code == 2 and message in r.output, r.output
        assert digest(data) == before and not (tmp_path / "r").exists()


@pytest.mark.parametrize("setting", ["anchors.scales=[-8]", "anchors.scales=[4, .nan]",
                                     "anchors.ratios=[.inf]", "solver.lr=.inf",
                                     "solver.steps=[0]"])
def test_recipe_numbers_are_checked_as_the_options_are(cli, data, tmp_path, setting):
    """anchors.scales=[-8] trained to exit 0 with a useless model, while frcnn anchors --scales
    -8 was refused."""
    r = cli(*train_args(data, tmp_path / "run", 1, "--set", setting))
    assert_user_error(r, f"--set {setting.split('=')[0]}")
    assert not (tmp_path / "run").exists()


def test_val_problems_stop_training_before_it_starts(cli, data, tmp_path):
    """--val problems surfaced after training, with no model.pt."""
    def empty(coco):
        coco["images"], coco["annotations"] = [], []

    def renamed(coco):
        coco["categories"][0]["name"] = "disc"

    def no_objects(coco):
        for a in coco["annotations"]:
            a["difficult"] = 1
    broken = data / "images" / "val" / "broken.jpg"
    broken.write_bytes(b"not an image at all")

    def unreadable(coco):
        coco["images"][0]["file_name"] = "images/val/broken.jpg"
    for edit, message in ((empty, "lists no image"), (renamed, "are not the dataset"),
                          (no_objects, "has no object to evaluate against"),
                          (unreadable, "broken.jpg")):
        val = edited(data / "val.json", f"{edit.__name__}.json", edit)
        r = cli(*train_args(data, tmp_path / "run", 2, "--val", val))
        assert_user_error(r, message)
        assert not (tmp_path / "run").exists()


def test_resume_refuses_when_the_training_data_changed(cli, data, tmp_path):
    """--resume after the training JSON changed went on with the new classes (and crashed
    when a class was added)."""
    run = tmp_path / "run"
    assert cli(*train_args(data, run, 2)).exit_code == 0
    original = (data / "train.json").read_text()

    def added(coco):
        coco["categories"].append({"id": 4, "name": "blob"})

    def fewer(coco):
        gone = coco["images"].pop()["id"]
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != gone]
    for edit, message in ((added, "its classes changed (added 'blob')"),
                          (fewer, "its images changed (4 when the run started, 3 now)")):
        edited(data / "train.json", "train.json", edit)
        assert_user_error(cli("train", "--resume", run), message, "cannot resume")
        (data / "train.json").write_text(original)
    r = cli("train", "--resume", run)
    assert r.exit_code == 0, r.output


def test_resume_works_from_another_working_directory(cli, data, tmp_path, monkeypatch):
    """A run stored its paths as given, relative to the directory it started in."""
    monkeypatch.chdir(data.parent)
    r = cli(*train_args(Path(data.name), Path("run"), 2, "--checkpoint-every", 1))
    assert r.exit_code == 0, r.output
    (data.parent / "run" / "model.pt").unlink()  # as if stopped after its last checkpoint
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = cli("train", "--resume", data.parent / "run")
    assert r.exit_code == 0, r.output
    assert (data.parent / "run" / "model.pt").is_file()


# --------------------------------------------------------------------------- images


def test_a_32_bit_tiff_keeps_its_values(tmp_path):
    """A 32-bit integer TIFF of values 0..255 decoded to black (read as 16-bit data)."""
    from frcnn_cli.data.images import read_image

    values = np.arange(256, dtype=np.int32).reshape(16, 16)
    for scale, expected in ((1, values), (257, values), (1 << 20, values)):
        path = tmp_path / f"x{scale}.tif"
        Image.fromarray(values * scale).save(path)
        got = read_image(path)
        assert np.abs(got[..., 0].astype(int) - expected).max() <= 1, scale
        assert (got[..., 0] == got[..., 2]).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_boxes_follow_the_exif_orientation_as_pillow_turns_the_image(orientation):
    from PIL import ImageOps

    from frcnn_cli.data.images import orient_boxes

    raw = np.zeros((20, 40), np.uint8)
    raw[2:8, 5:15] = 255  # a box x 5..15, y 2..8 in the stored frame
    im = Image.fromarray(raw)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    turned = np.asarray(ImageOps.exif_transpose(im))
    ys, xs = np.nonzero(turned)
    want = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    got = orient_boxes([[5, 2, 10, 6]], orientation, 40, 20)[0]
    assert got.tolist() == pytest.approx(want)


def test_fix_turns_the_boxes_of_an_exif_rotated_image(cli, tmp_path):
    """--fix set the turned size of an EXIF-rotated image and left its boxes in the stored
    frame."""
    from frcnn_cli.data.images import read_image

    raw = np.zeros((20, 40, 3), np.uint8)
    raw[2:8, 5:15] = 255
    im = Image.fromarray(raw)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "photo.png", exif=exif.tobytes())
    coco = {"images": [{"id": 1, "file_name": "photo.png", "width": 40, "height": 20}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 2, 10, 6]}],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    r = cli("data", "check", tmp_path / "a.json", "--fix", tmp_path / "fixed.json")
    assert r.exit_code == 0, r.output
    fixed = json.loads((tmp_path / "fixed.json").read_text())
    assert (fixed["images"][0]["width"], fixed["images"][0]["height"]) == (20, 40)
    ys, xs = np.nonzero(read_image(tmp_path / "photo.png")[..., 0])
    want = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    assert fixed["annotations"][0]["bbox"] == pytest.approx(want)


def test_a_one_pixel_training_image_trains(cli, data, tmp_path):
    """A 1x1 image crashed training when flipped (numpy kept its negative stride)."""
    Image.new("RGB", (1, 1), (200, 10, 10)).save(data / "images" / "dot.png")

    def dot(coco):
        coco["images"].append({"id": 99, "file_name": "images/dot.png", "width": 1,
                               "height": 1})
        coco["annotations"].append({"id": 999, "image_id": 99, "category_id": 1,
                                    "bbox": [0, 0, 1, 1]})
    edited(data / "train.json", "train.json", dot)
    r = cli(*train_args(data, tmp_path / "run", 3, "--set", "augment.hflip=1.0", "--set",
                        "solver.images_per_batch=5"))
    assert r.exit_code == 0, r.output


def test_train_alt_leaves_out_in_every_stage_what_stage_one_skips(cli, data, tmp_path):
    """train-alt trained stage 1, then stopped at its first propose step on a corrupt image
    that stage 1 had skipped."""
    path = data / "images" / "train" / "000002.jpg"
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])  # its header reads; its pixels do not decode
    r = cli("train-alt", "--recipe", "shapes", "--train", data / "train.json", "--out",
            tmp_path / "run", "--iters", 2, *FAST, "--set", "alt.rpn_images_per_batch=2",
            "--set", "alt.detector_images_per_batch=2")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "model.pt").is_file()
    assert "000002.jpg" in r.output


# --------------------------------------------------------------------------- tiles


def test_far_too_many_tiles_are_refused_unless_asked(cli, data, checkpoint, tmp_path):
    """--overlap 0.99 made 28,080 tiles from 8 small images without a word."""
    image = data / "images" / "val" / "000001.jpg"
    before = digest(data)
    for args in (("data", "tile", data / "train.json", "--size", 32, "--overlap", 0.95,
                  "--out", tmp_path / "t.json"),
                 ("predict", checkpoint, image, "--tile", 32, "--overlap", 0.95, "--out",
                  tmp_path / "p", "--device", "cpu"),
                 ("eval", checkpoint, "--data", data / "val.json", "--tile", 32, "--overlap",
                  0.97, "--device", "cpu")):
        assert_user_error(cli(*args), "--many-tiles")
    assert digest(data) == before and not (tmp_path / "t.json").exists()
    r = cli("data", "tile", data / "train.json", "--size", 32, "--out", tmp_path / "t.json")
    assert r.exit_code == 0, r.output
    assert "4image(s)->36tile(s)of32px" in flat(r.output)


def test_data_tile_names_only_the_folders_it_made(cli, data, tmp_path):
    r = cli("data", "tile", data / "train.json", "--size", 128, "--out", tmp_path / "t.json")
    assert r.exit_code == 0, r.output
    assert "t_tiles" not in r.output and not (tmp_path / "t_tiles").exists()


def test_option_values_that_cannot_work_are_one_line(cli, data, tmp_path):
    """--negatives inf crashed (OverflowError); --compare-proposals ignored --tile."""
    r = cli("data", "tile", data / "train.json", "--size", 32, "--negatives", "inf",
            "--out", tmp_path / "t.json")
    assert_user_error(r, "--negatives must be a number")
    r = cli("eval", "--data", data / "val.json", "--compare-proposals", tmp_path / "a.pt",
            "--tile", 32)
    assert_user_error(r, "--compare-proposals compares proposal files; drop --tile")


# --------------------------------------------------------------------------- runs


def test_init_from_another_network_is_refused_before_loading(cli, data, checkpoint, tmp_path):
    """train -r shapes-fpn --init <a shapes checkpoint> crashed with a state-dict error."""
    r = cli("train", "--recipe", "shapes-fpn", "--train", data / "train.json", "--out",
            tmp_path / "run", "--iters", 1, "--init", checkpoint, *FAST)
    assert_user_error(r, "holds another network than recipe 'shapes-fpn' builds",
                      "its backbone: tiny", "tiny-fpn")


def test_the_lock_message_names_the_live_run(cli, data, tmp_path):
    """A run that had not reached its first checkpoint was called stopped, and the user told
    to delete the folder it was writing."""
    from frcnn_cli.files import lock_folder

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("args: {}\n")
    with lock_folder(run, "run folder", "frcnn train"):
        line = assert_user_error(cli(*train_args(data, run, 1)),
                                 f"is in use by process {os.getpid()}")
        assert "delete" not in line


def test_sigterm_saves_the_run_and_says_how_to_resume(data, tmp_path):
    """SIGTERM (what schedulers send) ended a run with exit 143, no save and no message."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "frcnn_cli", *map(str, train_args(data, run, 100000)),
           "--checkpoint-every", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text()):
        time.sleep(0.2)  # training is under way once it has logged
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output
    assert "terminated (SIGTERM) at iteration" in output and "Resume with" in output, output
    assert (run / "last.pt").is_file() and (run / "config.yaml").is_file()
    shutil.rmtree(run)
