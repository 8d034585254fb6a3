"""FPN detectors export like the paper's: the ONNX and TorchScript files of a pyramid model with
torchvision's settings (coco-r50-fpn's: floor-sized resize, corner anchors strided by padded
size // map size, per-level proposals, RoIs pooled from several levels by FPN Eq. 1) agree with
PyTorch at two image sizes. The body is the tiny stack's (tiny-fpn): the pyramid, its RPN and
its RoI levels are the same modules as on ResNet-50, in a fraction of the export time.
"""

import pytest
import torch
from random_weights import spread_weights

from frcnn_cli import build_model
from frcnn_cli.config import load_recipe
from frcnn_cli.export import export_bytes, load_exported
from frcnn_cli.export import onnx as onnx_export
from frcnn_cli.export import torchscript as torchscript_export
from frcnn_cli.export.capture import capture
from frcnn_cli.export.verify import check_export, check_images

SETTINGS = ["model.backbone=tiny-fpn", "anchors.sizes=[32,64,128,256]", "anchors.level_sizes=all",
            "model.pretrained=false", "model.head_dim=64", "input.min_size=160",
            "input.max_size=224", "rpn.post_nms_top_n_test=50", "roi_heads.score_thresh=0.0"]


@pytest.fixture(scope="module")
def model():
    """coco-r50-fpn's settings on tiny-fpn at 160 px with random weights (anchors of every
    size on every level, so that the top proposals come in sizes that map to several levels),
    BatchNorm and head weights spread so that proposals and detections have distinct scores.
    (Scores equal in float32, which a saturated sigmoid gives, are ordered by each runtime's
    own sort: onnxruntime's may differ.)"""
    torch.manual_seed(0)
    net = build_model(load_recipe("coco-r50-fpn", SETTINGS), 3).eval()
    spread_weights(net, torch.Generator().manual_seed(1))
    return net


@pytest.fixture(scope="module")
def captured(model):
    return capture(model)  # both files are written from one capture, as `frcnn export` does


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_fpn_export_agrees_with_pytorch_at_two_sizes(model, captured, fmt, monkeypatch):
    for module in (onnx_export, torchscript_export):
        monkeypatch.setattr(module, "capture", lambda _: captured)
    data = export_bytes(model, fmt)
    images = check_images()  # 240 x 320 and 400 x 300: both branches of the resize rule
    results = check_export(model, load_exported(fmt, data), images)
    for r in results:
        assert r.ok, r
        assert r.detections > 10
    with torch.inference_mode():
        proposals = model.detect([images[0][1]], return_proposals=True)[0]["proposals"]
    levels = model.roi_heads.map_levels(proposals * 160 / 240)  # in network pixels
    assert len(torch.unique(levels)) > 1  # RoIs really come from several levels
    if fmt == "onnx":
        import onnx

        ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
        assert {"RoiAlign", "NonMaxSuppression", "TopK"} <= ops
