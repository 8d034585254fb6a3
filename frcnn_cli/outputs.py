"""The kinds of file frcnn writes, and how each is recognised, so that a command replaces
only an earlier output of its own kind (the rule is :func:`frcnn_cli.files.refuse_unless`).

Recognised by content, never by name:

- JSON results (``eval --json``, ``eval --proposals``, ``eval --compare-proposals``,
  ``data stats --json``, ``anchors --json``, ``benchmark --json``, ``errors.json`` and
  ``confusion.json`` of ``eval --analyze``): a JSON object with the result's own keys;
- detections (``eval --save-detections``, ``predict``'s ``detections.json``): a JSON list of
  ``{image_id, category_id, bbox, score}``;
- datasets: the JSON's first key, ``"frcnn": {"written_by": COMMAND}``, names the command
  that wrote it, and only that command replaces it (``data split`` never replaces a set that
  ``data convert`` made, nor one made by hand);
- proposals (``propose``): a PyTorch file whose ``format`` is ``frcnn-proposals``;
- exported models (``export``): an ONNX file carrying frcnn's metadata, a TorchScript file
  with ``frcnn.json``, or an SVD-compressed checkpoint (``meta.svd_of``);
- pictures (plots of ``eval --plot``, ``eval --analyze`` and ``data stats --plot``, drawings
  of ``predict`` and of ``eval --analyze``): the image's Software tag (PNG text or EXIF) says
  frcnn drew it, and which kind of drawing it is.
"""

from __future__ import annotations

import functools
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

# JSON files larger than this are not parsed to be recognised (the detections of a COCO-sized
# evaluation take about 50 MB).
_JSON_LIMIT = 256 << 20
_HEAD = 4096
_DATASET_MARK = re.compile(rb'^\s*\{\s*"frcnn"\s*:\s*\{\s*"written_by"\s*:\s*"([^"\\]+)"')


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
    try:
        with open(path, "rb") as f:
            found = _DATASET_MARK.match(f.read(_HEAD))
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
    return _parsed(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _parsed(path: str, mtime_ns: int, size: int) -> Any:
    """One parse per version of a file, whichever kinds look at it (read only)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _object_with(*keys: str) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        data = _json(path)
        return isinstance(data, dict) and all(k in data for k in keys)
    return recognise


def _is_detections(path: Path) -> bool:
    data = _json(path)
    return isinstance(data, list) and all(
        isinstance(d, dict) and {"image_id", "category_id", "bbox", "score"} <= d.keys()
        for d in data)


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
    from frcnn_cli.checkpoint import PROPOSALS_FORMAT

    obj = _torch_dict(path)
    return obj is not None and obj.get("format") == PROPOSALS_FORMAT


def _is_export(path: Path) -> bool:
    """An ONNX or TorchScript file ``frcnn export`` wrote, or its SVD checkpoint."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                if any(name.endswith("extra/frcnn.json") for name in z.namelist()):
                    return True
        except (OSError, zipfile.BadZipFile):
            return False
        obj = _torch_dict(path)
        return obj is not None and isinstance(obj.get("meta"), dict) and "svd_of" in obj["meta"]
    # ONNX: a protobuf ModelProto; its metadata_props (field 14) follow the graph, at the end
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


EVAL_RESULT = OutputKind("eval result", _object_with("metric", "mAP", "per_class"))
RECALL_RESULT = OutputKind("proposal recall result",
                           _object_with("top_n", "recall", "average_recall"))
PROPOSAL_COMPARISON = OutputKind("proposal comparison",
                                 _object_with("num_images", "num_objects", "sources"))
DETECTIONS = OutputKind("detections file", _is_detections)
DATA_STATS = OutputKind("data stats result", _object_with("images", "objects", "distributions"))
ANCHORS = OutputKind("anchors result", _object_with("stride", "base_size", "base_anchors"))
BENCHMARK = OutputKind("benchmark result", _object_with("device", "precision", "models"))
PROPOSALS = OutputKind("proposals file", _is_proposals)
EXPORT = OutputKind("exported model", _is_export)
PLOT = OutputKind("plot", _drawn_by(PLOT_SOFTWARE))
DRAWING = OutputKind("drawing", _drawn_by(DRAWING_SOFTWARE))
ERRORS_RESULT = OutputKind("error analysis result",
                           _object_with("ap50", "dAP", "false_pos", "false_neg"))
CONFUSION_RESULT = OutputKind("confusion matrix", _object_with("classes", "matrix",
                                                               "score_thresh"))
ERROR_DRAWING = OutputKind("error analysis drawing", _drawn_by(ERROR_DRAWING_SOFTWARE))

_KINDS = (EVAL_RESULT, RECALL_RESULT, PROPOSAL_COMPARISON, DETECTIONS, DATA_STATS, ANCHORS,
          BENCHMARK, PROPOSALS, EXPORT, PLOT, DRAWING, ERRORS_RESULT, CONFUSION_RESULT,
          ERROR_DRAWING)


def describe(path: Path) -> str:
    """What an existing file holds, in a few words: "a checkpoint", "a dataset (COCO JSON)",
    "an image", "an eval result", ... or "a file of unknown kind"."""
    writer = _dataset_writer(path)
    if writer is not None:
        return f"a dataset written by frcnn {writer}"
    obj = _torch_dict(path)
    if obj is not None and obj.get("format") == "frcnn-checkpoint":
        return "a checkpoint"
    for kind in _KINDS:
        if kind.recognise(path):
            return f"{'an' if kind.name[0] in 'aeiou' else 'a'} {kind.name}"
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
