"""The detector as one graph: what ``frcnn export`` serialises, whatever the format.

:class:`SingleImageDetector` is the model's own eval forward for one image, with plain tensor
outputs: an image ``[3, H, W]`` float in 0..1 -> ``boxes [D, 4]`` (x1 y1 x2 y2 in the image's
pixels), ``scores [D]``, ``labels [D]`` int64 in 1..K. :func:`capture` records it with
``torch.export`` with symbolic H and W, so resize, normalisation, padding, the anchor grid and
every count follow the input's size, and the number of proposals and detections is a
data-dependent size (zero included). ONNX (:mod:`frcnn_cli.export.onnx`) and TorchScript
(:mod:`frcnn_cli.export.torchscript`) are both written from this one capture.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from frcnn_cli import __version__
from frcnn_cli.errors import InputError

OUTPUT_NAMES = ("boxes", "scores", "labels")

# torch.export treats sizes 0 and 1 as special cases, so symbolic sides start at 2.
MIN_SIDE, MAX_SIDE = 2, 16384


class SingleImageDetector(nn.Module):
    """``forward(image [3, H, W]) -> (boxes [D, 4], scores [D], labels [D])`` of ``model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        detections = self.model([image])[0]
        return detections["boxes"], detections["scores"], detections["labels"]


def example_image(height: int = 300, width: int = 400) -> Tensor:
    """The input the capture is traced with. Only its rank and dtype matter (sizes are
    symbolic); it is neither square nor at the recipe's scale, so no size is special."""
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def quiet_torchvision() -> Iterator[None]:
    """torchvision's fake NMS (what tracing runs instead of the kernel) calls a deprecated torch
    API and warns on every trace; nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="torchvision")
        yield


def capture(model: nn.Module) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`SingleImageDetector` on the CPU, H and W symbolic.

    The model keeps its size arithmetic symbolic while traced (see ``tracing()`` in
    :mod:`frcnn_cli.model.tracing`), so the capture holds for every size from 2 to 16384
    pixels a side. Raises InputError for a model in training mode.
    """
    if model.training:
        raise InputError("export needs a model in eval mode (model.eval())")
    check_one_graph(model)
    detector = SingleImageDetector(model).eval()
    height = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    # Outside inference mode, which torch.export refuses; with autograd on, as the model's
    # fp32 CPU fast paths (oneDNN linear) are for eager inference only.
    with torch.inference_mode(False), quiet_torchvision():
        return torch.export.export(detector, (example_image(),),
                                   dynamic_shapes={"image": {1: height, 2: width}},
                                   strict=False)


def check_one_graph(model: nn.Module, name: str = "this model") -> None:
    """Refuse a detector whose proposals come from outside the network: a Fast R-CNN detector
    trained on Selective Search (``model.proposal_source``) needs OpenCV's segmentation of
    each image, CPU code that no graph can hold."""
    source = getattr(model, "proposal_source", None)
    if source:
        raise InputError(
            f"{name} is a Fast R-CNN detector on Selective Search proposals, which OpenCV's "
            "segmentation makes on the CPU outside the network, so it cannot be one ONNX or "
            "TorchScript file; run it with frcnn eval or predict (they search each image), or "
            "export a Faster R-CNN (frcnn train or train-alt), whose RPN proposes inside the "
            "graph")


def metadata(model: nn.Module, **extra: Any) -> dict[str, str]:
    """What a deployed file should carry besides weights: class names and dataset ids (label
    i is ``classes[i - 1]``), the recipe (its name, and the whole resolved recipe as JSON in
    ``recipe_config``), the output filter the graph applies (``score_thresh``,
    ``detections_per_img``: the recipe's test-time values), the precision of its weights
    (fp32 unless ``extra`` says otherwise), the input and output conventions."""
    heads = model.recipe.roi_heads
    return {
        "frcnn_version": __version__,
        "recipe": model.recipe.name or "",
        "recipe_config": json.dumps(model.recipe.to_dict()),
        "score_thresh": json.dumps(float(heads.score_thresh)),
        "detections_per_img": json.dumps(int(heads.detections_per_img)),
        "precision": "fp32",
        "classes": json.dumps(list(model.classes)),
        "input": "image: float32 [3, H, W], RGB in 0..1, any H and W",
        "outputs": "boxes: float32 [D, 4] x1 y1 x2 y2 in input pixels; scores: float32 [D]; "
                   "labels: int64 [D] in 1..K, class = classes[label - 1]",
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()},
    }
