"""Exported files as detectors: an ONNX file (fp32 or INT8) or a TorchScript file run with the
same calls the evaluation, drawing and timing code make on a checkpoint's model.

    detector = load_exported_model("model.onnx")            # onnxruntime on the CPU
    result = evaluate_model(detector, "val.json")           # the checkpoint's mAP (fp32 file)
    predict_files(detector, jobs)                           # drawings and detections
    detector = load_exported_model("model.onnx", device="cuda")   # CUDAExecutionProvider

:class:`ExportedDetector` has the inference surface of a model: ``detect(images, *,
score_thresh, detections_per_img)`` -> one dict per image with ``boxes`` (x1 y1 x2 y2 in that
image's pixels), ``scores``, ``labels``; ``classes``, ``num_classes``, ``recipe``;
``eval()``, ``to(device)``; ``proposal_source = None``.

The graph of an exported file has the test-time output filter of its export baked in: the
score threshold and the detection count per image of its recipe (``roi_heads.score_thresh``,
``roi_heads.detections_per_img``), which files written since INT8 exports record in their
metadata. ``detect`` can raise the threshold or lower the count (it filters the file's
output, best first, as the model's own filter would) but not go the other way: what the file
dropped is gone, so that is an InputError naming the export's values. With no settings,
``detect`` gives exactly the file's output, which is why ``evaluate_model`` on an fp32 export
scores the checkpoint's mAP: it calls ``model.detect(images)`` with the recipe's settings,
the ones the file was exported with.

A file's recipe travels in its metadata (``recipe_config``, the resolved recipe as JSON);
files written before that carry only the recipe's name, and load with the schema's defaults
under that name (``recipe_known`` False): enough for the test loader, not for rebuilding the
network (``benchmark --compare torchvision``).

Runtimes: onnxruntime for ONNX files (CPU; ``CUDAExecutionProvider`` for a CUDA device when
the installed onnxruntime has it), ``torch.jit.load`` for TorchScript files (CPU: the trace
records its devices). Each runs with ``torch.get_num_threads()`` threads unless told
otherwise, so one thread setting governs every engine a benchmark compares.

OpenVINO is not offered: it runs the same ONNX file, but its Resize does not antialias as
torch's does, so on any image the model resizes it detects otherwise than the checkpoint
(boxes 0.3 px and scores 0.02 apart on a shapes model; the same to the bit on images already
at the model's scale). ``benchmarks/int8.py`` still times it.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from frcnn_cli.config import Recipe, recipe_from_dict
from frcnn_cli.errors import ExportError, InputError

RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torch"}


def exported_format(path: str | os.PathLike) -> str | None:
    """``"onnx"`` or ``"torchscript"`` for a file ``frcnn export`` wrote, None for anything
    else (a checkpoint, the ``--svd`` checkpoint included), judged by content."""
    from frcnn_cli.outputs import ONNX_EXPORT, TORCHSCRIPT_EXPORT

    path = Path(path)
    if not path.is_file():
        return None
    if ONNX_EXPORT.recognise(path):
        return "onnx"
    return "torchscript" if TORCHSCRIPT_EXPORT.recognise(path) else None


def load_exported_model(path: str | os.PathLike, device: str | torch.device = "cpu",
                        threads: int | None = None) -> ExportedDetector:
    """The exported file at ``path`` as an :class:`ExportedDetector` on ``device``, run by
    its format's runtime (:data:`RUNTIMES`) with ``threads`` compute threads (default:
    torch's). Raises InputError for a file that is not one ``frcnn export`` wrote, or a
    device its runtime cannot use here.
    """
    from frcnn_cli.files import require_file

    path = require_file(path, "exported model")
    fmt = exported_format(path)
    if fmt is None:
        raise InputError(f"{path} is not an ONNX or TorchScript file written by frcnn export")
    return ExportedDetector(exported_runtime(fmt, path.read_bytes(), threads), path,
                            fmt).to(device)


def exported_runtime(fmt: str, data: bytes, threads: int | None = None):
    """The runtime of ``fmt`` (:data:`RUNTIMES`) holding an exported file's bytes, on the CPU:
    ``run(image) -> (boxes, scores, labels)``, ``metadata``, ``place(device)``; ``threads``
    compute threads (default: torch's)."""
    return _ENGINES[RUNTIMES[fmt]](data, threads)


class ExportedDetector:
    """An exported file with a model's inference surface (see the module doc)."""

    proposal_source = None  # the RPN is inside the graph
    training = False

    def __init__(self, engine: Any, path: Path, fmt: str) -> None:
        self.engine, self.path, self.format = engine, path, fmt
        self.runtime = engine.name
        info = engine.metadata
        try:
            self.classes = [dict(c) for c in json.loads(info["classes"])]
        except (KeyError, ValueError, TypeError):
            raise InputError(f"{path} carries no class names in its metadata; export it again "
                             "with frcnn export") from None
        self.num_classes = len(self.classes)
        self.recipe, self.recipe_known = _recipe(info, path)
        self.score_thresh = _number(info.get("score_thresh"))
        self.detections_per_img = _number(info.get("detections_per_img"))
        self.precision = info.get("precision", "fp32")
        self.metadata = info
        self.device = torch.device("cpu")

    def eval(self) -> ExportedDetector:
        return self

    def train(self, mode: bool = True) -> ExportedDetector:
        if mode:
            raise InputError(f"{self.path} is an exported file: it cannot be trained")
        return self

    def to(self, device: str | torch.device) -> ExportedDetector:
        device = torch.device(device)
        if device != self.device:
            self.engine.place(device)
            self.device = device
        return self

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.detect(images)

    def detect(self, images: list[Tensor], proposals: list[Tensor] | None = None, *,
               rpn_only: bool = False, score_thresh: float | None = None,
               detections_per_img: int | None = None, pre_nms_top_n: int | None = None,
               post_nms_top_n: int | None = None,
               return_proposals: bool = False) -> list[dict[str, Tensor]]:
        """``model.detect`` of the file: ``images`` a list of ``[3, H, W]`` (float in 0..1 or
        uint8, any sizes) -> one dict per image, ``boxes`` [D, 4] in its pixels, ``scores``
        [D], ``labels`` [D] int64, best first, on the images' device. ``score_thresh`` and
        ``detections_per_img`` filter the file's output (see the module doc); the other
        settings need the PyTorch model and are InputErrors."""
        asked = {"proposals": proposals is not None, "rpn_only": rpn_only,
                 "pre_nms_top_n": pre_nms_top_n is not None,
                 "post_nms_top_n": post_nms_top_n is not None,
                 "return_proposals": return_proposals}
        if any(asked.values()):
            raise InputError(f"{self.path} holds the whole detector as one graph: "
                             f"{', '.join(k for k, v in asked.items() if v)} need the "
                             "checkpoint it was exported from")
        self._check_filter(score_thresh, detections_per_img)
        if images and torch.is_autocast_enabled(images[0].device.type):
            raise InputError(f"{self.path} runs at the precision it was exported in "
                             f"({self.precision}); --precision bf16/fp16 is for checkpoints")
        results = []
        for image in images:
            pixels = image.float() / 255 if image.dtype == torch.uint8 else image.float()
            boxes, scores, labels = self.engine.run(pixels)
            keep = slice(None) if detections_per_img is None else slice(detections_per_img)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            if score_thresh is not None:
                ok = scores >= score_thresh
                boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
            results.append({"boxes": boxes.to(image.device), "scores": scores.to(image.device),
                            "labels": labels.to(image.device)})
        return results

    def _check_filter(self, score_thresh: float | None, detections_per_img: int | None) -> None:
        if (score_thresh is not None and self.score_thresh is not None
                and score_thresh < self.score_thresh):
            raise InputError(f"{self.path} keeps detections scoring at least "
                             f"{self.score_thresh:g} (its recipe's roi_heads.score_thresh when "
                             f"exported), so it cannot give those down to {score_thresh:g}")
        if (detections_per_img is not None and self.detections_per_img is not None
                and detections_per_img > self.detections_per_img):
            raise InputError(f"{self.path} keeps at most {self.detections_per_img:g} detections "
                             "per image (its recipe's roi_heads.detections_per_img when "
                             f"exported), so it cannot give {detections_per_img}")

    def describe(self) -> str:
        """What runs, for the user: file, format, precision, runtime and where."""
        where = self.engine.where()
        return f"{self.path} ({self.format}, {self.precision}; {self.runtime} on {where})"


def _number(text: str | None) -> float | None:
    return None if text in (None, "") else json.loads(text)


def _recipe(info: dict[str, str], path: Path) -> tuple[Recipe, bool]:
    """The file's resolved recipe, or the schema's defaults under its name (older files)."""
    if info.get("recipe_config"):
        return recipe_from_dict(json.loads(info["recipe_config"]), f"recipe in {path}"), True
    return recipe_from_dict({"name": info.get("recipe") or "custom"}), False


# --------------------------------------------------------------------------- runtimes


class _OnnxRuntime:
    """onnxruntime: the CPU provider, or CUDA's for a CUDA device."""

    name = "onnxruntime"

    def __init__(self, data: bytes, threads: int | None) -> None:
        self.data, self.threads = data, threads
        self.session, self.metadata = self._session("cpu")

    def _session(self, device: torch.device | str):
        return onnx_session(self.data, device, self.threads or torch.get_num_threads())

    def place(self, device: torch.device) -> None:
        self.session, _ = self._session(device)

    def where(self) -> str:
        return ", ".join(self.session.get_providers()[:1])

    def run(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs = self.session.run(None, {"image": image.detach().cpu().numpy()})
        return tuple(torch.from_numpy(np.asarray(v)) for v in outputs)


class _TorchScript:
    """``torch.jit.load`` of a TorchScript file (CPU only: its trace records devices)."""

    name = "torch"

    def __init__(self, data: bytes, threads: int | None) -> None:
        self.module, info = load_torchscript(data)
        self.metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in info.items()}
        self.threads = threads

    def place(self, device: torch.device) -> None:
        if device.type != "cpu":
            raise InputError("a TorchScript export runs on the CPU (its trace records the "
                             "devices); export to ONNX for onnxruntime's CUDA provider")

    def where(self) -> str:
        return "CPU"

    def run(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                return self.module(image.detach().cpu())
        finally:
            torch.set_num_threads(before)


_ENGINES = {"onnxruntime": _OnnxRuntime, "torch": _TorchScript}


def onnx_session(data: bytes, device: str | torch.device = "cpu", threads: int | None = None):
    """An onnxruntime session of an ONNX file's bytes, and its metadata as a dict: on the CPU,
    or with the CUDA provider for a CUDA ``device`` (InputError when this onnxruntime has
    none); ``threads``: its compute threads (default: onnxruntime's, every core)."""
    import onnxruntime

    device = torch.device(device)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    if threads:
        options.intra_op_num_threads = threads
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise InputError(f"onnxruntime {onnxruntime.__version__} here has no CUDA provider "
                             "(pip install onnxruntime-gpu), so the file runs on the CPU only")
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    try:
        session = onnxruntime.InferenceSession(data, options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types, one per status
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExportError(f"onnxruntime {onnxruntime.__version__} cannot run the exported "
                          f"file ({first}); another --opset may work") from None
    return session, dict(session.get_modelmeta().custom_metadata_map)


# The TorchScript archive's extra file holding frcnn's metadata (export/torchscript.py).
EXTRA_FILE = "frcnn.json"


def load_torchscript(data: bytes) -> tuple[torch.jit.ScriptModule, dict[str, str]]:
    """A TorchScript file ``frcnn export`` wrote and its metadata (CPU)."""
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():  # torch.jit says on every call that it is deprecated
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    return module.eval(), json.loads(extra[EXTRA_FILE] or "{}")
