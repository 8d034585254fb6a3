"""Recipe schema, YAML loading and ``--set`` overrides.

A recipe is a YAML file whose sections mirror :class:`Recipe`. Every key has a typed default
taken from the paper and its original implementation (py-faster-rcnn), so a recipe only states
what differs. A recipe may name another as ``base:``; its keys are merged over the base's.

    recipe = load_recipe("shapes", overrides=["solver.lr=0.02", "rpn.nms_thresh=0.6"])
    recipe.rpn.nms_thresh  # 0.6

This module is the one home of the paper's numbers; code reads them from a Recipe.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from frcnn_cli.errors import RecipeError


class Section(BaseModel):
    # every number finite: an inf or nan (from YAML's .inf, or --set) trains nothing useful
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# List items are checked as the matching command-line options are (frcnn anchors --scales).
Positive = Annotated[float, Field(gt=0)]
Iteration = Annotated[int, Field(ge=1)]
Side = Annotated[int, Field(ge=16)]


class ModelConfig(Section):
    backbone: Literal["vgg16", "resnet50", "resnet101", "mobilenet_v3_large", "tiny",
                      "resnet50-fpn", "resnet50-fpn-v2", "mobilenet_v3_large-fpn",
                      "tiny-fpn"] = Field(
        "vgg16", description="Shared convolutional layers: the paper's vgg16 (conv5_3), ResNet C4 "
        "(res4), MobileNetV3, a small CPU network for demos and tests, or a Feature Pyramid "
        "Network in torchvision's layouts: resnet50-fpn (P2-P6), resnet50-fpn-v2 (its FPN with "
        "BatchNorm and a 4-conv 1-fc head), mobilenet_v3_large-fpn (torchvision's 3 levels), or "
        "tiny-fpn (the small CPU network with a 64-channel pyramid, P2-P5).")
    pretrained: bool = Field(
        True, description="Start the backbone (and VGG16's fc6/fc7) from ImageNet weights via "
        "torchvision's weights API; ignored by the tiny backbones, which have none.")
    backbone_weights: str | None = Field(
        None, description="Local file with an ImageNet state dict for the backbone, for offline "
        "machines; overrides the download.")
    freeze_early: bool = Field(
        True, description="Freeze the backbone's early layers: VGG16 conv1-conv2, ResNet stem and "
        "res2, MobileNet's first blocks (the original implementation's fixed layers).")
    roi_op: Literal["pool", "align"] = Field(
        "pool", description="RoI feature op: the paper's RoI max pooling, or RoIAlign (FPN: "
        "torchvision's MultiScaleRoIAlign, 2 samples per bin, aligned=False).")
    roi_size: int = Field(7, ge=1, description="Output side of RoI pooling (7x7 in the paper).")
    head_dim: int = Field(
        4096, ge=1, description="Width of the fc6/fc7 detection head (VGG16: 4096). ResNet C4 "
        "uses res5 instead and ignores it.")
    dropout: float = Field(0.5, ge=0, lt=1, description="Dropout after fc6 and fc7 in training.")
    svd_fc6: int | None = Field(
        None, ge=1, description="Rank K of fc6 as a truncated SVD (Fast R-CNN Section 3.1): two "
        "thinner layers, in -> K -> head_dim; set by 'frcnn export --svd'. null: one full layer.")
    svd_fc7: int | None = Field(
        None, ge=1, description="Rank K of fc7 as a truncated SVD, like svd_fc6 (the paper: 1024 "
        "for fc6 and 256 for fc7 of VGG16).")
    frozen_bn_eps: float | None = Field(
        None, ge=0, description="FPN backbones: eps of their frozen BatchNorm; null: "
        "torchvision's 1e-5. torchvision's fasterrcnn_resnet50_fpn COCO weights need 0 (their "
        "statistics came from Detectron, which used none).")
    channels_last: bool = Field(
        True, description="Run convolutions in channels-last memory format at inference, and in "
        "training on GPUs (faster; results unchanged up to float rounding). CPU training runs "
        "NCHW, whose backward pass is about twice as fast there.")


class AnchorConfig(Section):
    stride: int = Field(16, ge=1, description="Feature stride of the shared conv map (pixels).")
    base_size: int = Field(16, ge=1, description="Side of the base anchor before scaling.")
    scales: list[Positive] = Field(
        [8, 16, 32], min_length=1, description="Anchor scales times base_size: 128, 256, 512 px.")
    ratios: list[Positive] = Field(
        [0.5, 1, 2], min_length=1, description="Anchor aspect ratios h/w.")
    sizes: list[Positive] = Field(
        [32, 64, 128, 256, 512], min_length=1, description="FPN backbones: anchor sizes in "
        "pixels (the side of the ratio-1 anchor), finest level first; the single-map backbones "
        "use scales times base_size instead.")
    level_sizes: Literal["one", "all"] = Field(
        "one", description="FPN backbones: 'one' gives level i the anchors of sizes[i] "
        "(torchvision's ResNet-FPN, one size per level); 'all' gives every level every size "
        "(torchvision's MobileNet-FPN).")
    style: Literal["paper", "torchvision"] = Field(
        "paper", description="paper: the original's generate_anchors (widths rounded per ratio, "
        "then scaled), centred on each cell's centre; torchvision: AnchorGenerator's (corners "
        "rounded), centred on each cell's top-left corner, a level's stride taken as the padded "
        "image size // its map size.")


class InputConfig(Section):
    min_size: int = Field(600, ge=16, description="Shorter image side after resizing (test and "
                          "single-scale training).")
    max_size: int = Field(1000, ge=16, description="Cap on the longer side after resizing.")
    train_scales: list[Side] | None = Field(
        None, description="Multi-scale training: each training image takes a shorter side drawn "
        "from this list; null trains at min_size.")
    size_divisible: int = Field(16, ge=1, description="Batched images are padded to a multiple "
                                "of this (torchvision: 32).")
    resize: Literal["antialias", "torchvision"] = Field(
        "antialias", description="antialias: bilinear with antialiasing to round(side * scale) "
        "pixels; torchvision: normalise, then bilinear without antialiasing to floor(side * "
        "scale) pixels (GeneralizedRCNNTransform).")
    pixel_mean: list[float] | None = Field(
        None, min_length=3, max_length=3, description="Per-channel mean (RGB, 0..1) "
        "subtracted after resizing; null takes the backbone's own.")
    pixel_std: list[Positive] | None = Field(
        None, min_length=3, max_length=3, description="Per-channel std (RGB, 0..1); null "
        "takes the backbone's own.")


class AugmentConfig(Section):
    hflip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip in "
                         "training (the paper's only augmentation).")
    extra: list[dict[str, Any]] = Field(
        [], description="Further albumentations transforms, each {name: ClassName, ...args}, "
        "e.g. {name: RandomBrightnessContrast, p: 0.3}. Boxes are clipped and filtered.")


class DataConfig(Section):
    use_difficult: bool = Field(False, description="Train on objects marked difficult (VOC).")
    use_crowd: bool = Field(
        False, description="Train on objects marked iscrowd (COCO) as objects. false: they are "
        "ignore regions, where anchors and proposals are neither objects nor background (as "
        "are the boxes 'data tile' cuts).")
    num_workers: int = Field(2, ge=0, description="Loader worker processes.")
    aspect_ratio_grouping: bool = Field(
        True, description="Batch portrait and landscape images separately to waste less padding.")
    repeat_threshold: float | None = Field(
        None, gt=0, le=1, description="Repeat-factor sampling (LVIS, Gupta et al. 2019): an "
        "image is shown r = max over its classes of max(1, sqrt(t / f)) times per epoch, f "
        "being the fraction of training images holding the class, so classes in fewer than a "
        "fraction t of the images are seen more often (LVIS: 0.001); 'frcnn data stats "
        "--recipe' shows the effect. null: every image once per epoch.")


class RPNConfig(Section):
    channels: int = Field(512, ge=1, description="Width of the RPN's 3x3 conv (512 for VGG16, "
                          "256 for ZF).")
    convs: int = Field(1, ge=1, description="3x3 conv + ReLU layers before the sibling 1x1 "
                       "convs (the paper: 1; torchvision's fasterrcnn_resnet50_fpn_v2: 2).")
    objectness: Literal["softmax", "sigmoid"] = Field(
        "softmax", description="The paper's 2k softmax scores, or k sigmoid scores.")
    fg_iou_thresh: float = Field(0.7, gt=0, le=1, description="Anchor IoU for a positive.")
    bg_iou_thresh: float = Field(0.3, ge=0, le=1, description="Anchor IoU below which it is "
                                 "negative.")
    batch_size_per_image: int = Field(256, ge=1, description="Anchors sampled per image.")
    positive_fraction: float = Field(0.5, gt=0, le=1, description="Largest share of positives in "
                                     "the sample.")
    allowed_border: float = Field(
        0, description="Anchors reaching further than this outside the image are ignored in "
        "training (0: the paper's rule); negative disables the rule.")
    loss_norm: Literal["paper", "modern"] = Field(
        "paper", description="paper: L = L_cls/N_cls + lambda * L_reg/N_reg with N_reg the "
        "anchor places; modern: both terms over the sampled anchors (torchvision).")
    box_loss_weight: float = Field(10.0, ge=0, description="lambda of the paper's loss.")
    smooth_l1_beta: float = Field(1 / 9, ge=0, description="Smooth L1 transition (1/sigma^2, "
                                  "sigma 3 in the original).")
    pre_nms_top_n_train: int = Field(12000, ge=1, description="Proposals kept before NMS, train "
                                     "(FPN: per level).")
    post_nms_top_n_train: int = Field(2000, ge=1, description="Proposals kept after NMS, train.")
    pre_nms_top_n_test: int = Field(6000, ge=1, description="Proposals kept before NMS, test "
                                    "(FPN: per level).")
    post_nms_top_n_test: int = Field(300, ge=1, description="Proposals kept after NMS, test.")
    nms_thresh: float = Field(0.7, gt=0, le=1, description="Proposal NMS IoU (FPN: within "
                              "each level).")
    min_size: float = Field(16, ge=0, description="Proposals smaller than this are dropped: "
                            "input pixels (at the original scale) with proposal_filter paper, "
                            "network pixels with torchvision (whose value is 0.001).")
    score_thresh: float = Field(0.0, ge=0, lt=1, description="Proposals whose objectness "
                                "probability is below this are dropped (torchvision's "
                                "MobileNet-FPN: 0.05).")
    proposal_filter: Literal["paper", "torchvision"] = Field(
        "paper", description="paper: drop small and low-scoring boxes, then keep the pre-NMS "
        "top N of the rest (the original); torchvision: keep the top N first, then drop "
        "(RegionProposalNetwork.filter_proposals).")


class RoIHeadsConfig(Section):
    batch_size_per_image: int = Field(128, ge=1, description="RoIs sampled per image.")
    positive_fraction: float = Field(0.25, gt=0, le=1, description="Foreground share of RoIs.")
    fg_iou_thresh: float = Field(0.5, gt=0, le=1, description="RoI IoU for foreground.")
    bg_iou_thresh_hi: float = Field(0.5, gt=0, le=1, description="Background IoU upper bound.")
    bg_iou_thresh_lo: float = Field(
        0.0, ge=0, lt=1, description="Background IoU lower bound (0.1 in Fast R-CNN's paper, 0.0 "
        "in the released configs).")
    add_gt_as_proposals: bool = Field(True, description="Add ground truth to the proposals.")
    box_stds: list[Positive] = Field(
        [0.1, 0.1, 0.2, 0.2], min_length=4, max_length=4,
        description="Box target normalisation (dx, dy, dw, dh).")
    smooth_l1_beta: float = Field(1.0, ge=0, description="Smooth L1 transition of the head.")
    score_thresh: float = Field(0.05, ge=0, le=1, description="Test: drop detections below.")
    nms_thresh: float = Field(0.3, gt=0, le=1, description="Test: per-class NMS IoU.")
    detections_per_img: int = Field(100, ge=1, description="Test: detections kept per image.")
    min_size: float = Field(0.0, ge=0, description="Test: detections narrower or shorter than "
                            "this (network pixels) are dropped before NMS (torchvision: 0.01).")


class SolverConfig(Section):
    images_per_batch: int = Field(1, ge=1, description="Images per iteration (over all "
                                  "processes).")
    lr: float = Field(0.001, gt=0, description="Base learning rate (for images_per_batch).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0, description="Weight decay of weights.")
    bias_lr_factor: float = Field(2.0, gt=0, description="Biases learn this much faster (the "
                                  "original implementation's 2x).")
    bias_weight_decay: float = Field(0.0, ge=0, description="Weight decay of biases.")
    max_iters: int = Field(70000, ge=1, description="Joint training length (iterations).")
    steps: list[Iteration] = Field([50000], description="Iterations where lr is multiplied by "
                                   "gamma.")
    gamma: float = Field(0.1, gt=0, description="Step decay factor.")
    warmup_iters: int = Field(0, ge=0, description="Linear warm-up length.")
    warmup_factor: float = Field(1 / 3, gt=0, le=1, description="lr factor at iteration 0 of "
                                 "warm-up.")
    clip_grad_norm: float | None = Field(None, gt=0, description="Clip gradients to this L2 norm; "
                                         "null: no clipping.")


def scaled_steps(steps: list[int], schedule_iters: int, iters: int) -> list[int]:
    """Scale lr drops to a shortened or lengthened schedule, keeping their relative places."""
    if iters == schedule_iters:
        return list(steps)
    return [max(1, round(s * iters / schedule_iters)) for s in steps if s < schedule_iters]


class AltConfig(Section):
    """The paper's 4-step alternating schedule (Section 3.2)."""

    rpn_iters: int = Field(80000, ge=1, description="Steps 1 and 3: RPN training length.")
    rpn_steps: list[Iteration] = Field([60000], description="Steps 1 and 3: lr drops.")
    detector_iters: int = Field(40000, ge=1, description="Steps 2 and 4: detector training "
                                "length.")
    detector_steps: list[Iteration] = Field([30000], description="Steps 2 and 4: lr drops.")
    rpn_images_per_batch: int = Field(1, ge=1, description="Steps 1 and 3: images per "
                                      "iteration (the original: 1).")
    detector_images_per_batch: int = Field(2, ge=1, description="Steps 2 and 4: images per "
                                           "iteration (the original: 2).")
    stage2_rpn_iters: int | None = Field(None, ge=1, description="Step 3 alone, a fine-tune "
                                         "of the RPN's own layers (null: rpn_iters).")
    stage2_rpn_steps: list[Iteration] | None = Field(None, description="Step 3's lr drops (null: "
                                               "rpn_steps scaled to its length).")
    stage2_detector_iters: int | None = Field(None, ge=1, description="Step 4 alone, a "
                                              "fine-tune of the detector's own layers (null: "
                                              "detector_iters).")
    stage2_detector_steps: list[Iteration] | None = Field(None, description="Step 4's lr drops "
                                                    "(null: detector_steps scaled to its "
                                                    "length).")

    def schedule(self, rpn: bool, stage: int) -> tuple[int, list[int]]:
        """Iterations and lr drops of one step: the RPN's (``rpn``) or the detector's, of
        ``stage`` 1 (steps 1 and 2) or 2 (steps 3 and 4)."""
        if rpn:
            total, steps = self.rpn_iters, self.rpn_steps
            own_iters, own_steps = self.stage2_rpn_iters, self.stage2_rpn_steps
        else:
            total, steps = self.detector_iters, self.detector_steps
            own_iters, own_steps = self.stage2_detector_iters, self.stage2_detector_steps
        if stage == 1:
            return total, list(steps)
        iters = own_iters or total
        if own_steps is None:
            own_steps = scaled_steps(steps, total, iters)
        return iters, list(own_steps)


