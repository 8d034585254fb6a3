"""The kinds of file frcnn writes, and how each is recognised, so that a command replaces
only an earlier output of its own kind (the rule is :func:`frcnn_cli.files.refuse_unless`).

Recognised by content, never by name, and by a mark frcnn puts in what it writes, so that a
file of the same shape from another tool (a COCO results list, say) is never taken for one:

- JSON results (``eval --json``, ``eval --proposals``, ``eval --compare-proposals``,
  ``data stats --json``, ``anchors --json``, ``benchmark --json``, a run's ``eval.json``,
  ``errors.json`` and ``confusion.json`` of ``eval --analyze``): a JSON object whose first
  key is ``"frcnn": {"kind": KIND}`` (:func:`result_marker`);
- detections (``eval --save-detections``, ``predict``'s ``detections.json``): a JSON list of
  ``{image_id, category_id, bbox, score}`` whose first entry starts with that mark (the
  results format allows extra keys); an empty list holds nothing to lose;
- datasets: the JSON's first key, ``"frcnn": {"written_by": COMMAND}``, names the command
  that wrote it, and only that command replaces it (``data split`` never replaces a set that
  ``data convert`` made, nor one made by hand);
- proposals (``propose``): a PyTorch file whose ``format`` is ``frcnn-proposals``;
- exported models (``export``), one kind per format: an ONNX file carrying frcnn's metadata,
  a TorchScript file with ``frcnn.json``, an SVD-compressed checkpoint (``meta.svd_of``);
  ``--format torchscript`` never replaces an ONNX file, nor the reverse;
- pictures (plots of ``eval --plot``, ``eval --analyze`` and ``data stats --plot``, drawings
  of ``predict`` and of ``eval --analyze``): the image's Software tag (PNG text or EXIF) says
  frcnn drew it, and which kind of drawing it is.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The software tag of the pictures frcnn draws (PNG text or EXIF 0x0131 "Software").
PLOT_SOFTWARE = "frcnn plot"
DRAWING_SOFTWARE = "frcnn predict"
ERROR_DRAWING_SOFTWARE = "frcnn error analysis"
EXIF_SOFTWARE = 0x0131

# JSON files larger than this are not parsed to be described (the detections of a COCO-sized
# evaluation take about 50 MB).
_JSON_LIMIT = 256 << 20
_HEAD = 4096
_DATASET_MARK = re.compile(rb'^\s*\{\s*"frcnn"\s*:\s*\{\s*"written_by"\s*:\s*"([^"\\]+)"')
_RESULT_MARK = re.compile(rb'^\s*\[?\s*\{\s*"frcnn"\s*:\s*\{\s*"kind"\s*:\s*"([^"\\]+)"')
_EMPTY_LIST = re.compile(rb'^\s*\[\s*\]\s*$')

# The format tags of frcnn's PyTorch files.
CHECKPOINT_FORMAT = "frcnn-checkpoint"
PROPOSALS_FORMAT = "frcnn-proposals"


@dataclass(frozen=True)
class OutputKind:
    """A kind of file a command writes: ``name`` for messages, ``recognise(path)`` true for
    an existing file of the kind (one this command may replace)."""

    name: str
    recognise: Callable[[Path], bool]


def dataset_marker(command: str) -> dict[str, Any]:
    """The first entry of a dataset ``command`` writes (``data convert``, ``data split``, ...)."""
    return {"frcnn": {"written_by": command}}


def dataset_kind(command: str) -> OutputKind:
    """A dataset written by ``command`` (see :func:`dataset_marker`)."""
    return OutputKind(f"dataset written by frcnn {command}",
                      lambda path: _dataset_writer(path) == command)


def _dataset_writer(path: Path) -> str | None:
    return _head_match(path, _DATASET_MARK)


def result_marker(kind: OutputKind) -> dict[str, Any]:
    """The first entry of a JSON result of ``kind`` (and of a detections list's first
    detection): ``{"frcnn": {"kind": NAME}}``."""
    return {"frcnn": {"kind": kind.name}}


def _marked(name: str) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        return _head_mark(path) == name
    return recognise


def _head_mark(path: Path) -> str | None:
    return _head_match(path, _RESULT_MARK)


def _head_match(path: Path, mark: re.Pattern[bytes]) -> str | None:
    """The name ``mark`` finds at the start of the file (its first :data:`_HEAD` bytes)."""
    try:
        with open(path, "rb") as f:
            found = mark.match(f.read(_HEAD))
    except OSError:
        return None
    return found.group(1).decode("utf-8", "replace") if found else None


def _json(path: Path) -> Any:
    """The parsed JSON of ``path``, or None when it is not JSON (or too large to look at)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    if stat.st_size > _JSON_LIMIT:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_detections(path: Path) -> bool:
    """A detections list frcnn wrote (its first entry marked), or an empty list."""
    if _head_mark(path) == DETECTIONS_NAME:
        return True
    try:
        with open(path, "rb") as f:
            return path.stat().st_size < _HEAD and bool(_EMPTY_LIST.match(f.read(_HEAD)))
    except OSError:
        return False


def _torch_dict(path: Path) -> dict[str, Any] | None:
    """A PyTorch zip file's dict, tensors memory-mapped (nothing large is read), or None."""
    if not zipfile.is_zipfile(path):
        return None
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file, unsafe, truncated: not ours in any case
        return None
    return obj if isinstance(obj, dict) else None


