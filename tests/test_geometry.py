"""The model owns geometry: images at their own size in, boxes in input pixels out, one resize
rule, test-time settings as arguments of one call, and a model package that imports neither
training, evaluation, export nor the CLI."""

import ast
from pathlib import Path

import torch

import frcnn_cli
from frcnn_cli.config import load_recipe
from frcnn_cli.model import transform as transform_mod
from frcnn_cli.model.transform import resize_image

SMALL = ["input.min_size=128", "input.max_size=200", "model.head_dim=64"]


def _model(*overrides):
    torch.manual_seed(0)
    return frcnn_cli.build_model(load_recipe("shapes", [*SMALL, *overrides]), 3).eval()


def test_the_model_package_imports_no_training_evaluation_export_or_cli():
    package = Path(frcnn_cli.__file__).parent
    forbidden = ("frcnn_cli.engine", "frcnn_cli.evaluation", "frcnn_cli.export", "frcnn_cli.cli",
                 "frcnn_cli.data")
    found = []
    for path in sorted((package / "model").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.startswith(forbidden)]
    assert not found, found


def test_uint8_images_are_float_images_divided_by_255(one_thread):
    model = _model()
    pixels = torch.randint(0, 256, (3, 90, 140), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a = model.detect([pixels], score_thresh=0.0)[0]
        b = model.detect([pixels.float() / 255], score_thresh=0.0)[0]
    assert len(a["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(a[key], b[key]), key


def test_boxes_and_proposals_come_back_in_input_pixels(one_thread):
    """An image the model upscales by 4/3 and the same image handed over at that size give the
    same network input: the same detections, boxes 4/3 apart."""
    model = _model()
    small = torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(5))
    large = resize_image(small, (128, 160))  # what the model makes of ``small``
    with torch.inference_mode():
        a = model.detect([small], score_thresh=0.0, return_proposals=True)[0]
        b = model.detect([large], score_thresh=0.0, return_proposals=True)[0]
    assert len(a["boxes"]) > 10 and torch.equal(a["labels"], b["labels"])
    assert torch.allclose(a["scores"], b["scores"], atol=1e-6)
    assert torch.allclose(a["boxes"] * 4 / 3, b["boxes"], atol=1e-3)
    assert torch.allclose(a["proposals"] * 4 / 3, b["proposals"], atol=1e-3)
    assert a["boxes"][:, 2].max() <= 120 and a["boxes"][:, 3].max() <= 96


def test_a_large_uint8_image_is_resized_in_bands_bit_for_bit(monkeypatch):
    image = torch.randint(0, 256, (3, 700, 500), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(2))
    whole = resize_image(image.float() / 255, (180, 129))
    monkeypatch.setattr(transform_mod, "BANDED_PIXELS", 1000)  # every image is "large"
    monkeypatch.setattr(transform_mod, "BAND_ROWS", 64)
    assert torch.equal(resize_image(image, (180, 129)), whole)
    assert torch.equal(resize_image(image, (900, 643)), resize_image(image.float() / 255,
                                                                      (900, 643)))


def test_multi_scale_training_draws_every_scale_from_torchs_generator():
    model = _model("input.train_scales=[128,160]").train()
    transform = model.transform

    def heights(seed):
        torch.manual_seed(seed)
        # an image already at one of the scales is resized to the others too
        return [transform([torch.rand(3, 128, 128)])[0].image_sizes[0, 0].item()
                for _ in range(16)]

    drawn = heights(0)
    assert set(drawn) == {128, 160}
    assert heights(0) == drawn  # reproducible: a resumed run restores torch's generator
    model.eval()
    assert transform([torch.rand(3, 64, 64)])[0].image_sizes[0].tolist() == [128, 128]


def test_proposal_min_size_is_in_input_pixels(one_thread):
    """rpn.min_size counts pixels of the image the caller gives (16 in the paper and the
    original code), whatever the model resizes it to: here x2."""
    image = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(3))

    def sides(min_size):
        model = _model(f"rpn.min_size={min_size}", "anchors.scales=[1,2,4]")
        with torch.inference_mode():
            boxes = model.detect([image], rpn_only=True, post_nms_top_n=500)[0]["boxes"]
        return torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])

    unfiltered = sides(0)
    # boxes of 12-24 input pixels exist: a rule in network pixels (24 = 12 input) keeps them
    assert ((unfiltered >= 12) & (unfiltered < 24)).any()
    filtered = sides(24)
    assert len(filtered) > 0 and filtered.min() >= 24 - 1e-3


def test_test_time_settings_are_arguments_not_attributes(one_thread):
    model = _model()
    image = torch.rand(3, 100, 150, generator=torch.Generator().manual_seed(4))
    before = (model.rpn.pre_nms_top_n_test, model.rpn.post_nms_top_n_test,
              model.roi_heads.score_thresh, model.roi_heads.detections_per_img)
    with torch.inference_mode():
        plain = model([image])[0]
        everything = model.detect([image], score_thresh=0.0, detections_per_img=1000)[0]
        few = model.detect([image], score_thresh=0.0, detections_per_img=3)[0]
        props = model.detect([image], rpn_only=True, pre_nms_top_n=200, post_nms_top_n=7)[0]
        full = model.detect([image], score_thresh=0.0, return_proposals=True)[0]
    assert (plain["scores"] >= 0.05).all() and len(plain["boxes"]) <= 100
    assert len(everything["boxes"]) > len(plain["boxes"]) and len(few["boxes"]) == 3
    assert torch.equal(few["scores"], everything["scores"][:3])
    assert len(props["boxes"]) == 7
    # the proposals the head classified, in input pixels, best first
    p = full["proposals"]
    assert len(p) == len(full["proposal_scores"]) <= model.recipe.rpn.post_nms_top_n_test
    assert (p[:, 2] <= 150).all() and (p[:, 3] <= 100).all() and (p >= 0).all()
    assert torch.equal(full["proposal_scores"],
                       full["proposal_scores"].sort(descending=True).values)
    after = (model.rpn.pre_nms_top_n_test, model.rpn.post_nms_top_n_test,
             model.roi_heads.score_thresh, model.roi_heads.detections_per_img)
    assert after == before
