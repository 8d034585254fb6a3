"""Selective Search proposals (Uijlings et al., IJCV 2013): what Fast R-CNN was trained and
tested on, and the ~2 s per image CPU bottleneck that the RPN removes (the paper's Section 1).

    boxes = selective_search(read_image("a.jpg"), mode="fast")        # [N, 4], best first
    ann = open_dataset("val.json", "propose")
    found = selective_search_dataset(ann, workers=4)
    save_proposals(found.proposals, ann.images, "ss.pt", found.meta, ann.path)
    propose_selective_search("val.json", "ss.pt", workers=4)          # the same, frcnn propose

OpenCV's implementation (``cv2.ximgproc``, from opencv-contrib-python-headless) is used as it
is: ``fast`` and ``quality`` are its ``switchToSelectiveSearchFast`` / ``...Quality``
(the IJCV paper's two settings). Its rects are ``x, y, w, h`` in whole pixels, the bounding
rectangle of a region's pixels, so the continuous box is ``x, y, x + w, y + h``.

Order and determinism. OpenCV ranks the regions of each grouping hierarchy by
``level * rand()``, with C's ``rand()``, which no OpenCV seed reaches: two calls on the same
image give different orders. C's generator is seeded here with :data:`SEED` right before each
call, so the same image gives the same boxes in the same order in any process. Another thread
calling ``rand()`` meanwhile would reorder them: onnxruntime starts one when it is imported (it
draws at 0.5 s, 5.5 s, 14 s, 35 s, ... after the import, measured with 1.32). In a process
that has imported it (:data:`RAND_THREAD_MODULES`), the search runs in a spawned process of
its own, kept for the next image. The commands that search never import it. OpenCV runs
single-threaded (``data.images.opencv``); its threads change no result, only fork safety.

Scores. Selective Search has no score; proposal files need one per box, so the box at rank
``i`` (0 for the best) gets the reciprocal rank ``1 / (1 + i)``. It keeps the boxes in
OpenCV's order and means the same rank in every image; it is not a confidence.

Image size. Fast R-CNN ran Selective Search on the images at their own size, ~500 px on VOC.
Its time and memory grow quickly with the pixel count (its neighbour matrix is quadratic in
the number of initial segments), so an image whose longer side exceeds ``max_side``
(:data:`MAX_SIDE`, 500 px: VOC images are never shrunk) is shrunk to it first and the boxes
are mapped back to the image's pixels; ``max_side=None`` runs on the image as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import multiprocessing
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_cli.data.annotations import Annotations
from frcnn_cli.data.images import opencv, read_image
from frcnn_cli.errors import FrcnnError, InputError
from frcnn_cli.progress import SILENT, Reporter

METHOD = "selective-search"
MODES = ("fast", "quality")
MAX_PROPOSALS = 2000  # the paper's comparison: 2000 SS boxes against 300 RPN proposals
MAX_SIDE = 500        # Fast R-CNN's VOC images; larger ones are shrunk to it
SEED = 0              # C's rand(), which orders OpenCV's regions
RAND_THREAD_MODULES = ("onnxruntime",)  # imported, they run a thread that calls C's rand()
CONTRIB_WHEEL = "opencv-contrib-python-headless"


def ximgproc_cv2():
    """``cv2`` with its contrib modules, single-threaded.

    Raises FrcnnError with the command that restores them when the installed ``cv2`` is the
    plain build (reinstalling ``opencv-python-headless``, as an albumentations upgrade may,
    replaces the contrib build: both install the same ``cv2`` package).
    """
    cv2 = opencv()
    # A plain build installed over the contrib one leaves cv2/ximgproc/ (type stubs) behind:
    # cv2.ximgproc then imports as an empty namespace package, without segmentation.
    segmentation = getattr(getattr(cv2, "ximgproc", None), "segmentation", None)
    if not hasattr(segmentation, "createSelectiveSearchSegmentation"):
        raise FrcnnError("Selective Search needs OpenCV's contrib modules (cv2.ximgproc), "
                         "which the installed cv2 lacks; restore them with: "
                         f"{contrib_fix_command()}")
    return cv2


def contrib_fix_command() -> str:
    """The pip command that puts the contrib build of the installed OpenCV version back."""
    try:
        wheel = f"{CONTRIB_WHEEL}=={metadata.version('opencv-python-headless')}"
    except metadata.PackageNotFoundError:
        wheel = CONTRIB_WHEEL
    return (f"{shlex.quote(sys.executable)} -m pip install --force-reinstall --no-deps "
            f"{wheel}")


@functools.cache
def _c_library() -> ctypes.CDLL:
    return ctypes.CDLL("ucrtbase" if sys.platform == "win32" else ctypes.util.find_library("c"))


def _seed_c_rand(seed: int) -> None:
    """Seed C's ``rand()``, the generator OpenCV's Selective Search ranks regions with."""
    _c_library().srand(ctypes.c_uint(seed))


def _check_options(mode: str, max_proposals: int | None, max_side: int | None) -> None:
    if mode not in MODES:
        raise InputError(f"Selective Search mode must be one of {', '.join(MODES)}, "
                         f"got {mode!r}")
    if max_proposals is not None and max_proposals < 1:
        raise InputError(f"the number of proposals must be at least 1, got {max_proposals}")
    if max_side is not None and max_side < 1:
        raise InputError(f"the longest side to search at must be at least 1 pixel, "
                         f"got {max_side}")


def selective_search(image: np.ndarray, mode: str = "fast",
                     max_proposals: int | None = MAX_PROPOSALS,
                     max_side: int | None = MAX_SIDE) -> np.ndarray:
    """Selective Search boxes of one image, best first as OpenCV ranks them.

    ``image``: uint8 ``[H, W, 3]`` RGB (``read_image``). ``mode``: ``fast`` or ``quality``.
    ``max_proposals``: keep the best N (None: all). ``max_side``: shrink a larger image so its
    longer side is this many pixels first (None: never). Returns float32 ``[N, 4]`` x1 y1 x2 y2
    in the image's pixels, inside ``[0, W] x [0, H]``, no two alike, the same on every call.
    """
    _check_options(mode, max_proposals, max_side)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"Selective Search takes a uint8 [H, W, 3] RGB image, got "
                         f"{image.dtype} {list(image.shape)}")
    ximgproc_cv2()
    if any(name in sys.modules for name in RAND_THREAD_MODULES):
        return _quiet_process().submit(_search, image, mode, max_proposals, max_side).result()
    return _search(image, mode, max_proposals, max_side)


_quiet: tuple[int, ProcessPoolExecutor] | None = None


def _quiet_process() -> ProcessPoolExecutor:
    """One spawned process, this process's own (a forked child makes its own), where no
    other thread calls ``rand()``."""
    global _quiet
    if _quiet is None or _quiet[0] != os.getpid():
        _quiet = (os.getpid(), ProcessPoolExecutor(1, multiprocessing.get_context("spawn")))
    return _quiet[1]


def _search(image: np.ndarray, mode: str, max_proposals: int | None,
            max_side: int | None) -> np.ndarray:
    """:func:`selective_search` itself, in this process."""
    cv2 = ximgproc_cv2()
    height, width = image.shape[:2]
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(bgr)
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    _seed_c_rand(SEED)
    rects = np.asarray(search.process(), dtype=np.int64).reshape(-1, 4)
    # OpenCV drops repeated rects itself; keep the guarantee whatever its version does.
    _, first = np.unique(rects, axis=0, return_index=True)
    rects = rects[np.sort(first)][:max_proposals]
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    searched_h, searched_w = bgr.shape[:2]
    boxes = boxes * np.array([width / searched_w, height / searched_h] * 2)
    return np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)


def rank_scores(count: int) -> np.ndarray:
    """The score of each of ``count`` boxes ranked best first: ``1 / (1 + rank)``, float32."""
    return (1.0 / np.arange(1, count + 1, dtype=np.float64)).astype(np.float32)


@dataclass
class SelectiveSearchProposals:
    """Selective Search over a dataset, as :func:`~frcnn_cli.proposals.files.save_proposals`
    takes it.

    ``proposals``: ``{image_id: (boxes float32 [P, 4], scores float32 [P])}`` (torch tensors,
    boxes in the file's pixels, best first, scores the reciprocal rank); ``image_ids``: in
    dataset order; ``meta``: ``method``, ``mode``, ``max_proposals``, ``max_side``,
    ``seconds_per_image`` (mean), ``score``, ``seed``, ``opencv``, ``annotations``,
    ``workers``; ``seconds``: each image's search time, in dataset order.
    """

    proposals: dict[int, tuple[Any, Any]]
    image_ids: list[int]
    meta: dict[str, Any]
    seconds: list[float] = field(default_factory=list)


def _search_file(job: tuple[Path, str, int | None, int | None]) -> tuple[np.ndarray, float]:
    """Decode one image and search it; the search alone is timed. Runs in the workers."""
    path, mode, max_proposals, max_side = job
    image = read_image(path)
    start = time.perf_counter()
    boxes = selective_search(image, mode, max_proposals, max_side)
    return boxes, time.perf_counter() - start


def selective_search_dataset(annotations: Annotations, mode: str = "fast",
                             max_proposals: int | None = MAX_PROPOSALS,
                             max_side: int | None = MAX_SIDE, workers: int = 1,
                             reporter: Reporter = SILENT) -> SelectiveSearchProposals:
    """Selective Search on every image of an ``Annotations``, in ``workers`` processes.

    The result does not depend on ``workers``. Seconds per image are each image's search time
    (decoding excluded), the same measure in one process or many. Raises DataError naming an
    image that cannot be decoded.
    """
    import torch  # here, not at the top: the workers need only numpy, Pillow and OpenCV

    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    _check_options(mode, max_proposals, max_side)
    cv2 = ximgproc_cv2()  # fail before starting any worker
    jobs = [(annotations.image_path(im), mode, max_proposals, max_side)
            for im in annotations.images]
    results: list[tuple[np.ndarray, float]] = []
    with reporter.task("selective search", total=len(jobs)) as task:
        if workers == 1 or len(jobs) < 2:
            done = map(_search_file, jobs)
            pool = None
        else:
            # spawn, not fork: the caller may hold torch's or OpenMP's threads, which a forked
            # child inherits locked; spawned workers import only numpy, Pillow and OpenCV.
            pool = ProcessPoolExecutor(min(workers, len(jobs)),
                                       mp_context=multiprocessing.get_context("spawn"))
            done = pool.map(_search_file, jobs)
        try:
            for boxes, seconds in done:
                results.append((boxes, seconds))
                task.update(advance=1, seconds_per_image=round(seconds, 3))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    image_ids = [im["id"] for im in annotations.images]
    proposals = {i: (torch.from_numpy(boxes), torch.from_numpy(rank_scores(len(boxes))))
                 for i, (boxes, _) in zip(image_ids, results, strict=True)}
    seconds = [s for _, s in results]
    meta = {"method": METHOD, "mode": mode, "max_proposals": max_proposals,
            "max_side": max_side,
            "seconds_per_image": float(np.mean(seconds)) if seconds else 0.0,
            "score": "reciprocal rank 1 / (1 + rank), best first", "seed": SEED,
            "opencv": cv2.__version__,
            "annotations": str(annotations.path) if annotations.path is not None else None,
            "workers": workers}
    return SelectiveSearchProposals(proposals, image_ids, meta, seconds)


def search_settings(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a detector trained on a proposals file with this ``meta`` needs to make its own
    proposals at test time: ``{"method", "mode", "max_proposals", "max_side"}`` for Selective
    Search (stored as the checkpoint's ``meta["proposals"]``), None for an RPN's file."""
    if not meta or meta.get("method") != METHOD:
        return None
    return {"method": METHOD, "mode": meta.get("mode", "fast"),
            "max_proposals": meta.get("max_proposals", MAX_PROPOSALS),
            "max_side": meta.get("max_side", MAX_SIDE)}


def propose_selective_search(data: str | os.PathLike, out: str | os.PathLike,
                             mode: str = "fast", max_proposals: int | None = MAX_PROPOSALS,
                             max_side: int | None = MAX_SIDE, workers: int = 1,
                             reporter: Reporter = SILENT) -> Path:
    """``frcnn propose --method selective-search``: Selective Search on every image of the
    dataset ``data``, written to the proposals file ``out`` (the format of an RPN's, see
    :mod:`frcnn_cli.proposals.files`), its meta that of :func:`selective_search_dataset`
    with the objects covered at IoU 0.5 and 0.7 (``coverage``, logged)."""
    from frcnn_cli.data.usable import open_dataset
    from frcnn_cli.files import prepare_output_file
    from frcnn_cli.outputs import PROPOSALS
    from frcnn_cli.proposals.files import save_proposals
    from frcnn_cli.proposals.recall import proposal_coverage

    ann = open_dataset(data, "propose")
    prepare_output_file(out, PROPOSALS, itertools.chain([data], ann.image_files()),
                        "proposals file")
    found = selective_search_dataset(ann, mode, max_proposals, max_side, workers, reporter)
    coverage = proposal_coverage([found.proposals[i][0] for i in found.image_ids], ann)
    return save_proposals(found.proposals, ann.images, out, {**found.meta, "coverage": coverage},
                          ann.path)
