"""torchvision's published Faster R-CNN detectors as frcnn models.

    model = from_torchvision("fasterrcnn_resnet50_fpn")             # downloads once
    model = from_torchvision("fasterrcnn_resnet50_fpn",             # offline: torchvision's file
                             weights="fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")

Each published NAME is the recipe ``coco-r50-fpn`` (torchvision's ``fasterrcnn_resnet50_fpn``
and its defaults) with what NAME changes (:data:`DETECTORS`). The weights come from
torchvision's weights API (``weights.get_state_dict()``, cached by torch.hub) or from a local
file, and map one to one onto frcnn's modules (:func:`map_state_dict`): the backbone and FPN
keep torchvision's keys, the RPN head's first conv is ``rpn.head.conv``, and the box
predictor's layers sit on ``roi_heads`` itself. The classes are torchvision's 90 COCO labels
(their names from the weights' metadata, "N/A" for the ids COCO left unused), label i being
COCO category id i.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torchvision.models.detection as detection
from torch import Tensor

from frcnn_cli.checkpoint import load_safe
from frcnn_cli.config import Recipe, load_recipe
from frcnn_cli.errors import CheckpointError, FrcnnError, InputError

RECIPE = "coco-r50-fpn"  # torchvision's fasterrcnn_resnet50_fpn, every setting as torchvision's
# and torchvision's memory format: channels-last convolutions round differently, and near-equal
# scores would then rank otherwise than in torchvision's detector
EXACT = ("model.channels_last=false",)
PREFIX = "torchvision:"  # --init torchvision:NAME
CLASS_LAYERS = ("roi_heads.cls_score.", "roi_heads.bbox_pred.")  # one output per class


@dataclass(frozen=True)
class Detector:
    weights: str               # the torchvision.models.detection weights enum
    overrides: tuple[str, ...]  # what NAME changes in RECIPE


DETECTORS = {
    # Its COCO weights came from Detectron with BatchNorm statistics used without eps:
    # torchvision's builder sets the frozen BatchNorm's eps to 0 for them (overwrite_eps).
    "fasterrcnn_resnet50_fpn": Detector("FasterRCNN_ResNet50_FPN_Weights",
                                        ("model.frozen_bn_eps=0",)),
    "fasterrcnn_resnet50_fpn_v2": Detector("FasterRCNN_ResNet50_FPN_V2_Weights",
                                           ("model.backbone=resnet50-fpn-v2", "rpn.convs=2")),
    "fasterrcnn_mobilenet_v3_large_fpn": Detector(
        "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
        ("model.backbone=mobilenet_v3_large-fpn", "anchors.level_sizes=all",
         "rpn.score_thresh=0.05")),
    "fasterrcnn_mobilenet_v3_large_320_fpn": Detector(
        "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights",
        ("model.backbone=mobilenet_v3_large-fpn", "anchors.level_sizes=all",
         "rpn.score_thresh=0.05", "input.min_size=320", "input.max_size=640",
         "rpn.pre_nms_top_n_test=150", "rpn.post_nms_top_n_test=150")),
}


def _detector(name: str) -> Detector:
    if name not in DETECTORS:
        raise InputError(f"unknown torchvision detector '{name}'; frcnn maps "
                         f"{', '.join(DETECTORS)}")
    return DETECTORS[name]


def published_weights(name: str):
    """torchvision's weights entry of NAME (``DEFAULT``, its COCO weights): ``.url``,
    ``.meta`` (categories, box AP), ``.get_state_dict()``."""
    return getattr(detection, _detector(name).weights).DEFAULT


def torchvision_recipe(name: str, overrides: list[str] | None = None) -> Recipe:
    """The recipe of torchvision's detector NAME: every setting torchvision's, ``overrides``
    (``--set`` style) on top."""
    return load_recipe(RECIPE, [*EXACT, *_detector(name).overrides, *(overrides or [])])


def coco_classes(name: str) -> list[dict]:
    """``[{"id", "name"}]`` of NAME's labels 1..90 (offline: the weights' metadata)."""
    categories = published_weights(name).meta["categories"]
    return [{"id": i, "name": c} for i, c in enumerate(categories) if i > 0]


def torchvision_state_dict(name: str, weights: str | os.PathLike | None = None
                           ) -> dict[str, Tensor]:
    """NAME's state dict in torchvision's layout: from the file ``weights`` (torchvision's
    download, or a checkpoint of torchvision's training references), else downloaded."""
    if weights is not None:
        state = load_safe(weights, "torchvision weights file")
        for key in ("model", "state_dict"):  # references/detection checkpoints wrap it
            if isinstance(state.get(key), dict):
                state = state[key]
        return state
    entry = published_weights(name)
    try:
        return entry.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # offline, proxy, bad cache: all end the same way for the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FrcnnError(f"cannot download torchvision's {name} weights ({reason}); on an "
                         f"offline machine fetch {entry.url} elsewhere and pass --init-weights "
                         "FILE (Python: from_torchvision(NAME, weights=FILE))") from None