class TrainConfig(Section):
    log_every: int = Field(20, ge=1, description="Iterations between metric lines.")
    checkpoint_every: int = Field(5000, ge=1, description="Iterations between last.pt saves.")
    val_every: int = Field(0, ge=0, description="Iterations between validations on --val "
                           "(0: only at the end).")
    seed: int = Field(0, description="Random seed.")
    patience: int | None = Field(
        None, ge=1, description="Early stopping: end the run when validation mAP has not "
        "improved for this many validations in a row (every train.val_every iterations); "
        "model.pt is then the best validation weights (best.pt). null: train the whole "
        "schedule.")


class EvalConfig(Section):
    metric: Literal["voc07", "voc", "coco"] = Field("voc07", description="Metric of eval and "
                                                    "validation.")


class Recipe(Section):
    """A whole recipe: one section per part of the detector and its training."""

    name: str = Field("custom", description="Recipe name, shown in logs.")
    description: str = Field("", description="What the recipe is for and what it should reach.")
    model: ModelConfig = ModelConfig()
    anchors: AnchorConfig = AnchorConfig()
    input: InputConfig = InputConfig()
    augment: AugmentConfig = AugmentConfig()
    data: DataConfig = DataConfig()
    rpn: RPNConfig = RPNConfig()
    roi_heads: RoIHeadsConfig = RoIHeadsConfig()
    solver: SolverConfig = SolverConfig()
    alt: AltConfig = AltConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.rpn.bg_iou_thresh > self.rpn.fg_iou_thresh:
            raise ValueError("rpn.bg_iou_thresh must not exceed rpn.fg_iou_thresh")
        if self.roi_heads.bg_iou_thresh_lo >= self.roi_heads.bg_iou_thresh_hi:
            raise ValueError("roi_heads.bg_iou_thresh_lo must be below bg_iou_thresh_hi")
        if self.input.max_size < self.input.min_size:
            raise ValueError("input.max_size must be at least input.min_size")
        if self.model.frozen_bn_eps is not None and "-fpn" not in self.model.backbone:
            raise ValueError("model.frozen_bn_eps applies to the -fpn backbones only")
        if self.train.patience is not None and not self.train.val_every:
            raise ValueError("train.patience counts validations: set train.val_every too")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML- and checkpoint-safe)."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- keys and overrides


