"""frcnn: Faster R-CNN (Ren, He, Girshick, Sun, NIPS 2015) as a command-line toolkit.

Python API::

    import frcnn_cli
    model = frcnn_cli.build_model("shapes", num_classes=3)   # recipe name, path or Recipe
    model = frcnn_cli.load_model("runs/a/model.pt")           # eval mode, on the CPU
    model = frcnn_cli.from_torchvision("fasterrcnn_resnet50_fpn")   # torchvision's COCO detector
    detections = model([image])   # image: [3, H, W] float in 0..1 -> [{boxes, scores, labels}]
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("frcnn")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.1.0"


def build_model(recipe, num_classes: int, **kwargs):
    """Build a Faster R-CNN from a recipe (name, path or Recipe) for ``num_classes`` classes.

    ``num_classes`` counts object classes only; background is added internally.
    """
    from frcnn_cli.model.faster_rcnn import build_model as _build

    return _build(recipe, num_classes, **kwargs)


def load_model(path, device: str = "cpu"):
    """Load a trained model from a checkpoint, in eval mode, on ``device``."""
    from frcnn_cli.model.faster_rcnn import load_model as _load

    return _load(path, device=device)


def from_torchvision(name: str, weights=None, device: str = "cpu", overrides=None):
    """torchvision's published detector NAME (``fasterrcnn_resnet50_fpn``, ``_v2``,
    ``fasterrcnn_mobilenet_v3_large_fpn``, ``..._320_fpn``) as an frcnn model with the same
    detections, torchvision's COCO classes and test-time settings, in eval mode on ``device``.

    ``weights``: a local file of NAME's weights (else downloaded once through torchvision's
    weights API); ``overrides``: recipe changes, ``--set`` style.
    """
    from frcnn_cli.model.torchvision_weights import from_torchvision as _from

    return _from(name, weights=weights, device=device, overrides=overrides)


__all__ = ["__version__", "build_model", "from_torchvision", "load_model"]
