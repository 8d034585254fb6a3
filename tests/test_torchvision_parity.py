"""frcnn holds torchvision's published detectors exactly: torchvision's fasterrcnn_resnet50_fpn
and fasterrcnn_mobilenet_v3_large_fpn, built with random weights and saved, then loaded through
``from_torchvision(NAME, weights=FILE)`` and ``--init torchvision:NAME --init-weights FILE``,
give torchvision's detections (boxes within 1e-3 px, scores within 1e-5) on the same images."""

from __future__ import annotations

import re

import pytest
import torch
from random_weights import spread_batchnorm
from torchvision.models import detection
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn_cli import from_torchvision
from frcnn_cli.engine.initial_model import build_initial_model
from frcnn_cli.engine.run_config import RunArgs
from frcnn_cli.errors import FrcnnError, RecipeError
from frcnn_cli.model.torchvision_weights import (
    coco_classes,
    map_state_dict,
    published_weights,
    torchvision_recipe,
)

# Small images keep this fast: torchvision's settings but the image scale, 60 proposals, and a
# lower score threshold (random heads score every class near 1/91). A minimum proposal size of
# 8 px instead of 0.001 (torchvision's RPN keeps it as an attribute) and, for ResNet, an
# objectness threshold make the proposal layer's order and units matter.
SCALE = {"fasterrcnn_resnet50_fpn": (160, 224), "fasterrcnn_mobilenet_v3_large_fpn": (320, 480)}
RPN_MIN_SIZE = 8.0


def _settings(name: str) -> tuple[dict, list[str]]:
    """The same changes for torchvision's builder and for frcnn's recipe."""
    low, high = SCALE[name]
    score = 0.5 if name == "fasterrcnn_resnet50_fpn" else 0.05  # MobileNet's own: 0.05
    return ({"min_size": low, "max_size": high, "rpn_post_nms_top_n_test": 60,
             "box_score_thresh": 0.02, "rpn_score_thresh": score},
            [f"input.min_size={low}", f"input.max_size={high}", "rpn.post_nms_top_n_test=60",
             "roi_heads.score_thresh=0.02", f"rpn.score_thresh={score}",
             f"rpn.min_size={RPN_MIN_SIZE}"])


