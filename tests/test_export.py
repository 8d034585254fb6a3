"""frcnn export: ONNX and TorchScript files of a briefly trained shapes detector agree with the
PyTorch model at several image sizes, zero detections included; the command checks before it
writes."""

import json

import numpy as np
import pytest
import torch

from frcnn_cli import build_model
from frcnn_cli.checkpoint import checkpoint_meta, save_checkpoint
from frcnn_cli.config import load_recipe
from frcnn_cli.data.synth import SynthConfig, draw_image
from frcnn_cli.export.verify import Agreement, check_export, check_images, compare

SIZE = 128
CLASSES = [{"id": 4, "name": "circle"}, {"id": 7, "name": "square"}, {"id": 9, "name": "tri"}]


def synthetic_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pixels, objects = draw_image(SynthConfig(size=SIZE, empty_fraction=0.0), rng)
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)]
        out.append((torch.from_numpy(pixels.transpose(2, 0, 1).copy()).float() / 255,
                    {"boxes": torch.tensor(boxes, dtype=torch.float32),
                     "labels": torch.tensor([o["category_id"] for o in objects])}))
    return out


@pytest.fixture(scope="module")
def model():
    """The shapes recipe at 128 px, trained for a few SGD steps (separated scores, real
    boxes); the score threshold sits between a blank image's best score and the check
    pictures' best, so the pictures have detections and the blank image has none."""
    torch.manual_seed(0)
    recipe = load_recipe("shapes", [f"input.min_size={SIZE}", f"input.max_size={SIZE}"])
    net = build_model(recipe, 3, classes=CLASSES)
    samples = synthetic_batch(8)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()
    for step in range(8):
        batch = samples[2 * (step % 4):2 * (step % 4) + 2]
        losses = net([b[0] for b in batch], [b[1] for b in batch])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    net.eval()
    net.roi_heads.score_thresh = 0.0
    with torch.inference_mode():
        blank = net([torch.zeros(3, 90, 160)])[0]["scores"].max()
        pictures = min(net([im])[0]["scores"].max() for _, im in check_images())
    assert blank < pictures
    net.roi_heads.score_thresh = float(blank + pictures) / 2
    net.recipe.roi_heads.score_thresh = net.roi_heads.score_thresh  # into its checkpoint too
    return net


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint({"model": model.state_dict(), "meta": checkpoint_meta(model, 8)}, path)
    return path


def images_to_check():
    """The two synthetic check pictures, an image already at the model's scale (no resize),
    an extreme aspect ratio, and a blank image (no detections)."""
    images = check_images()
    rng = np.random.default_rng(5)
    pixels, _ = draw_image(SynthConfig(size=SIZE, empty_fraction=0.0), rng)
    images.append(("at scale", torch.from_numpy(pixels.transpose(2, 0, 1).copy()) / 255.0))
    images.append(("wide", images[0][1][:, :60, :]))
    images.append(("blank", torch.zeros(3, 90, 160)))
    return images


def assert_agree(model, run):
    results = check_export(model, run, images_to_check())
    for r in results:
        assert r.ok, r
    counts = {r.image: r.detections for r in results}
    assert counts["blank"] == 0
    assert all(counts[name] > 0 for name, _ in check_images())
    return results


def test_torchscript_export_command(model, checkpoint, tmp_path, cli):
    from frcnn_cli.inference.exported import load_torchscript

    out = tmp_path / "model.torchscript.pt"
    r = cli("export", checkpoint, "--format", "torchscript", "--out", out)
    assert r.exit_code == 0, r.output
    assert "against PyTorch" in r.output and "wrote" in r.output
    module, meta = load_torchscript(out.read_bytes())
    assert json.loads(meta["classes"]) == CLASSES

    def run(image):
        with torch.inference_mode():
            return module(image)

    assert_agree(model, run)


def test_compare_pairs_detections_by_class_and_box():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 9, 9]])
    ref = (boxes, torch.tensor([0.9, 0.8, 0.8]), torch.tensor([1, 2, 1]))
    swapped = (boxes[[0, 2, 1]], torch.tensor([0.9, 0.8, 0.8]), torch.tensor([1, 1, 2]))
    assert compare(ref, swapped).ok  # near-equal scores may come out in another order
    shifted = (boxes + torch.tensor([0, 0, 0, 0.02]), ref[1], ref[2])
    r = compare(ref, shifted)
    assert not r.ok and r.max_box_diff == pytest.approx(0.02, abs=1e-6)
    r = compare(ref, (boxes, ref[1] + 0.002, ref[2]))
    assert not r.ok and r.max_score_diff == pytest.approx(0.002, abs=1e-6)
    r = compare(ref, (boxes, ref[1], torch.tensor([1, 2, 2])))  # a class changed
    assert not r.ok and r.unmatched == 1
    r = compare(ref, tuple(t[:2] for t in ref))  # one detection missing
    assert not r.ok and (r.detections, r.exported, r.unmatched) == (3, 2, 1)
    empty = tuple(t[:0] for t in ref)
    assert compare(empty, empty) == Agreement("", 0, 0, 0, 0, 0, 0.0, 0.0)
    assert compare(empty, ref).exported == 3 and not compare(empty, ref).ok


def test_disagreeing_export_writes_nothing_and_exits_1(checkpoint, tmp_path, cli, monkeypatch):
    import frcnn_cli.export as export

    def shifted_runner(fmt, data):
        assert data == b"exported"

        def run(image):
            from frcnn_cli import load_model

            d = load_model(checkpoint)([image])[0]
            return d["boxes"] + 0.5, d["scores"], d["labels"]
        return torch.inference_mode()(run)

    monkeypatch.setattr(export, "export_bytes", lambda *a, **k: b"exported")
    monkeypatch.setattr(export, "load_exported", shifted_runner)
    out = tmp_path / "m.onnx"
    r = cli("export", checkpoint, "--format", "onnx", "--out", out)
    assert r.exit_code == 1
    assert "disagrees with the PyTorch model" in r.output and "nothing written" in r.output
    assert not out.exists()


def test_export_refuses_bad_requests(checkpoint, tmp_path, cli):
    r = cli("export", checkpoint, "--format", "onnx", "--out", checkpoint)
    assert r.exit_code == 2 and "same file as the input" in r.output
    r = cli("export", checkpoint, "--format", "torchscript", "--opset", 18,
            "--out", tmp_path / "c.pt")
    assert r.exit_code == 2 and "--opset is for --format onnx" in r.output
    r = cli("export", tmp_path / "missing.pt", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert r.exit_code == 2 and "not found" in r.output
