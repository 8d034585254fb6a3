"""Bad input through the real commands: broken images and boxes, odd image modes, a very large
photo, bad recipes, wrong kinds of file and missing paths. Each ends in one clear error line
and exit 2, or in the documented handling (skipped with a warning), never in a traceback, and
no input changes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability import assert_user_error, digest

FAST = ["--set", "input.min_size=64", "--set", "input.max_size=64", "--set",
        "data.num_workers=0", "--set", "solver.images_per_batch=2", "--set",
        "solver.warmup_iters=0", "--set", "data.aspect_ratio_grouping=false",
        "--set", "train.log_every=1", "--device", "cpu"]

BOX = [20.0, 12.0, 24.0, 20.0]  # x, y, w, h of the bright square in every test picture
W, H = 64, 48
def flat(text: str) -> str:
    """Output without whitespace or box borders: the log handler and usage boxes wrap lines."""
    return "".join(text.split()).replace("│", "")


def picture() -> np.ndarray:
    """A 64x48 RGB picture: textured dark background, a bright square at BOX, a red corner
    marking the top left (so a wrong rotation or channel order changes it)."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
    x, y, w, h = (int(v) for v in BOX)
    arr[y:y + h, x:x + w] = (235, 210, 40)
    arr[:6, :6] = (250, 10, 10)
    return arr


