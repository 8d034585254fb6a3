"""Does an exported file detect what the PyTorch model detects?

:func:`check_export` runs the model and the exported file on the same images (by default two
synthetic pictures of different sizes and aspect ratios, so both branches of the resize rule
and two anchor grids are exercised) and pairs their detections: the same number, each
exported detection matched to a PyTorch one of the same class. It reports the largest box and
score differences; :data:`BOX_TOLERANCE` and :data:`SCORE_TOLERANCE` decide agreement.

An INT8 file cannot meet those: rounding every activation to 8 bits moves boxes by a pixel
and scores by a few hundredths, and detections near the score threshold come and go.
:func:`check_int8` asks instead whether the file finds the same objects: every confident
detection (score at least :data:`CONFIDENT_SCORE`) of either side should have a detection of
the same class on the other side at IoU :data:`INT8_MATCH_IOU` or more (pooled over the
images: :data:`INT8_MIN_AGREEMENT`), the paired boxes should overlap closely on average
(:data:`INT8_MIN_MEAN_IOU`) and their scores stay close (:data:`INT8_MAX_MEAN_SCORE_DIFF`).
A file with broken weights finds other objects, or none, and fails all three.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

BOX_TOLERANCE = 0.01    # pixels
SCORE_TOLERANCE = 1e-3

# INT8 against fp32 (see the module doc).
CONFIDENT_SCORE = 0.5
INT8_MATCH_IOU = 0.5
INT8_MIN_AGREEMENT = 0.9
INT8_MIN_MEAN_IOU = 0.85
INT8_MAX_MEAN_SCORE_DIFF = 0.05

# Default check images: (height, width), one landscape, one portrait.
CHECK_SIZES = ((240, 320), (400, 300))

Detections = tuple[Tensor, Tensor, Tensor]  # boxes [D, 4], scores [D], labels [D]


@dataclass
class Agreement:
    """Exported vs PyTorch detections on one image."""

    image: str
    height: int
    width: int
    detections: int          # PyTorch's count
    exported: int            # the exported file's count
    unmatched: int           # PyTorch detections with no exported one of the same class
    max_box_diff: float      # pixels, over matched pairs (0 when there are none)
    max_score_diff: float

    @property
    def ok(self) -> bool:
        return (self.detections == self.exported and self.unmatched == 0
                and self.max_box_diff <= BOX_TOLERANCE
                and self.max_score_diff <= SCORE_TOLERANCE)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def compare(reference: Detections, exported: Detections, image: str = "",
            size: tuple[int, int] = (0, 0)) -> Agreement:
    """Pair each reference detection (best first) with the unused exported detection of the
    same class whose box is closest (largest coordinate difference); near-equal scores may
    come out in another order, so positions are not compared."""
    ref_boxes, ref_scores, ref_labels = (t.detach().cpu().double() for t in reference)
    exp_boxes, exp_scores, exp_labels = (torch.as_tensor(t).cpu().double() for t in exported)
    gaps = (ref_boxes[:, None] - exp_boxes[None]).abs().amax(dim=2)          # [n, m]
    gaps[ref_labels[:, None] != exp_labels[None]] = float("inf")
    box_diff = score_diff = 0.0
    unmatched = 0
    for i in range(len(ref_boxes)):
        j = int(gaps[i].argmin()) if gaps.shape[1] else 0
        if not gaps.shape[1] or not torch.isfinite(gaps[i, j]):
            unmatched += 1
            continue
        gaps[:, j] = float("inf")  # each exported detection pairs once
        box_diff = max(box_diff, float((ref_boxes[i] - exp_boxes[j]).abs().max()))
        score_diff = max(score_diff, float((ref_scores[i] - exp_scores[j]).abs()))
    return Agreement(image, size[0], size[1], len(ref_boxes), len(exp_boxes), unmatched,
                     box_diff, score_diff)


def check_images(paths: Sequence[str | os.PathLike] = ()) -> list[tuple[str, Tensor]]:
    """The images to check on: the given files, or two synthetic pictures (:data:`CHECK_SIZES`)
    of coloured shapes on a textured background. Each is ``(name, [3, H, W] float in 0..1)``."""
    if paths:
        from frcnn_cli.data.images import read_image

        return [(str(p), as_input(read_image(p))) for p in paths]
    from frcnn_cli.data.synth import SynthConfig, draw_image

    images = []
    for i, (h, w) in enumerate(CHECK_SIZES):
        pixels, _ = draw_image(SynthConfig(size=max(h, w), max_objects=5, empty_fraction=0.0),
                               np.random.default_rng(i))
        images.append((f"synthetic #{i + 1}", as_input(pixels[:h, :w])))
    return images


def as_input(pixels: np.ndarray) -> Tensor:
    """A decoded ``[H, W, 3]`` uint8 image as an exported file takes it: ``[3, H, W]`` float
    in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float() / 255.0


@torch.inference_mode()
def check_export(model: nn.Module, run_exported: Callable[[Tensor], Detections],
                 images: Sequence[tuple[str, Tensor]]) -> list[Agreement]:
    """Agreement of ``run_exported(image) -> (boxes, scores, labels)`` with ``model`` (eval
    mode, CPU) on each image."""
    return _against_model(model, run_exported, images, compare)


