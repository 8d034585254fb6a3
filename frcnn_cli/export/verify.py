"""Does an exported file detect what the PyTorch model detects?

:func:`check_export` runs the model and the exported file on the same images (by default two
synthetic pictures of different sizes and aspect ratios, so both branches of the resize rule
and two anchor grids are exercised) and pairs their detections: the same number, each
exported detection matched to a PyTorch one of the same class. It reports the largest box and
score differences; :data:`BOX_TOLERANCE` and :data:`SCORE_TOLERANCE` decide agreement.
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

        return [(str(p), _to_tensor(read_image(p))) for p in paths]
    from frcnn_cli.data.synth import SynthConfig, draw_image

    images = []
    for i, (h, w) in enumerate(CHECK_SIZES):
        pixels, _ = draw_image(SynthConfig(size=max(h, w), max_objects=5, empty_fraction=0.0),
                               np.random.default_rng(i))
        images.append((f"synthetic #{i + 1}", _to_tensor(pixels[:h, :w])))
    return images


def _to_tensor(pixels: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float() / 255.0


@torch.inference_mode()
def check_export(model: nn.Module, run_exported: Callable[[Tensor], Detections],
                 images: Sequence[tuple[str, Tensor]]) -> list[Agreement]:
    """Agreement of ``run_exported(image) -> (boxes, scores, labels)`` with ``model`` (eval
    mode, CPU) on each image."""
    results = []
    for name, image in images:
        expected = model([image])[0]
        reference = (expected["boxes"], expected["scores"], expected["labels"])
        results.append(compare(reference, run_exported(image), name,
                               (image.shape[1], image.shape[2])))
    return results
