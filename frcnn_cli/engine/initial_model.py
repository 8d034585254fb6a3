"""The model a run starts from: ImageNet weights (the recipe's), ``--init CKPT``, or
``--init torchvision:NAME`` (torchvision's published detector NAME, downloaded or from
``--init-weights FILE``)."""

from __future__ import annotations

import logging

from frcnn_cli.checkpoint import load_checkpoint
from frcnn_cli.config import Recipe, dump_yaml
from frcnn_cli.engine.run_config import RunArgs
from frcnn_cli.errors import CheckpointError, InputError, RecipeError
from frcnn_cli.files import require_file

log = logging.getLogger("frcnn")


def build_initial_model(args: RunArgs, recipe: Recipe, classes: list[dict]):
    """A FasterRCNN for ``classes``, from the recipe's ImageNet weights, ``--init`` CKPT or
    ``--init torchvision:NAME``.

    A checkpoint (or torchvision detector) of other classes starts every layer but the
    class-specific outputs (fine-tuning), except in steps 3 and 4, which continue the step
    before on the same classes.
    """
    from frcnn_cli.model.faster_rcnn import build_model
    from frcnn_cli.model.torchvision_weights import PREFIX

    kind = args.kind
    if args.init in (None, "imagenet") or args.init.startswith(PREFIX):
        if kind.previous is not None:
            raise InputError(f"{args.command} --stage 2 needs --init CKPT (the {kind.previous} "
                             f"model of step {kind.previous.step})")
        if args.init not in (None, "imagenet"):
            return from_torchvision_detector(args.init[len(PREFIX):], args.init_weights,
                                             recipe, classes)
        return build_model(recipe, len(classes), classes=classes)
    ckpt = load_checkpoint(require_file(args.init, "--init checkpoint"))
    ckpt_classes = ckpt["meta"].get("classes") or []
    # the recipe's network (frozen BatchNorm where ImageNet weights would go), weights from CKPT
    model = build_model(recipe, len(classes), classes=classes, load_weights=False)
    state = ckpt["model"]
    refuse_other_network(state, model, args.init, ckpt["meta"], recipe)
    if ckpt_classes and not classes_match(ckpt_classes, classes):
        if kind.previous is not None:
            raise CheckpointError(
                f"{args.init} was trained on classes {[c['name'] for c in ckpt_classes]}, "
                f"but --train has {[c['name'] for c in classes]}")
        # Fine-tuning to new classes: keep everything but the class-specific outputs.
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        log.info("--init %s: classes differ, class-specific layers start fresh", args.init)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise CheckpointError(f"{args.init} does not fit recipe '{recipe.name}' "
                              f"(unexpected weight '{unexpected[0]}')")
    if missing and classes_match(ckpt_classes or classes, classes):
        raise CheckpointError(f"{args.init} does not fit recipe '{recipe.name}' "
                              f"(missing weight '{missing[0]}')")
    return model


def refuse_other_network(state: dict, model, source: str, meta: dict, recipe: Recipe) -> None:
    """CheckpointError, before any weight is loaded, when the checkpoint holds another
    network than ``recipe`` builds: a weight of both whose shape differs, other than the
    class-specific outputs (which fine-tuning to other classes starts afresh)."""
    from frcnn_cli.model.torchvision_weights import CLASS_LAYERS

    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape \
                and not key.startswith(tuple(CLASS_LAYERS)):
            theirs = (meta.get("recipe") or {}).get("model", {}).get("backbone", "?")
            raise CheckpointError(
                f"--init {source} holds another network than recipe '{recipe.name}' builds "
                f"(its backbone: {theirs}; the recipe's: {recipe.model.backbone}; weight "
                f"'{key}' is {tuple(value.shape)} there, {tuple(own[key].shape)} here): give "
                "a checkpoint of the recipe's network, or the recipe the checkpoint was "
                "trained with")


def from_torchvision_detector(name: str, weights: str | None, recipe: Recipe,
                              classes: list[dict]):
    """A FasterRCNN of ``recipe`` for ``classes`` holding torchvision's detector NAME's weights;
    the class-specific outputs start fresh unless ``classes`` are NAME's own (COCO's)."""
    from frcnn_cli.model.faster_rcnn import build_model
    from frcnn_cli.model.torchvision_weights import (
        CLASS_LAYERS,
        coco_classes,
        map_state_dict,
        torchvision_recipe,
        torchvision_state_dict,
    )

    needed = torchvision_recipe(name).model  # also: an unknown NAME stops here
    for key in ("backbone", "frozen_bn_eps"):
        want, have = (dump_yaml(getattr(m, key)).strip().removesuffix("...").strip()
                      for m in (needed, recipe.model))
        if want != have:
            raise RecipeError(
                f"--init torchvision:{name} needs model.{key}={want}, and recipe "
                f"'{recipe.name}' has {have}; use --set model.{key}={want} (recipe "
                "finetune-r50-fpn is made for torchvision:fasterrcnn_resnet50_fpn)")
    state = torchvision_state_dict(name, weights)
    model = build_model(recipe, len(classes), classes=classes, load_weights=False)
    own = classes_match(coco_classes(name), classes)
    source = weights or f"torchvision's {name} weights"
    model.load_state_dict(map_state_dict(state, model, source, fresh=() if own else
                                         CLASS_LAYERS), strict=own)
    if not own:
        log.info("--init torchvision:%s: classes differ from its COCO classes, class-specific "
                 "layers start fresh", name)
    return model


def classes_match(a: list[dict], b: list[dict]) -> bool:
    return [(c["id"], c["name"]) for c in a] == [(c["id"], c["name"]) for c in b]


def warn_if_anchors_cross_border(recipe: Recipe) -> None:
    """Say so when no anchor fits inside an input.min_size square: the RPN, trained only on
    anchors inside the image, would then learn nothing (its losses stay exactly 0)."""
    from frcnn_cli.model.anchors import AnchorGenerator, inside_image

    grid = AnchorGenerator.from_recipe(recipe)
    side = recipe.input.min_size
    places = -(-side // recipe.anchors.stride)
    anchors = grid.grid([(places, places)])
    if not inside_image(anchors, side, side, recipe.rpn.allowed_border).any():
        smallest = float((anchors[:, 2:] - anchors[:, :2]).min())
        log.warning("every anchor (the smallest %.0f px) crosses the border of a %d px image, "
                    "so the RPN has nothing to train on; use smaller anchors.scales or a larger "
                    "input.min_size, or set rpn.allowed_border=-1", smallest, side)