def write_variants(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """The picture as each kind of file a user may have, with the RGB pixels a decoder must
    return for it: ``{name: (file, expected [H, W, 3])}``."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = picture()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    gray_rgb = np.repeat(gray[:, :, None], 3, axis=2)
    out = {}
    Image.fromarray(rgb).save(folder / "rgb.png")
    out["rgb"] = (folder / "rgb.png", rgb)
    Image.fromarray(gray).save(folder / "gray.png")
    out["gray"] = (folder / "gray.png", gray_rgb)
    Image.fromarray(np.dstack([rgb, np.full((H, W), 90, np.uint8)])).save(folder / "rgba.png")
    out["rgba"] = (folder / "rgba.png", rgb)
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "gray16.png")
    out["gray16"] = (folder / "gray16.png", gray_rgb)
    # stored on its side, with the EXIF tag (6: rotate 90 clockwise) that puts it upright
    stored = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(folder / "exif.png", exif=exif)
    out["exif"] = (folder / "exif.png", rgb)
    stored.save(folder / "exif.jpg", exif=exif, quality=100)
    out["exif-jpeg"] = (folder / "exif.jpg", None)  # lossy: checked by its layout only
    return out


def write_dataset(path: Path, files: list[Path], boxes: list[list[list[float]]] | None = None,
                  sizes: list[tuple[int, int]] | None = None,
                  categories: list[int] | None = None) -> Path:
    """A COCO file for ``files`` (sizes as the user sees them), one BOX each by default."""
    boxes = boxes if boxes is not None else [[BOX]] * len(files)
    sizes = sizes or [(W, H)] * len(files)
    images, anns = [], []
    for i, (f, bs, (w, h)) in enumerate(zip(files, boxes, sizes, strict=True), start=1):
        images.append({"id": i, "file_name": str(Path(f).relative_to(path.parent)),
                       "width": w, "height": h})
        for b in bs:
            anns.append({"id": len(anns) + 1, "image_id": i,
                         "category_id": (categories or [1])[len(anns) % len(categories or [1])],
                         "bbox": b})
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
        {"id": 3, "name": "triangle"}]}, allow_nan=True))
    return path


def make_checkpoint(path: Path, workers: int = 0) -> Path:
    """An untrained, complete shapes model at 64 px (its detections are arbitrary but fixed:
    enough to compare two inputs) whose recipe reads images with ``workers`` processes."""
    from frcnn_cli import config
    from frcnn_cli.checkpoint import checkpoint_meta, save_checkpoint
    from frcnn_cli.model.faster_rcnn import build_model

    recipe = config.load_recipe("shapes", ["input.min_size=64", "input.max_size=64",
                                           f"data.num_workers={workers}"])
    classes = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
               {"id": 3, "name": "triangle"}]
    torch.manual_seed(0)
    model = build_model(recipe, 3, classes=classes)
    save_checkpoint({"model": model.state_dict(), "meta": checkpoint_meta(model)}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    return write_variants(tmp_path_factory.mktemp("variants") / "images")


# --------------------------------------------------------------------------- image modes


def test_odd_images_decode_upright_with_their_boxes_in_place(variants, tmp_path):
    """What the training and test loaders hand the model: three channels, upright, the box
    on the bright square."""
    from frcnn_cli import config
    from frcnn_cli.data.annotations import load_annotations
    from frcnn_cli.data.dataset import DetectionDataset

    names = list(variants)
    ann_path = write_dataset(variants["rgb"][0].parent.parent / "modes.json",
                             [variants[n][0] for n in names])
    recipe = config.load_recipe("shapes", [f"input.min_size={H}", f"input.max_size={W}",
                                           "augment.hflip=0"])
    for train in (False, True):
        dataset = DetectionDataset(load_annotations(ann_path), recipe, train=train)
        for i, name in enumerate(names):
            image, target = dataset[(i, 0)] if train else dataset[i]
            assert image.shape == (3, H, W), name
            x, y, w, h = BOX
            assert target["boxes"].tolist() == [[x, y, x + w, y + h]], name
            assert image.dtype == torch.uint8, name  # the model divides by 255
            pixels = image.permute(1, 2, 0).numpy().astype(np.float64)
            expected = variants[name][1]
            if expected is not None:  # lossless files: exactly the pixels a viewer shows
                assert np.array_equal(pixels.astype(np.uint8), expected), name
            else:  # the rotated JPEG: upright, the square under its box, the marker top left
                inside = pixels[int(y) + 2:int(y + h) - 2, int(x) + 2:int(x + w) - 2].mean()
                assert inside > 150 and pixels[H - 8:, :8].mean() < 70, name
                assert pixels[:6, :6, 0].mean() > 200 > 3 * pixels[:6, :6, 1].mean(), name


def test_odd_images_train_and_check_clean(cli, variants, tmp_path):
    names = list(variants)
    ann = write_dataset(variants["rgb"][0].parent.parent / "train-modes.json",
                        [variants[n][0] for n in names])
    before = digest(variants["rgb"][0].parent, ann)
    r = cli("data", "check", ann)
    assert r.exit_code == 0 and "0 error(s), 0 warning(s)" in r.output, r.output
    run = tmp_path / "run"
    r = cli("train", "--recipe", "shapes", "--train", ann, "--out", run, "--iters",
            math.ceil(len(names) / 2), *FAST)
    assert r.exit_code == 0, r.output
    assert "skipping" not in r.output and "ignores" not in r.output
    lines = (run / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    assert len(losses) == math.ceil(len(names) / 2) and all(math.isfinite(v) for v in losses)
    assert digest(variants["rgb"][0].parent, ann) == before


def test_predict_sees_odd_images_as_their_plain_rgb_twins(cli, variants, checkpoint, tmp_path):
    """Grayscale, 16-bit, RGBA and EXIF-rotated files give exactly the detections of the plain
    RGB file a viewer would show, and drawings in the upright frame."""
    twins = tmp_path / "twins"
    twins.mkdir()
    gray = variants["gray"][1]
    Image.fromarray(gray).save(twins / "gray-as-rgb.png")
    twin_of = {"gray": "gray-as-rgb.png", "gray16": "gray-as-rgb.png", "rgba": "rgb.png",
               "exif": "rgb.png", "rgb": "rgb.png"}
    Image.fromarray(variants["rgb"][1]).save(twins / "rgb.png")
    before = digest(variants["rgb"][0].parent)

    def detections(files, out):
        r = cli("predict", checkpoint, *files, "--out", out, "--score-thresh", 0, "--device",
                "cpu")
        assert r.exit_code == 0, r.output
        found = json.loads((out / "detections.json").read_text())
        by_file: dict[str, list] = {}
        for d in found:
            by_file.setdefault(Path(d["file_name"]).name, []).append(
                (d["category_id"], d["bbox"], d["score"]))
        return by_file

    odd = detections([variants[n][0] for n in twin_of], tmp_path / "odd")
    plain = detections([twins / "rgb.png", twins / "gray-as-rgb.png"], tmp_path / "plain")
    for name, twin in twin_of.items():
        got = sorted(odd[variants[name][0].name])
        want = sorted(plain[twin])
        assert got, f"{name}: no detections to compare at threshold 0"
        assert [c for c, _, _ in got] == [c for c, _, _ in want], name
        np.testing.assert_allclose([b for _, b, _ in got], [b for _, b, _ in want], atol=0.02,
                                   err_msg=name)
        np.testing.assert_allclose([s for _, _, s in got], [s for _, _, s in want], atol=1e-5,
                                   err_msg=name)
        drawing = tmp_path / "odd" / variants[name][0].name
        assert Image.open(drawing).size == (W, H), name
    assert digest(variants["rgb"][0].parent) == before


def test_a_very_large_photo_is_resized_early(tmp_path, checkpoint):
    """8000 x 6000: training samples stay 8-bit until the model resizes them, with the box
    scaled, and predict never makes a float tensor of the full photo (4 bytes per channel):
    the model converts and resizes a large 8-bit image in bands of rows."""
    from PIL import ImageDraw

    from frcnn_cli import build_model, config
    from frcnn_cli.data.annotations import load_annotations
    from frcnn_cli.data.dataset import DetectionDataset

    big = tmp_path / "images" / "big.jpg"
    big.parent.mkdir()
    im = Image.new("RGB", (8000, 6000), (20, 20, 20))
    ImageDraw.Draw(im).rectangle([2000, 1500, 3999, 2999], fill=(240, 200, 10))
    im.save(big, quality=85)
    del im
    small = tmp_path / "images" / "small.png"
    Image.fromarray(picture()).save(small)
    ann = write_dataset(tmp_path / "big.json", [big], boxes=[[[2000, 1500, 2000, 1500]]],
                        sizes=[(8000, 6000)])

    recipe = config.load_recipe("shapes", ["input.min_size=60", "input.max_size=200",
                                           "augment.hflip=0"])
    image, target = DetectionDataset(load_annotations(ann), recipe, train=True)[(0, 0)]
    assert image.shape == (3, 6000, 8000) and image.dtype == torch.uint8  # 137 MiB, not 549
    model = build_model(recipe, 1).train()
    batch, targets, _ = model.transform([image], [target])
    assert batch.image_sizes[0].tolist() == [60, 80]  # 6000 -> 60: a factor of 0.01
    np.testing.assert_allclose(targets[0]["boxes"][0].tolist(), [20, 15, 40, 30], atol=0.01)
    pixels = batch.tensors[0] * model.transform.std + model.transform.mean
    assert pixels[:, 17:28, 22:38].mean() > 0.5 > pixels[:, :10, :10].mean()

    # One process predicts on a small picture (torch and the model are in memory, the peak so
    # far is the baseline), then on the photo: that may add less than two copies of its
    # pixels. Converting the photo to float first added over three.
    script = ("import resource, sys\n"
              "from frcnn_cli.cli.app import app\n"
              "ckpt, small, big, out = sys.argv[1:]\n"
              "for n, image in enumerate((small, big)):\n"
              "    try:\n"
              "        app(['--quiet', 'predict', ckpt, image, '--out', f'{out}/{n}',\n"
              "             '--device', 'cpu', '--score-thresh', '0'], standalone_mode=False)\n"
              "    except SystemExit as e:\n"
              "        assert not e.code, e.code\n"
              "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(checkpoint), str(small), str(big),
                           str(tmp_path / "pred")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    base, peak = (float(v) for v in proc.stdout.split()[-2:])
    decoded = 8000 * 6000 * 3 / 2**20  # 137 MiB of RGB
    assert peak - base < 2 * decoded, (base, peak)
    assert Image.open(tmp_path / "pred" / "1" / "big.jpg").size == (8000, 6000)
    dets = json.loads((tmp_path / "pred" / "1" / "detections.json").read_text())
    assert dets and all(d["bbox"][0] >= 0 and d["bbox"][0] + d["bbox"][2] <= 8000 + 1e-6
                        and d["bbox"][1] >= 0 and d["bbox"][1] + d["bbox"][3] <= 6000 + 1e-6
                        for d in dets)


# --------------------------------------------------------------------------- broken datasets


@pytest.fixture
def messy(tmp_path):
    """A dataset a user might really have: good pictures, one truncated, one of each broken
    box kind, and an image without objects."""
    folder = tmp_path / "messy"
    files = []
    for i in range(5):
        f = folder / "images" / f"{i}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(picture(), 3 * i, axis=1)).save(f)
        files.append(f)
    data = (folder / "images" / "0.png").read_bytes()
    truncated = folder / "images" / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    files.append(truncated)
    boxes = [[BOX, [float("nan"), 1.0, 5.0, 5.0]], [BOX, [3.0, 3.0, 0.0, 9.0]],
             [BOX, [3.0, 3.0, 9.0, -4.0]], [BOX, [500.0, 400.0, 10.0, 10.0]], [], [BOX]]
    return write_dataset(folder / "train.json", files, boxes)


def test_check_reports_each_broken_thing_by_name(cli, messy):
    before = digest(messy.parent)
    r = cli("data", "check", messy)
    assert_user_error(r, "has 5 error(s)")
    out = flat(r.output)
    for text in ("unreadableimage(1)", "truncated.png", "degeneratebox(3)", "[nan,1,5,5]",
                 "[3,3,0,9]", "[3,3,9,-4]", "boxoutsideimage(1)", "[500,400,10,10]",
                 "imagewithoutobjects(1)"):
        assert text in out, (text, r.output)
    assert digest(messy.parent) == before


def test_training_skips_what_it_cannot_use_and_says_so(cli, messy, tmp_path):
    """Documented handling: unreadable images are skipped with a warning naming them, broken
    boxes are ignored with one warning counting them; the run finishes."""
    before = digest(messy.parent)
    run = tmp_path / "run"
    r = cli("train", "--recipe", "shapes", "--train", messy, "--out", run, "--iters", 3, *FAST)
    assert r.exit_code == 0, r.output
    out = flat(r.output)
    assert "trainingleavesout1image(s)thatcannotberead" in out and "truncated.png" in out
    assert "3degenerateboxes,1boxoutsideimageleftout,intrainingandevaluation" in out, r.output
    assert (run / "model.pt").is_file()
    assert digest(messy.parent) == before


def test_training_on_nothing_usable_is_one_line(cli, messy, tmp_path):
    folder = messy.parent
    truncated = folder / "images" / "truncated.png"
    broken = write_dataset(folder / "broken.json", [truncated] * 3)
    empty = write_dataset(folder / "empty.json", [])
    before = digest(folder)
    r = cli("train", "--recipe", "shapes", "--train", broken, "--out", tmp_path / "a",
            "--iters", 1, *FAST)
    assert_user_error(r, "none of its 3 image(s) can be read", "truncated.png",
                      "frcnn data check")
    r = cli("train", "--recipe", "shapes", "--train", empty, "--out", tmp_path / "b",
            "--iters", 1, *FAST)
    assert_user_error(r, "lists no image")
    r = cli("data", "check", empty)
    assert_user_error(r, "has 1 error(s)")
    assert "empty.json lists no image" in r.output
    r = cli("data", "split", empty, "--out", tmp_path / "split")
    assert_user_error(r, "cannot split 0 image(s)")
    assert digest(folder) == before


def test_unknown_category_stops_train_and_eval(cli, messy, checkpoint, tmp_path):
    files = [messy.parent / "images" / "0.png"]
    bad = write_dataset(messy.parent / "unknown.json", files, categories=[7])
    before = digest(messy.parent)
    r = cli("train", "--recipe", "shapes", "--train", bad, "--out", tmp_path / "run",
            "--iters", 1, *FAST)
    assert_user_error(r, "annotation 1 (image 1): category 7 is not in 'categories'",
                      "frcnn data check")
    r = cli("eval", checkpoint, "--data", bad, "--device", "cpu")
    assert_user_error(r, "category 7")
    r = cli("data", "check", bad)
    assert_user_error(r)
    assert "category 7 is not in 'categories'" in r.output
    assert digest(messy.parent) == before


def test_eval_names_a_missing_or_broken_image_and_an_empty_truth(cli, messy, checkpoint,
                                                                tmp_path):
    folder = messy.parent
    missing = write_dataset(folder / "missing.json", [folder / "images" / "0.png"])
    data = json.loads(missing.read_text())
    data["images"][0]["file_name"] = "images/gone.png"
    missing.write_text(json.dumps(data))
    truncated = write_dataset(folder / "truncated.json", [folder / "images" / "truncated.png"])
    no_objects = write_dataset(folder / "none.json", [folder / "images" / "0.png"], [[]])
    before = digest(folder)
    # read in the main process, and in a worker process: no traceback from the worker
    with_worker = make_checkpoint(tmp_path / "worker.pt", workers=1)
    for ckpt in (checkpoint, with_worker):
        r = cli("eval", ckpt, "--data", missing, "--device", "cpu")
        assert_user_error(r, "image not found", "gone.png")
    r = cli("eval", checkpoint, "--data", truncated, "--device", "cpu")
    assert_user_error(r, "cannot read image header", "truncated.png")
    assert r.output.count("truncated.png") == 1  # named once
    r = cli("eval", checkpoint, "--data", no_objects, "--device", "cpu")
    assert_user_error(r, "has no object to evaluate against")
    assert digest(folder) == before


def test_predict_skips_a_truncated_image_and_keeps_going(cli, messy, checkpoint, tmp_path):
    images = messy.parent / "images"
    before = digest(images)
    r = cli("predict", checkpoint, images / "truncated.png", images / "1.png", "--out",
            tmp_path / "out", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "skipped1unreadableimage(s)of2" in flat(r.output)
    assert (tmp_path / "out" / "1.png").is_file() and not (tmp_path / "out" /
                                                            "truncated.png").exists()
    assert digest(images) == before


# --------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("override, message", [
    ("solver.lrr=0.1", "unknown recipe key 'solver.lrr'; did you mean 'solver.lr'?"),
    ("solver.lr=abc", "bad value for 'solver.lr'"),
    ("solver.lr=-1", "bad value for 'solver.lr': Input should be greater than 0"),
    ("solver.lr=nan", "bad value for 'solver.lr'"),
    ("input.min_size=0", "bad value for 'input.min_size'"),
    ("anchors.ratios=[]", "bad value for 'anchors.ratios'"),
    ("augment.extra=[{name: Bogus}]", "unknown albumentations transform 'Bogus'"),
    ("solver.lr", "must look like section.key=value"),
])
def test_bad_recipe_override_stops_train_before_it_writes(cli, messy, tmp_path, override,
                                                          message):
    run = tmp_path / "run"
    r = cli("train", "--recipe", "shapes", "--train", messy, "--out", run, "--iters", 1,
            "--set", override)
    assert_user_error(r, message)
    assert not (run / "config.yaml").exists() and not (run / "last.pt").exists()


def test_bad_recipe_files(cli, messy, tmp_path):
    cases = {
        "typo.yaml": ("name: t\nsolver: {lr: 0.1, momentun: 0.9}\n",
                      "unknown recipe key 'solver.momentun'; did you mean 'solver.momentum'?"),
        "broken.yaml": ("name: b\nsolver: [1, 2\n", "is not valid YAML"),
        "binary.yaml": (b"\x89PNG\r\n\x1a\n\x00\x00", "cannot read recipe"),
        "value.yaml": ("name: v\nrpn: {nms_thresh: 7}\n", "bad value for 'rpn.nms_thresh'"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        for args in (("recipe", "show", path),
                     ("train", "--recipe", path, "--train", messy, "--out",
                      tmp_path / f"run-{name}", "--iters", 1)):
            assert_user_error(cli(*args), message, name)
        assert not (tmp_path / f"run-{name}" / "config.yaml").exists()
    assert_user_error(cli("recipe", "show", "shapez"), "did you mean 'shapes'")


# --------------------------------------------------------------------------- wrong files


def test_wrong_kind_of_file_is_named(cli, messy, checkpoint, tmp_path):
    png = messy.parent / "images" / "0.png"
    val = messy
    proposals = tmp_path / "proposals.pt"
    from frcnn_cli.proposals.files import save_proposals

    save_proposals({1: (torch.zeros(1, 4), torch.zeros(1))}, [{"id": 1, "file_name": "1.jpg"}],
                   proposals, {})
    truncated_ckpt = tmp_path / "truncated.pt"
    truncated_ckpt.write_bytes(checkpoint.read_bytes()[:5000])
    results = tmp_path / "results.json"
    results.write_text("[]")
    before = digest(messy.parent, checkpoint)
    cases = [
        (("data", "check", png), "is not a text JSON file"),
        (("data", "stats", png), "is not a text JSON file"),
        (("data", "split", png, "--out", tmp_path / "s"), "is not a text JSON file"),
        (("data", "check", checkpoint), "is not a text JSON file"),
        (("data", "check", results), "expected a JSON object"),
        (("data", "check", messy.parent), "is a directory"),
        (("data", "convert", png, "-f", "coco", "--out", tmp_path / "c.json"),
         "is not a UTF-8 text file"),
        (("data", "convert", png, "-f", "csv", "--out", tmp_path / "c.json"),
         "is not a UTF-8 text file"),
        (("data", "convert", png, "-f", "yolo", "--out", tmp_path / "c.json"),
         "is not a UTF-8 text file"),
        (("data", "convert", png, "-f", "voc", "--out", tmp_path / "c.json"),
         "is not a folder"),
        (("train", "--recipe", "shapes", "--train", png, "--out", tmp_path / "r", *FAST),
         "is not a text JSON file"),
        (("eval", checkpoint, "--data", png, "--device", "cpu"), "is not a text JSON file"),
        (("eval", "--detections", checkpoint, "--data", val), "is not a text JSON file"),
        (("eval", truncated_ckpt, "--data", val), "truncated or not a PyTorch file"),
        (("eval", proposals, "--data", val), "is not an frcnn checkpoint"),
        (("predict", messy.parent, png, "--out", tmp_path / "p"), "is a directory"),
        (("train-detector", "--recipe", "shapes", "--train", val, "--proposals", checkpoint,
          "--out", tmp_path / "d", "--stage", 1, *FAST), "is not a proposals file"),
    ]
    for args, message in cases:
        r = cli(*args)
        if r.exit_code == 2 and "error:" not in r.output:  # Typer's usage error, in a box
            assert "Traceback" not in r.output and flat(message) in flat(r.output), r.output
        else:
            assert_user_error(r, message)
    assert digest(messy.parent, checkpoint) == before


def test_a_json_or_png_given_as_checkpoint_is_not_called_a_payload(cli, messy):
    for wrong in (messy, messy.parent / "images" / "0.png"):
        r = cli("eval", wrong, "--data", messy, "--device", "cpu")
        line = assert_user_error(r, str(wrong))
        assert "payload" not in line and "not a PyTorch" in line, line


def test_missing_paths_are_named(cli, messy, checkpoint, tmp_path):
    gone = tmp_path / "gone"
    val = messy
    cases = [
        (("data", "check", gone / "a.json"), "not found"),
        (("data", "stats", gone / "a.json"), "not found"),
        (("data", "split", gone / "a.json", "--out", tmp_path / "s"), "not found"),
        (("data", "convert", gone, "-f", "voc", "--out", tmp_path / "c.json"), "not found"),
        (("data", "convert", gone / "a.csv", "-f", "csv", "--out", tmp_path / "c.json"),
         "not found"),
        (("train", "--recipe", "shapes", "--train", gone / "a.json", "--out", tmp_path / "r"),
         "training set not found"),
        (("train", "--recipe", "shapes", "--train", val, "--val", gone / "v.json", "--out",
          tmp_path / "r2"), "validation set not found"),
        (("train", "--recipe", "shapes", "--train", val, "--out", tmp_path / "r3", "--init",
          gone / "m.pt"), "not found"),
        (("train", "--resume", gone), "run folder not found"),
        (("train", "--recipe", gone / "r.yaml", "--train", val, "--out", tmp_path / "r4"),
         "r.yaml"),
        (("train-detector", "--recipe", "shapes", "--train", val, "--proposals",
          gone / "p.pt", "--out", tmp_path / "d", "--stage", 1), "proposals file not found"),
        (("propose", gone / "m.pt", "--data", val, "--out", tmp_path / "p.pt"),
         "checkpoint not found"),
        (("eval", gone / "m.pt", "--data", val), "checkpoint not found"),
        (("eval", checkpoint, "--data", gone / "v.json"), "not found"),
        (("eval", "--detections", gone / "d.json", "--data", val), "not found"),
        (("predict", gone / "m.pt", messy.parent / "images", "--out", tmp_path / "o"),
         "checkpoint not found"),
        (("predict", checkpoint, gone, "--out", tmp_path / "o2"), "input not found"),
    ]
    for args, message in cases:
        line = assert_user_error(cli(*args), message)
        assert "gone" in line, line
    assert not gone.exists()
