"""Faster R-CNN (Ren et al. 2015): shared convs, RPN and a Fast R-CNN head in one module.

    model = build_model("shapes", num_classes=3)          # recipe name, path or Recipe
    losses = model(images, targets)                       # training: dict of scalar losses
    model.eval(); detections = model(images)              # [{boxes, scores, labels}] per image
    model.detect(images, score_thresh=0.5)                # the same, test-time settings given

``images`` is a list of [3, H, W] tensors (float in 0..1, or uint8) of any sizes, each at its
own size: the model resizes them (its transform is the one home of the resize rule);
``targets`` a list of dicts with ``boxes`` [N, 4] (x1 y1 x2 y2, the image's pixels),
``labels`` [N] in 1..K and optionally ``ignore`` [M, 4], regions where anchors and proposals
are neither objects nor background (crowd boxes, objects cut by a tile edge). Detections and
proposals come back in each input image's pixels.

For the paper's 4-step training the model also runs as an RPN alone (``rpn_only=True``) or as
a Fast R-CNN detector on given proposals (``proposals=[...]``), and its parameters form three
groups, frozen stage by stage: ``shared`` (backbone convs), ``rpn`` and ``detector``.

A Fast R-CNN detector trained on external proposals (Selective Search: ``frcnn train-detector
--proposals ss.pt``) has an untrained RPN. Its checkpoint says so (``meta["proposals"]``),
:func:`load_model` keeps that as ``model.proposal_source``, and such a model detects only on
given proposals.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from frcnn_cli.checkpoint import load_checkpoint
from frcnn_cli.config import Recipe, load_recipe, recipe_from_dict
from frcnn_cli.errors import CheckpointError, InputError, RecipeError
from frcnn_cli.model.anchors import AnchorGenerator
from frcnn_cli.model.backbones import BackboneParts, build_backbone
from frcnn_cli.model.poolers import RoIPooler
from frcnn_cli.model.roi_heads import RoIHeads
from frcnn_cli.model.rpn import RegionProposalNetwork, paper_proposal_layer
from frcnn_cli.model.transform import ImageTransform

_NORMS = (nn.modules.batchnorm._BatchNorm,)
GROUPS = ("shared", "rpn", "detector")


class FasterRCNN(nn.Module):
    """The detector. Attributes: ``recipe``, ``classes`` ([{"id", "name"}] in label order),
    ``num_classes``, ``proposal_source`` (None, or for a detector trained on external
    proposals their settings, e.g. ``{"method": "selective-search", "mode": "fast", ...}``),
    and the parts ``transform``, ``backbone``, ``rpn``, ``roi_heads``."""

    def __init__(self, recipe: Recipe, num_classes: int, classes: list[dict] | None = None,
                 load_weights: bool = True) -> None:
        super().__init__()
        if classes is None:
            classes = [{"id": i, "name": f"class{i}"} for i in range(1, num_classes + 1)]
        if len(classes) != num_classes:
            raise InputError(f"{len(classes)} class names given for {num_classes} classes")
        self.recipe = recipe
        self.classes = [{"id": c["id"], "name": c["name"]} for c in classes]
        self.num_classes = num_classes
        self.proposal_source: dict | None = None
        m = recipe.model
        parts = build_backbone(m, m.roi_size, load_weights=load_weights)
        self.transform = ImageTransform(recipe.input, parts.backbone.pixel_mean,
                                        parts.backbone.pixel_std, m.channels_last)
        self.backbone = parts.backbone
        self.rpn, self.roi_heads = build_heads(recipe, parts, num_classes)
        self._trainable = dict.fromkeys(GROUPS, True)

    # ------------------------------------------------------------------ forward

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                proposals: list[Tensor] | None = None, rpn_only: bool = False):
        """Training: dict of losses ``loss_rpn_cls``, ``loss_rpn_box`` (unless ``proposals``
        are given), ``loss_det_cls``, ``loss_det_box`` (unless ``rpn_only``).
        Eval: :meth:`detect` with the recipe's test-time settings."""
        if not self.training:
            return self.detect(images, proposals, rpn_only=rpn_only)
        if targets is None:
            raise InputError("training needs targets (boxes and labels per image)")
        if rpn_only and proposals is not None:
            raise InputError("rpn_only and given proposals exclude each other")
        batch, targets, proposals = self.transform(images, targets, proposals)
        features = self.backbone(batch.tensors)
        losses: dict[str, Tensor] = {}
        if proposals is None:
            proposals, _, losses = self.rpn(features, batch.image_sizes,
                                            batch.scales.mean(dim=1),
                                            [t["boxes"] for t in targets], propose=not rpn_only,
                                            ignore=[t.get("ignore") for t in targets])
        if rpn_only:
            return losses
        _, det_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        return {**losses, **det_losses}

    def detect(self, images: list[Tensor], proposals: list[Tensor] | None = None, *,
               rpn_only: bool = False, score_thresh: float | None = None,
               detections_per_img: int | None = None, pre_nms_top_n: int | None = None,
               post_nms_top_n: int | None = None,
               return_proposals: bool = False) -> list[dict[str, Tensor]]:
        """Detections for ``images`` (list of [3, H, W], float in 0..1 or uint8, any sizes),
        every box in its input image's pixels. The one inference call of every path (eval,
        propose, predict, benchmark, export, the Python API); a setting left at None is the
        recipe's test-time value.

        - ``proposals``: [P, 4] boxes per image (input pixels) for a detector trained on
          external proposals; the RPN is not run.
        - ``rpn_only``: return the RPN's proposals as ``boxes`` and objectness ``scores``.
        - ``score_thresh``, ``detections_per_img``: the detector's output filter
          (``roi_heads.score_thresh``, ``roi_heads.detections_per_img``).
        - ``pre_nms_top_n``, ``post_nms_top_n``: proposals kept before and after the RPN's NMS
          (``rpn.pre_nms_top_n_test``, ``rpn.post_nms_top_n_test``).
        - ``return_proposals``: also return each image's ``proposals`` [P, 4] and
          ``proposal_scores`` [P] (the RoIs the head classified).

        Returns one dict per image: ``boxes`` [D, 4] x1 y1 x2 y2, ``scores`` [D], ``labels``
        [D] in 1..K, best first.
        """
        if rpn_only and proposals is not None:
            raise InputError("rpn_only and given proposals exclude each other")
        if proposals is None and self.proposal_source is not None:
            method = self.proposal_source.get("method", "external")
            raise InputError(f"this Fast R-CNN detector was trained on {method} proposals and "
                             "its RPN is untrained: it detects on given proposals "
                             "(model.detect(images, proposals=...)); frcnn eval, predict and "
                             "benchmark run Selective Search for it")
        batch, _, proposals = self.transform(images, None, proposals)
        features = self.backbone(batch.tensors)
        scores: list[Tensor] = []
        if proposals is None:
            proposals, scores, _ = self.rpn(features, batch.image_sizes,
                                            batch.scales.mean(dim=1),
                                            pre_nms_top_n=pre_nms_top_n,
                                            post_nms_top_n=post_nms_top_n)
        if rpn_only:
            return [{"boxes": self.transform.to_input(p, batch, i), "scores": s}
                    for i, (p, s) in enumerate(zip(proposals, scores, strict=True))]
        detections, _ = self.roi_heads(features, proposals, batch.image_sizes,
                                       score_thresh=score_thresh,
                                       detections_per_img=detections_per_img)
        results = []
        for i, d in enumerate(detections):
            result = {**d, "boxes": self.transform.to_input(d["boxes"], batch, i)}
            if return_proposals:
                result["proposals"] = self.transform.to_input(proposals[i], batch, i)
                result["proposal_scores"] = scores[i] if scores else torch.ones_like(
                    proposals[i][:, 0])
            results.append(result)
        return results

    # ------------------------------------------------------------------ parameter groups

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``shared`` (backbone, minus its always-frozen early layers), ``rpn``, ``detector``
        (the head on RoIs, incl. fc6/fc7 or res5)."""
        return {"shared": self.backbone.trainable_parameters(),
                "rpn": list(self.rpn.parameters()),
                "detector": list(self.roi_heads.parameters())}

    def set_trainable(self, shared: bool = True, rpn: bool = True,
                      detector: bool = True) -> FasterRCNN:
        """Freeze or unfreeze the groups: requires_grad, and a frozen group's BatchNorm stays
        in eval mode, so neither its weights nor its running statistics change."""
        self._trainable = {"shared": shared, "rpn": rpn, "detector": detector}
        for name, params in self.parameter_groups().items():
            for p in params:
                p.requires_grad_(self._trainable[name])
        return self.train(self.training)

    def train(self, mode: bool = True) -> FasterRCNN:
        super().train(mode)
        if mode:
            frozen = [self.backbone.frozen_layers()]
            frozen += [{"shared": self.backbone, "rpn": self.rpn,
                        "detector": self.roi_heads}[g] for g in GROUPS if not self._trainable[g]]
            for part in frozen:
                for module in part.modules():
                    if isinstance(module, _NORMS):
                        module.eval()
        return self


# ---------------------------------------------------------------------- building and loading


def build_heads(recipe: Recipe, parts: BackboneParts, num_classes: int
                ) -> tuple[RegionProposalNetwork, RoIHeads]:
    """The RPN and the RoI heads on ``parts``' backbone, one map or a pyramid's levels alike:
    anchors on every level, RoIs pooled from the pooled levels."""
    backbone, m = parts.backbone, recipe.model
    pyramid = len(backbone.strides) > 1
    anchors = AnchorGenerator.from_recipe(recipe, backbone.strides if pyramid else None)
    if not pyramid and anchors.strides != backbone.strides:
        raise RecipeError(f"anchors.stride is {recipe.anchors.stride} but the {m.backbone} "
                          f"backbone has stride {backbone.strides[0]}")
    pooler = RoIPooler(m.roi_op, m.roi_size, backbone.strides[:backbone.pooled_levels])

    def rpn() -> RegionProposalNetwork:
        return RegionProposalNetwork(backbone.out_channels, anchors, recipe.rpn,
                                     recipe.input.size_divisible)

    def roi_heads() -> RoIHeads:
        return RoIHeads(pooler, parts.box_head, parts.head_channels, num_classes,
                        recipe.roi_heads)

    if paper_proposal_layer(anchors, recipe.rpn):
        return rpn(), roi_heads()
    heads = roi_heads()  # first, as before one RPN served both layers: a seed gives the
    return rpn(), heads  # initial weights it gave then


def _as_recipe(recipe: Recipe | str | os.PathLike) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def build_model(recipe: Recipe | str | os.PathLike, num_classes: int,
                classes: list[dict] | None = None, load_weights: bool = True) -> FasterRCNN:
    """A new model for ``num_classes`` object classes (background is added internally).

    ``recipe``: a Recipe, a recipe name or a YAML path. ``classes``: [{"id", "name"}] in label
    order (default: ids 1..K named class1..classK). ``load_weights=False`` skips ImageNet
    weights (for a model whose weights will be loaded from a checkpoint).
    """
    if num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}")
    return FasterRCNN(_as_recipe(recipe), num_classes, classes, load_weights=load_weights)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> FasterRCNN:
    """The model saved in a checkpoint, in eval mode on ``device``."""
    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    if not isinstance(meta.get("recipe"), dict):
        raise CheckpointError(f"{path} holds weights but no recipe; rebuild the model with "
                              "build_model(recipe, num_classes) and load them into it")
    recipe = recipe_from_dict(meta["recipe"], f"recipe in {path}")
    state = ckpt["model"]
    classes = meta.get("classes") or None
    if classes:
        num_classes = len(classes)
    elif "roi_heads.cls_score.weight" in state:
        num_classes = state["roi_heads.cls_score.weight"].shape[0] - 1
    else:
        raise CheckpointError(f"{path} has no detector weights (roi_heads.cls_score)")
    model = FasterRCNN(recipe, num_classes, classes, load_weights=False)
    model.proposal_source = meta.get("proposals") or None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise CheckpointError(f"{path} does not fit its own recipe "
                              f"({lines[1][:200] if len(lines) > 1 else lines[0][:200]})"
                              ) from None
    return model.to(device).eval()