# torchvision key -> frcnn key, for the keys that differ (the rest are the same)
_RENAMES = (
    (re.compile(r"^rpn\.head\.conv\.0\.0\."), "rpn.head.conv."),
    (re.compile(r"^rpn\.head\.conv\.(\d+)\.0\."), None),  # v2's further convs: extra_convs
    (re.compile(r"^roi_heads\.box_predictor\."), "roi_heads."),
    # torchvision's FPN before its version 2 (the 2019 files): no Conv2dNormActivation
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
)


def _frcnn_key(key: str) -> str:
    for pattern, to in _RENAMES:
        match = pattern.match(key)
        if match and to is None:
            return f"rpn.head.extra_convs.{int(match.group(1)) - 1}." + key[match.end():]
        if match:
            return pattern.sub(to, key)
    return key


def map_state_dict(state: dict[str, Tensor], model: torch.nn.Module,
                   source: str = "the weights", fresh: tuple[str, ...] = ()
                   ) -> dict[str, Tensor]:
    """torchvision's detector state dict -> ``model``'s (an frcnn FasterRCNN of the same
    layout). BatchNorm's ``num_batches_tracked`` is left out where ``model`` freezes it, and
    so are the frcnn keys starting with one of ``fresh`` (layers that start anew); any other
    key that does not fit is a CheckpointError naming ``source``."""
    own = model.state_dict()
    mapped = {}
    for key, value in state.items():
        new = _frcnn_key(key)
        if fresh and new.startswith(fresh):
            continue
        if new not in own and key.endswith("num_batches_tracked"):
            continue  # frozen BatchNorm keeps no count
        if new not in own:
            raise CheckpointError(f"{source} does not fit {model.recipe.model.backbone} "
                                  f"(unexpected weight '{key}')")
        if own[new].shape != value.shape:
            raise CheckpointError(f"{source} does not fit: '{key}' has shape "
                                  f"{tuple(value.shape)}, the model's {tuple(own[new].shape)}")
        mapped[new] = value
    missing = [k for k in own if k not in mapped and not (fresh and k.startswith(fresh))]
    if missing:
        raise CheckpointError(f"{source} does not fit {model.recipe.model.backbone} "
                              f"(missing weight for '{missing[0]}')")
    return mapped


def from_torchvision(name: str, weights: str | os.PathLike | None = None,
                     device: str | torch.device = "cpu", overrides: list[str] | None = None):
    """torchvision's detector NAME as an frcnn model, in eval mode on ``device``: the same
    detections as ``torchvision.models.detection.NAME(weights="DEFAULT")`` (or holding the
    file ``weights``), with torchvision's test-time settings and COCO classes. ``overrides``:
    recipe changes (``--set`` style, e.g. ``["input.min_size=512"]``). A file of another
    number of classes (a torchvision model fine-tuned elsewhere) gives classes class1..classK.
    """
    from frcnn_cli.model.faster_rcnn import FasterRCNN

    recipe = torchvision_recipe(name, overrides)
    state = torchvision_state_dict(name, weights)
    source = str(weights) if weights is not None else f"torchvision's {name} weights"
    score = state.get("roi_heads.box_predictor.cls_score.weight")
    if score is None:
        raise CheckpointError(f"{source} holds no torchvision detector "
                              "(no roi_heads.box_predictor.cls_score)")
    classes = coco_classes(name)
    if score.shape[0] - 1 != len(classes):
        classes = [{"id": i, "name": f"class{i}"} for i in range(1, score.shape[0])]
    model = FasterRCNN(recipe, len(classes), classes, load_weights=False)
    model.load_state_dict(map_state_dict(state, model, source))
    return model.to(device).eval()
