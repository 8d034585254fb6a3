"""frcnn benchmark: stage times that add up, FLOPs against a hand count, the torchvision
comparison, and the command's errors."""

import contextlib
import json
import time

import pytest
import torch

from frcnn_cli import build_model
from frcnn_cli.config import load_recipe
from frcnn_cli.export.benchmark import (
    STAGES,
    StageClock,
    benchmark,
    benchmark_image,
    count_flops,
    models_to_time,
)
from frcnn_cli.model.backbones import TINY_LAYERS
from frcnn_cli.model.reference import build_reference


def shapes_model():
    torch.manual_seed(0)
    return build_model(load_recipe("shapes", ["input.min_size=128", "input.max_size=128"]),
                       3).eval()


def test_stage_clock_splits_a_forward():
    model = shapes_model()
    clock = StageClock(model, sync=lambda: None)
    image = torch.rand(3, 96, 128)
    with torch.inference_mode():
        start = time.perf_counter()
        model([image])
        total = time.perf_counter() - start
    stages = clock.stages()
    clock.remove()
    assert list(stages) == list(STAGES) and all(t > 0 for t in stages.values())
    assert 0.5 * total < sum(stages.values()) <= total
    assert not model._forward_hooks and not model.backbone._forward_hooks


def test_backbone_flops_match_a_hand_count():
    model = shapes_model()
    image = torch.rand(3, 128, 128)  # at the model's scale: no resize, no padding
    _, parts = count_flops(model, image, contextlib.nullcontext)
    flops, side, cin = 0, 128, 3
    for cout, stride, *_ in TINY_LAYERS:  # 3x3 convs, multiply-add = 2 FLOPs
        side //= stride
        flops += 2 * cin * cout * 9 * side * side
        cin = cout
    assert parts["backbone"] == flops
    k, c = model.rpn.head.num_anchors, model.recipe.rpn.channels  # 3x3 conv, then 1x1 convs
    assert parts["rpn"] == 2 * 8 * 8 * (128 * c * 9 + c * k * (2 + 4))  # 2k scores, 4k deltas
    with torch.inference_mode():
        rois = len(model([image], rpn_only=True)[0]["boxes"])
    # fc6 6272 -> 256, fc7 256 -> 256, class scores 256 -> 4, deltas 256 -> 16, per RoI; fc6
    # and fc7 go through oneDNN's linear in fp32 CPU inference, counted too
    assert parts["roi_heads"] == 2 * rois * 256 * (6272 + 256 + 4 + 16)


def test_benchmark_against_torchvision():
    model = shapes_model()
    torch.manual_seed(0)
    reference = build_reference(model.recipe, 3)
    result = benchmark({"frcnn": model, "torchvision": reference}, torch.rand(3, 120, 160),
                       torch.device("cpu"), warmup=1, runs=3)
    d = result.to_dict()
    assert [m["name"] for m in d["models"]] == ["frcnn", "torchvision"]
    for m in d["models"]:
        assert len(m["runs_ms"]["total"]) == 3 and m["median_ms"]["total"] > 0
        assert m["gflops"] > 0 and m["gflops_per_s"] > 0
        for i, total in enumerate(m["runs_ms"]["total"]):  # stages lie inside each run
            stages = sum(m["runs_ms"][s][i] for s in STAGES)
            assert 0.5 * total < stages <= total
    assert d["ratio"]["total"] == pytest.approx(
        d["models"][0]["median_ms"]["total"] / d["models"][1]["median_ms"]["total"])
    assert d["models"][0]["part_gflops"]["backbone"] == pytest.approx(
        d["models"][1]["part_gflops"]["backbone"])  # the same network


def test_models_and_image_to_time(tmp_path):
    from PIL import Image

    from frcnn_cli.checkpoint import checkpoint_meta, save_checkpoint

    models, source = models_to_time(recipe="shapes", overrides=["rpn.nms_thresh=0.6"],
                                    num_classes=3, compare=True)
    assert list(models) == ["frcnn", "torchvision"]
    assert source == "recipe shapes (random weights)"
    ours = models["frcnn"]
    assert ours.num_classes == 3 and ours.recipe.rpn.nms_thresh == 0.6 and not ours.training
    again = models_to_time(recipe="shapes", overrides=["rpn.nms_thresh=0.6"],
                           num_classes=3)[0]["frcnn"]
    for key, value in ours.state_dict().items():  # seed 0: the same random weights each time
        assert torch.equal(again.state_dict()[key], value)
    path = tmp_path / "model.pt"
    save_checkpoint({"model": ours.state_dict(), "meta": checkpoint_meta(ours)}, path)
    loaded, source = models_to_time(path, compare=True)
    assert list(loaded) == ["frcnn", "torchvision"] and source == str(path)
    assert loaded["frcnn"].recipe.rpn.nms_thresh == 0.6  # a checkpoint keeps its own recipe

    image = benchmark_image(size=(100, 140))
    assert image.shape == (3, 100, 140) and 0 <= image.min() < image.max() <= 1
    Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy()).save(
        tmp_path / "a.png")
    torch.testing.assert_close(benchmark_image(tmp_path / "a.png"), image, atol=1e-6, rtol=0)


def test_benchmark_command(tmp_path, cli):
    out = tmp_path / "speed.json"
    r = cli("benchmark", "--recipe", "shapes", "--image-size", "100x140", "--runs", 2,
            "--warmup", 1, "--compare", "torchvision", "--json", out)
    assert r.exit_code == 0, r.output
    assert "ratio frcnn / torchvision" in r.output and "RPN and proposals" in r.output
    d = json.loads(out.read_text())
    assert d["image_size"] == [100, 140] and d["precision"] == "fp32"
    assert d["ratio"]["total"] > 0


def test_benchmark_times_emulated_fp16_on_the_cpu(cli):
    """eval and predict refuse fp16 on a CPU; benchmark times it, saying it is emulated, with
    the default device (auto) too."""
    r = cli("benchmark", "--recipe", "shapes", "--image-size", "64x64", "--runs", 1,
            "--warmup", 0, "--precision", "fp16")
    assert r.exit_code == 0, r.output
    assert "fp16 on the CPU is emulated" in r.output and "fp16" in r.output


def test_benchmark_command_errors(tmp_path, cli):
    r = cli("benchmark")
    assert r.exit_code == 2 and "give a checkpoint or --recipe" in r.output
    r = cli("benchmark", "--recipe", "shapes", "--image-size", "big")
    assert r.exit_code == 2 and "--image-size takes HxW" in r.output
    if not torch.cuda.is_available():
        r = cli("benchmark", "--recipe", "shapes", "--device", "cuda")
        assert r.exit_code == 2 and "CUDA is not available" in r.output
        assert len(r.output.strip().splitlines()) == 1
