"""One inference path: `frcnn eval`, `frcnn predict`, `load_model()` on raw tensors, the ONNX
file under onnxruntime and the TorchScript file give the same detections on images of
different sizes, and `frcnn propose` gives the proposals of `load_model()`.

The images are the four the model learnt, each brought to two sizes smaller or larger than the
model's input scale (160 px for the shorter side), square and not, so the model resizes each
of them up or down itself."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_cli import load_model
from frcnn_cli.data.annotations import load_annotations
from frcnn_cli.data.images import read_image
from frcnn_cli.evaluation.detections import load_detections
from frcnn_cli.proposals.files import read_raw as read_proposals

BOX_TOL, SCORE_TOL = 1e-3, 1e-5
# (height, width) of each validation image: smaller, larger, non-square, at scale
SIZES = [(96, 128), (240, 320), (300, 200), (160, 160), (128, 400), (180, 180), (64, 64),
         (500, 380)]


@pytest.fixture(scope="module")
def sized(shapes_four, tmp_path_factory):
    """The four images at two sizes each (lossless PNG), boxes scaled."""
    ann = load_annotations(shapes_four)
    folder = tmp_path_factory.mktemp("sized")
    (folder / "images").mkdir()
    images, anns = [], []
    for n, (h, w) in enumerate(SIZES, start=1):
        im = ann.images[(n - 1) % len(ann.images)]
        name = f"images/{n}.png"
        Image.open(ann.image_path(im)).convert("RGB").resize((w, h), Image.BILINEAR).save(
            folder / name)
        images.append({**im, "id": n, "file_name": name, "width": w, "height": h})
        fx, fy = w / im["width"], h / im["height"]
        anns += [{**a, "id": len(anns) + k, "image_id": n,
                  "bbox": [a["bbox"][0] * fx, a["bbox"][1] * fy, a["bbox"][2] * fx,
                           a["bbox"][3] * fy]}
                 for k, a in enumerate(ann.objects(im["id"]), start=1)]
    path = folder / "val.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": ann.categories}))
    return path


def _raw(path):
    """The file as the Python API user has it: [3, H, W] float in 0..1."""
    return torch.from_numpy(read_image(path).transpose(2, 0, 1).copy()).float() / 255


def _xyxy(dets):
    """COCO results -> (boxes x1y1x2y2, scores, category ids) arrays."""
    b = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)
    return (np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1),
            np.array([d["score"] for d in dets]), np.array([d["category_id"] for d in dets]))


def _assert_same(ref, other, what):
    """ref, other: (boxes [D, 4], scores [D], classes [D]). Same count; each reference
    detection paired with the unused one of its class whose box is nearest."""
    rb, rs, rc = (np.asarray(v, dtype=np.float64) for v in ref)
    ob, os_, oc = (np.asarray(v, dtype=np.float64) for v in other)
    assert len(rb) == len(ob), f"{what}: {len(ob)} detections, expected {len(rb)}"
    free = np.ones(len(ob), bool)
    for i in range(len(rb)):
        gap = np.abs(ob - rb[i]).max(axis=1) + np.where((oc == rc[i]) & free, 0, np.inf)
        j = int(gap.argmin()) if len(gap) else -1
        assert j >= 0 and gap[j] <= BOX_TOL, f"{what}: detection {i} box off by {gap[j]}"
        assert abs(os_[j] - rs[i]) <= SCORE_TOL, f"{what}: detection {i} score off"
        free[j] = False


def test_every_path_gives_the_same_detections(cli, trained_shapes, shapes_exports, sized,
                                              tmp_path):
    import onnxruntime  # here: imported, it starts a thread (see proposals/search.py)

    ann = load_annotations(sized)
    model = load_model(trained_shapes)
    classes = np.array([c["id"] for c in model.classes])
    with torch.inference_mode():
        python = {im["id"]: model([_raw(ann.image_path(im))])[0] for im in ann.images}
    reference = {i: (d["boxes"].numpy(), d["scores"].numpy(), classes[d["labels"].numpy() - 1])
                 for i, d in python.items()}
    assert sum(len(r[0]) for r in reference.values()) >= 20, "too few detections to compare"
    # the fourth image holds no object and the model finds none in it: every path must agree
    # on an empty answer too (the exported graphs' data-dependent sizes at zero)
    assert min(len(r[0]) for r in reference.values()) == 0
    assert {ann.images[0]["width"], ann.images[1]["width"]} == {128, 320}

    dets = tmp_path / "dets.json"
    r = cli("eval", trained_shapes, "--data", sized, "--save-detections", dets, "--device", "cpu")
    assert r.exit_code == 0, r.output
    evaluated = load_detections(dets)

    out = tmp_path / "pred"
    r = cli("predict", trained_shapes, sized.parent / "images", "--out", out,
            "--score-thresh", 0.05, "--device", "cpu")
    assert r.exit_code == 0, r.output
    predicted = json.loads((out / "detections.json").read_text())
    name_to_id = {im["file_name"].split("/")[-1]: im["id"] for im in ann.images}

    onnx_file, ts_file = shapes_exports["onnx"], shapes_exports["torchscript"]
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(ts_file))
    _assert_onnx_interface(onnx_file, model)

    for im in ann.images:
        i, image = im["id"], _raw(ann.image_path(im))
        ref = reference[i]
        _assert_same(ref, _xyxy([d for d in evaluated if d["image_id"] == i]), f"eval {i}")
        _assert_same(ref, _xyxy([d for d in predicted
                                 if name_to_id[d["file_name"].split("/")[-1]] == i]),
                     f"predict {i}")
        boxes, scores, labels = session.run(None, {"image": image.numpy()})
        _assert_same(ref, (boxes, scores, classes[labels - 1]), f"onnx {i}")
        with torch.inference_mode():
            boxes, scores, labels = (t.numpy() for t in scripted(image))
        _assert_same(ref, (boxes, scores, classes[labels - 1]), f"torchscript {i}")


def _assert_onnx_interface(path, model):
    """One input `image` [3, H, W] with H and W dynamic; boxes, scores, labels out; the class
    names in the metadata; NMS, RoI pooling and the resize inside the graph."""
    import onnx

    proto = onnx.load(str(path))
    image = proto.graph.input[0]
    assert image.name == "image"
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_value == 3 and dims[1].dim_param and dims[2].dim_param
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == model.classes and meta["recipe"] == "shapes"
    assert {"NonMaxSuppression", "MaxRoiPool", "Resize"} <= {n.op_type for n in proto.graph.node}


def test_propose_gives_the_models_proposals(cli, trained_shapes, sized, tmp_path):
    ann = load_annotations(sized)
    out = tmp_path / "proposals.pt"
    r = cli("propose", trained_shapes, "--data", sized, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    saved = read_proposals(out)
    per_image = dict(zip(saved["image_ids"].tolist(),
                         zip(torch.split(saved["boxes"], saved["counts"].tolist()),
                             torch.split(saved["scores"], saved["counts"].tolist()),
                             strict=True), strict=True))
    model = load_model(trained_shapes)
    rpn = model.recipe.rpn
    for im in ann.images:
        with torch.inference_mode():
            expected = model.detect([_raw(ann.image_path(im))], rpn_only=True,
                                    pre_nms_top_n=rpn.pre_nms_top_n_train,
                                    post_nms_top_n=rpn.post_nms_top_n_train)[0]
        boxes, scores = per_image[im["id"]]
        assert len(boxes) == len(expected["boxes"]) > 0
        assert (boxes - expected["boxes"]).abs().max() <= BOX_TOL
        assert (scores - expected["scores"]).abs().max() <= SCORE_TOL
        assert boxes[:, 2].max() <= im["width"] and boxes[:, 3].max() <= im["height"]