def _freeze_batchnorm(module: torch.nn.Module, eps: float | None) -> None:
    """Make ``module`` what torchvision's builder makes when it loads published weights:
    FrozenBatchNorm2d in place of BatchNorm2d (and, for fasterrcnn_resnet50_fpn's COCO
    weights, eps 0: its ``overwrite_eps``)."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps if eps is None else eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child, eps)


@pytest.fixture(scope="module", params=list(SCALE))
def published(request, tmp_path_factory):
    """(NAME, torchvision's detector in its published layout, the saved file): random
    weights, BatchNorm statistics and head biases perturbed so that detections differ."""
    name = request.param
    torch.manual_seed(0)
    net = getattr(detection, name)(weights=None, weights_backbone=None, **_settings(name)[0])
    net.rpn.min_size = RPN_MIN_SIZE
    g = torch.Generator().manual_seed(1)
    spread_batchnorm(net, g)
    with torch.no_grad():
        rpn, predictor = net.rpn.head, net.roi_heads.box_predictor
        rpn.cls_logits.weight.normal_(0, 0.2, generator=g)
        rpn.cls_logits.bias.normal_(0, 1, generator=g)
        rpn.bbox_pred.weight.normal_(0, 0.02, generator=g)
        predictor.cls_score.weight.normal_(0, 0.2, generator=g)
        predictor.cls_score.bias.normal_(0, 1, generator=g)
        predictor.bbox_pred.weight.normal_(0, 0.01, generator=g)
    path = tmp_path_factory.mktemp("tv") / f"{name}.pth"
    torch.save(net.state_dict(), path)  # as saved by torchvision: BatchNorm counts included
    _freeze_batchnorm(net, 0.0 if name == "fasterrcnn_resnet50_fpn" else None)
    return name, net.eval(), path


def _as_2019(key: str) -> str:
    key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
    return re.sub(r"^(backbone\.fpn\.\w+_blocks\.\d+)\.0\.", r"\1.", key)


def _images():
    """A landscape image and a portrait one whose longer side resizes to 216.96 and 433.92
    px: torchvision floors those, a rounding resize would not."""
    g = torch.Generator().manual_seed(2)
    return [torch.rand(3, 240, 300, generator=g), torch.rand(3, 339, 250, generator=g)]


def _assert_same(expected: dict, got: dict) -> None:
    assert len(expected["boxes"]) > 20  # enough detections to mean something
    assert len(got["boxes"]) == len(expected["boxes"])
    assert torch.equal(got["labels"], expected["labels"])
    assert (got["boxes"] - expected["boxes"]).abs().max() <= 1e-3
    assert (got["scores"] - expected["scores"]).abs().max() <= 1e-5


def test_from_torchvision_gives_torchvisions_detections(published, one_thread):
    name, net, path = published
    model = from_torchvision(name, weights=path, overrides=_settings(name)[1])
    assert not model.training and model.classes == coco_classes(name)
    assert model.classes[0] == {"id": 1, "name": "person"} and len(model.classes) == 90
    with torch.inference_mode():
        for image in _images():
            _assert_same(net([image])[0], model([image])[0])
    # torchvision's files from before its RPN head and FPN modules had versions (2019, as
    # fasterrcnn_resnet50_fpn's COCO weights) name the convs without the ".0"
    state = torch.load(path, weights_only=True)
    old = {_as_2019(k): v for k, v in state.items()}
    assert "rpn.head.conv.weight" in old and "backbone.fpn.inner_blocks.0.weight" in old
    mapped, mapped_old = map_state_dict(state, model), map_state_dict(old, model)
    assert mapped.keys() == mapped_old.keys()
    assert all(torch.equal(mapped[k], mapped_old[k]) for k in mapped)


def test_init_torchvision_starts_training_from_the_same_detector(published, one_thread,
                                                                 tmp_path):
    name, net, path = published
    recipe = torchvision_recipe(name, _settings(name)[1])
    args = RunArgs(command="train", recipe="x", train="t.json", out=str(tmp_path / "run"),
                   init=f"torchvision:{name}", init_weights=str(path))
    model = build_initial_model(args, recipe, coco_classes(name)).eval()
    image = _images()[0]
    with torch.inference_mode():
        _assert_same(net([image])[0], model([image])[0])
    # other classes: every layer but the class-specific outputs comes from the file
    other = build_initial_model(args, recipe, [{"id": 1, "name": "tree"}])
    assert other.roi_heads.cls_score.weight.shape[0] == 2
    assert torch.equal(other.rpn.head.cls_logits.weight, net.rpn.head.cls_logits.weight)
    assert torch.equal(other.roi_heads.box_head.fc7.weight, net.roi_heads.box_head.fc7.weight)


def test_a_recipe_that_does_not_fit_the_weights_is_refused(published, tmp_path):
    name, _, path = published
    args = RunArgs(command="train", recipe="x", train="t.json", out=str(tmp_path / "run"),
                   init=f"torchvision:{name}", init_weights=str(path))
    wrong = torchvision_recipe(name, ["model.backbone=resnet50-fpn-v2"])
    with pytest.raises(RecipeError, match="model.backbone"):
        build_initial_model(args, wrong, coco_classes(name))


def test_offline_without_a_file_names_the_url_and_the_option(monkeypatch):
    entry = published_weights("fasterrcnn_resnet50_fpn")

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(type(entry), "get_state_dict", offline)
    with pytest.raises(FrcnnError) as error:
        from_torchvision("fasterrcnn_resnet50_fpn")
    text = str(error.value)
    assert entry.url in text and "--init-weights FILE" in text and "\n" not in text


def test_cli_init_weights_needs_a_torchvision_name_and_names_are_checked(cli, shapes_data,
                                                                          tmp_path):
    weights = tmp_path / "w.pth"
    torch.save({}, weights)
    r = cli("train", "--recipe", "finetune-r50-fpn", "--train", shapes_data / "train.json",
            "--out", tmp_path / "a", "--init-weights", weights)
    assert r.exit_code == 2 and "--init torchvision:NAME" in r.output
    r = cli("train", "--recipe", "finetune-r50-fpn", "--train", shapes_data / "train.json",
            "--out", tmp_path / "b", "--init", "torchvision:fasterrcnn_resnet51",
            "--init-weights", weights)
    assert r.exit_code == 2 and "fasterrcnn_mobilenet_v3_large_fpn" in r.output