@dataclass
class Closeness:
    """INT8 (or any approximate) file vs the PyTorch model on one image, by objects."""

    image: str
    height: int
    width: int
    confident: int            # confident detections, PyTorch's and the file's counted apart
    paired: int               # of those, found by the other side (same class, IoU >= 0.5)
    pairs: int                # PyTorch's confident detections paired: the sums are over them
    iou_sum: float
    score_diff_sum: float
    max_score_diff: float


@dataclass
class Int8Agreement:
    """:class:`Closeness` on every checked image, and the verdict over all of them."""

    images: list[Closeness]

    def _total(self, key: str) -> float:
        return sum(getattr(c, key) for c in self.images)

    @property
    def confident(self) -> int:
        return int(self._total("confident"))

    @property
    def agreement(self) -> float:
        """Share of the confident detections the other side found too (1 when none)."""
        return self._total("paired") / self.confident if self.confident else 1.0

    @property
    def mean_iou(self) -> float:
        pairs = self._total("pairs")
        return self._total("iou_sum") / pairs if pairs else 1.0

    @property
    def mean_score_diff(self) -> float:
        pairs = self._total("pairs")
        return self._total("score_diff_sum") / pairs if pairs else 0.0

    @property
    def ok(self) -> bool:
        return (self.agreement >= INT8_MIN_AGREEMENT and self.mean_iou >= INT8_MIN_MEAN_IOU
                and self.mean_score_diff <= INT8_MAX_MEAN_SCORE_DIFF)

    def describe(self) -> str:
        """The three numbers against their tolerances, one line."""
        return (f"{self.agreement:.1%} of {self.confident} confident detections found by both "
                f"(>= {INT8_MIN_AGREEMENT:.0%}), mean IoU of pairs {self.mean_iou:.3f} "
                f"(>= {INT8_MIN_MEAN_IOU}), mean score difference {self.mean_score_diff:.3f} "
                f"(<= {INT8_MAX_MEAN_SCORE_DIFF})")

    def to_dict(self) -> dict:
        return {"agreement": self.agreement, "mean_iou": self.mean_iou,
                "mean_score_diff": self.mean_score_diff, "confident": self.confident,
                "ok": self.ok, "images": [asdict(c) for c in self.images]}


def _pair(a: Detections, b: Detections) -> tuple[int, int, list[tuple[float, float]]]:
    """Confident detections of ``a`` (best first), each paired with the unused detection of
    ``b`` of the same class that overlaps it most, if at IoU >= :data:`INT8_MATCH_IOU`:
    ``(confident, paired, [(iou, score difference) of each pair])``."""
    from torchvision.ops import box_iou

    boxes, scores, labels = a
    confident = scores >= CONFIDENT_SCORE
    if not confident.any():
        return 0, 0, []
    ious = box_iou(boxes[confident], b[0]) if len(b[0]) else torch.zeros(int(confident.sum()), 0)
    ious[labels[confident][:, None] != b[2][None]] = -1.0
    pairs = []
    for i, score in enumerate(scores[confident].tolist()):
        if ious.shape[1] == 0:
            break
        j = int(ious[i].argmax())
        if ious[i, j] < INT8_MATCH_IOU:
            continue
        pairs.append((float(ious[i, j]), abs(score - float(b[1][j]))))
        ious[:, j] = -1.0  # each detection pairs once
    return int(confident.sum()), len(pairs), pairs


def closeness(reference: Detections, exported: Detections, image: str = "",
              size: tuple[int, int] = (0, 0)) -> Closeness:
    """How far ``exported`` is from ``reference`` on one image, by objects (module doc)."""
    ref = tuple(torch.as_tensor(t).detach().cpu() for t in reference)
    exp = tuple(torch.as_tensor(t).detach().cpu() for t in exported)
    ref = (ref[0].float(), ref[1].float(), ref[2])
    exp = (exp[0].float(), exp[1].float(), exp[2])
    n_ref, found_ref, pairs = _pair(ref, exp)
    n_exp, found_exp, _ = _pair(exp, ref)
    diffs = [d for _, d in pairs]
    return Closeness(image, size[0], size[1], n_ref + n_exp, found_ref + found_exp, len(pairs),
                     sum(iou for iou, _ in pairs), sum(diffs), max(diffs, default=0.0))


@torch.inference_mode()
def check_int8(model: nn.Module, run_exported: Callable[[Tensor], Detections],
               images: Sequence[tuple[str, Tensor]]) -> Int8Agreement:
    """:func:`closeness` of ``run_exported(image)`` to ``model`` (eval mode, CPU) on each
    image, judged together."""
    return Int8Agreement(_against_model(model, run_exported, images, closeness))


def _against_model(model: nn.Module, run_exported: Callable[[Tensor], Detections],
                   images: Sequence[tuple[str, Tensor]], judge: Callable) -> list:
    """``judge(model's detections, run_exported(image), name, (H, W))`` on each image."""
    results = []
    for name, image in images:
        expected = model([image])[0]
        reference = (expected["boxes"], expected["scores"], expected["labels"])
        results.append(judge(reference, run_exported(image), name,
                             (image.shape[1], image.shape[2])))
    return results
