import pytest

from frcnn_cli import config, recipe_files, recipe_keys
from frcnn_cli.errors import RecipeError


def test_defaults_are_the_papers_numbers():
    r = config.Recipe()
    assert r.anchors.scales == [8, 16, 32] and r.anchors.ratios == [0.5, 1, 2]
    assert (r.rpn.fg_iou_thresh, r.rpn.bg_iou_thresh, r.rpn.batch_size_per_image) == (0.7, 0.3, 256)
    assert (r.rpn.pre_nms_top_n_train, r.rpn.post_nms_top_n_train) == (12000, 2000)
    assert (r.rpn.pre_nms_top_n_test, r.rpn.post_nms_top_n_test) == (6000, 300)
    assert (r.roi_heads.batch_size_per_image, r.roi_heads.positive_fraction) == (128, 0.25)
    assert r.roi_heads.box_stds == [0.1, 0.1, 0.2, 0.2]
    assert (r.roi_heads.nms_thresh, r.roi_heads.score_thresh) == (0.3, 0.05)
    assert (r.input.min_size, r.input.max_size) == (600, 1000)
    assert (r.solver.lr, r.solver.momentum, r.solver.weight_decay) == (0.001, 0.9, 5e-4)


def test_every_shipped_recipe_loads():
    names = recipe_files.available_recipes()
    assert {"shapes", "voc07-vgg16-joint", "voc07-vgg16-alt"} <= set(names)
    for name in names:
        assert config.load_recipe(name).name == name


def test_base_recipe_is_merged():
    alt = config.load_recipe("voc07-vgg16-alt")
    assert alt.model.backbone == "vgg16" and alt.solver.max_iters == 70000
    assert alt.alt.rpn_iters == 80000


def test_stage2_schedule_defaults_to_stage1_and_can_be_shorter():
    r = config.load_recipe("voc07-vgg16-alt")  # the original: steps 1 and 3 alike, 2 and 4 too
    rpn1, rpn2 = r.alt.schedule(rpn=True, stage=1), r.alt.schedule(rpn=True, stage=2)
    assert rpn1 == rpn2 == (80000, [60000])
    assert r.alt.schedule(rpn=False, stage=2) == r.alt.schedule(rpn=False, stage=1)
    r = config.load_recipe("voc07-vgg16-alt", [
        "alt.detector_iters=1000", "alt.detector_steps=[800]", "alt.stage2_detector_iters=250",
        "alt.stage2_rpn_iters=300", "alt.stage2_rpn_steps=[]"])
    assert r.alt.schedule(rpn=False, stage=1) == (1000, [800])
    assert r.alt.schedule(rpn=False, stage=2) == (250, [200])  # the drop at the same place
    assert r.alt.schedule(rpn=True, stage=2) == (300, [])


def test_override_sets_typed_values():
    r = config.load_recipe("shapes", ["solver.lr=0.5", "anchors.scales=[1, 2]",
                                      "model.backbone_weights=/tmp/w.pt"])
    assert r.solver.lr == 0.5
    assert r.anchors.scales == [1.0, 2.0]
    assert r.model.backbone_weights == "/tmp/w.pt"


def test_override_wrong_type_names_key_and_value():
    with pytest.raises(RecipeError, match=r"solver\.lr.*'fast'"):
        config.load_recipe("shapes", ["solver.lr=fast"])


def test_override_out_of_range_is_refused():
    with pytest.raises(RecipeError, match=r"rpn\.nms_thresh"):
        config.load_recipe("shapes", ["rpn.nms_thresh=1.5"])


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(RecipeError,
                       match=r"unknown recipe key 'rpn\.nms_tresh'.*'rpn\.nms_thresh'"):
        config.load_recipe("shapes", ["rpn.nms_tresh=0.6"])


def test_unknown_key_in_a_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: shapes\nsolver: {learning_rate: 0.1}\n")
    with pytest.raises(RecipeError,
                       match=r"unknown recipe key 'solver\.learning_rate'.*solver\.lr"):
        config.load_recipe(bad)


def test_unknown_recipe_name():
    with pytest.raises(RecipeError, match=r"unknown recipe 'shape'; did you mean 'shapes'"):
        config.load_recipe("shape")


def test_malformed_override():
    with pytest.raises(RecipeError, match="section.key=value"):
        config.load_recipe("shapes", ["solver.lr"])


def test_reference_is_generated_and_current():
    from pathlib import Path

    ref = Path(__file__).resolve().parents[1] / "docs" / "recipe-reference.md"
    assert ref.read_text() == recipe_keys.reference_markdown(), \
        "regenerate with: frcnn recipe keys --markdown > docs/recipe-reference.md"