def all_keys(model: type[BaseModel] = Recipe, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of the schema with its pydantic FieldInfo, in schema order."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(all_keys(ann, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = field
    return out


def _did_you_mean(key: str) -> str:
    keys = list(all_keys())
    hint = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not hint:
        leaf = key.rsplit(".", 1)[-1]
        hint = [k for k in keys if k.rsplit(".", 1)[-1] == leaf][:1]
    return f"; did you mean '{hint[0]}'?" if hint else ""


def parse_override(text: str) -> tuple[str, Any]:
    """``"rpn.nms_thresh=0.6"`` -> ``("rpn.nms_thresh", 0.6)``; values are YAML scalars/lists."""
    if "=" not in text:
        raise RecipeError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise RecipeError(f"override '{text}': value is not valid YAML") from e
    if key not in all_keys():
        raise RecipeError(f"unknown recipe key '{key}'{_did_you_mean(key)}")
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw recipe dict with each ``key=value`` set."""
    out = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"cannot set '{key}': '{part}' is not a section")
        node[leaf] = value
    return out


def _validation_message(err: ValidationError, source: str,
                        overridden: Iterable[str] = ()) -> str:
    first = err.errors()[0]
    parts = list(first["loc"])
    item = parts.pop() if parts and isinstance(parts[-1], int) else None  # a list's item
    loc = ".".join(str(p) for p in parts)
    if loc in overridden:  # the value came from the command line, not from the file
        source = f"--set {loc}"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown recipe key '{loc}'{_did_you_mean(loc)}"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    where = f" '{loc}'" if loc else ""
    if item is not None:
        where = f" item {item + 1} of{where}"
    return f"{source}: bad value for{where}: {first['msg']}{shown}"


def recipe_from_dict(data: dict[str, Any], source: str = "recipe",
                     overridden: Iterable[str] = ()) -> Recipe:
    """Validate a raw dict into a Recipe; errors name the key and the value, and blame
    ``--set`` for the keys in ``overridden``."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_validation_message(e, source, set(overridden))) from None


def load_recipe(name_or_path: str | os.PathLike | None = None,
                overrides: list[str] | None = None) -> Recipe:
    """Load a recipe by name or path (None: the paper's defaults) and apply ``--set`` overrides."""
    from frcnn_cli.recipe_files import find_recipe, read_recipe_file

    if name_or_path is None:
        raw: dict[str, Any] = {}
        source = "defaults"
    else:
        path = find_recipe(name_or_path)
        raw = read_recipe_file(path)
        raw.setdefault("name", path.stem)
        given = str(name_or_path)
        source = f"recipe {path if given.endswith(('.yaml', '.yml')) else path.name}"
    raw = apply_overrides(raw, list(overrides or []))
    overridden = [o.split("=", 1)[0].strip() for o in overrides or []]
    return recipe_from_dict(raw, source, overridden)


def dump_yaml(obj: Any) -> str:
    """YAML text of a plain structure, keys in insertion order."""
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=None, width=100)