def _is_proposals(path: Path) -> bool:
    obj = _torch_dict(path)
    return obj is not None and obj.get("format") == PROPOSALS_FORMAT


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive ``frcnn export`` wrote (it carries ``extra/frcnn.json``)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("extra/frcnn.json") for name in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _is_svd_checkpoint(path: Path) -> bool:
    """A checkpoint ``frcnn export --svd`` wrote (``meta.svd_of``)."""
    return _svd_compressed(_torch_dict(path))


def _svd_compressed(obj: dict[str, Any] | None) -> bool:
    return obj is not None and isinstance(obj.get("meta"), dict) and "svd_of" in obj["meta"]


def _is_onnx(path: Path) -> bool:
    """An ONNX file ``frcnn export`` wrote: a protobuf ModelProto whose metadata_props (field
    14, after the graph, at the end) hold ``frcnn_version``."""
    try:
        with open(path, "rb") as f:
            if f.read(1) != b"\x08":  # field 1, ir_version
                return False
            f.seek(max(0, path.stat().st_size - (1 << 20)))
            return b"frcnn_version" in f.read()
    except OSError:
        return False


def _drawn_by(software: str) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        return picture_software(path) == software
    return recognise


def picture_software(path: Path) -> str | None:
    """The Software tag of an image file (PNG text or EXIF), None if none or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            text = getattr(im, "text", None) or {}
            return text.get("Software") or im.getexif().get(EXIF_SOFTWARE)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def drawing_metadata(fmt: str, software: str = DRAWING_SOFTWARE) -> dict[str, Any]:
    """``Image.save`` arguments that tag a drawing (EXIF Software): of ``predict`` by
    default, of the error analysis with :data:`ERROR_DRAWING_SOFTWARE`."""
    from PIL import Image

    exif = Image.Exif()
    exif[EXIF_SOFTWARE] = software
    return {"exif": exif} if fmt in ("JPEG", "PNG", "TIFF", "WEBP") else {}


def _result_kind(name: str) -> OutputKind:
    return OutputKind(name, _marked(name))


DETECTIONS_NAME = "detections file"
EVAL_RESULT = _result_kind("eval result")
RECALL_RESULT = _result_kind("proposal recall result")
PROPOSAL_COMPARISON = _result_kind("proposal comparison")
DATA_STATS = _result_kind("data stats result")
ANCHORS = _result_kind("anchors result")
BENCHMARK = _result_kind("benchmark result")
DETECTIONS = OutputKind(DETECTIONS_NAME, _is_detections)
PROPOSALS = OutputKind("proposals file", _is_proposals)
ONNX_EXPORT = OutputKind("ONNX export", _is_onnx)
TORCHSCRIPT_EXPORT = OutputKind("TorchScript export", _is_torchscript)
SVD_CHECKPOINT = OutputKind("checkpoint compressed by SVD", _is_svd_checkpoint)
PLOT = OutputKind("plot", _drawn_by(PLOT_SOFTWARE))
DRAWING = OutputKind("drawing", _drawn_by(DRAWING_SOFTWARE))
ERRORS_RESULT = _result_kind("error analysis result")
CONFUSION_RESULT = _result_kind("confusion matrix")
ERROR_DRAWING = OutputKind("error analysis drawing", _drawn_by(ERROR_DRAWING_SOFTWARE))

# ``frcnn export --format F`` writes EXPORT_KINDS[F]
EXPORT_KINDS = {"onnx": ONNX_EXPORT, "torchscript": TORCHSCRIPT_EXPORT,
                "checkpoint": SVD_CHECKPOINT}

_KINDS = (EVAL_RESULT, RECALL_RESULT, PROPOSAL_COMPARISON, DETECTIONS, DATA_STATS, ANCHORS,
          BENCHMARK, PROPOSALS, ONNX_EXPORT, TORCHSCRIPT_EXPORT, SVD_CHECKPOINT, PLOT, DRAWING,
          ERRORS_RESULT, CONFUSION_RESULT, ERROR_DRAWING)


def with_article(name: str) -> str:
    """``name`` after "a" or "an"."""
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def describe(path: Path) -> str:
    """What an existing file holds, in a few words: "a checkpoint", "a dataset (COCO JSON)",
    "an image", "an eval result", ... or "a file of unknown kind"."""
    writer = _dataset_writer(path)
    if writer is not None:
        return f"a dataset written by frcnn {writer}"
    obj = _torch_dict(path)
    if obj is not None and obj.get("format") == CHECKPOINT_FORMAT and not _svd_compressed(obj):
        return "a checkpoint"
    for kind in _KINDS:
        if kind.recognise(path):
            return with_article(kind.name)
    if obj is not None or zipfile.is_zipfile(path):
        return "a PyTorch file"
    if picture_software(path) is not None or _is_image(path):
        return "an image"
    data = _json(path)
    if isinstance(data, dict) and "images" in data:
        return "a dataset (COCO JSON)"
    if data is not None:
        return "a JSON file"
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD)
    except OSError:
        head = b"?"
    if not head:
        return "an empty file"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON file"
    return "a file of unknown kind"


def _is_image(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False
