"""From a list of images of any size to one normalised, padded batch, and boxes back again.

The model owns its geometry, as torchvision's ``GeneralizedRCNN`` does: every caller (the
training loader, eval, propose, predict, the Python API, the exported files) hands it images
at their own size, and gets boxes, proposals and RoIs back in those images' pixels. The paper
rescales each image so its shorter side is 600 px, the longer at most 1000
(:func:`frcnn_cli.geometry.resized_shape`); in training, ``input.train_scales`` draws the
shorter side per image. Then: subtract the mean, divide by the std, and pad with zeros (the
mean colour) at the bottom and right to a common size divisible by ``input.size_divisible``.

Resizing is bilinear with antialiasing (a 4000 px photo shrunk to 1000 px keeps its small
objects instead of aliasing them away). Images may be float in 0..1 or uint8 in 0..255 (then
divided by 255 here, exactly as a caller would); a large uint8 image on the CPU is converted
and resized in bands of rows, which gives bit for bit the result of one call (the resize is
separable: rows first, then columns) without a float copy of the whole photo.

``input.resize: torchvision`` resizes as torchvision's ``GeneralizedRCNNTransform`` does, for
models that must give torchvision's detections: normalise first, then bilinear without
antialiasing to ``floor(side * scale)`` pixels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn_cli.boxes import clip_boxes
from frcnn_cli.config import InputConfig
from frcnn_cli.geometry import resized_shape
from frcnn_cli.model.tracing import tracing

# Images above this many pixels are converted and resized in bands (CPU, uint8 input).
BANDED_PIXELS = 4_000_000
BAND_ROWS = 256


class ImageBatch(NamedTuple):
    tensors: Tensor      # [B, 3, H, W] normalised and padded
    image_sizes: Tensor  # [B, 2] int64: (height, width) of each resized image inside the pad
    scales: Tensor       # [B, 2] float: (sy, sx) = resized size / input size
    input_sizes: Tensor  # [B, 2] int64: (height, width) of the input images


def _interpolate(image: Tensor, size) -> Tensor:
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                         antialias=True)[0]


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``image`` [3, H, W] (float in 0..1, or uint8) resized to ``size`` (height, width), as
    float in 0..1. See the module docstring for the banded path."""
    h, w = image.shape[-2:]
    if image.dtype == torch.uint8 and not tracing() and image.device.type == "cpu" \
            and h * w > BANDED_PIXELS:
        rows = []
        for top in range(0, h, BAND_ROWS):  # one band in float at a time
            band = image[:, top:top + BAND_ROWS].float() / 255
            rows.append(_interpolate(band, (band.shape[1], size[1])))
        return _interpolate(torch.cat(rows, dim=1), size)
    if image.dtype == torch.uint8:
        image = image.float() / 255
    if tracing() or tuple(size) != (h, w):  # resizing to the same size changes nothing
        image = _interpolate(image, size)
    return image


class ImageTransform(nn.Module):
    """Resize, normalise and batch images; scale boxes in and out. Holds no weights."""

    def __init__(self, cfg: InputConfig, mean: tuple[float, ...], std: tuple[float, ...],
                 channels_last: bool = False) -> None:
        super().__init__()
        self.min_size, self.max_size = cfg.min_size, cfg.max_size
        self.train_scales = list(cfg.train_scales or [])
        self.size_divisible = cfg.size_divisible
        self.torchvision_resize = cfg.resize == "torchvision"
        self.channels_last = channels_last
        self.register_buffer("mean", torch.tensor(cfg.pixel_mean or mean).reshape(3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.pixel_std or std).reshape(3, 1, 1),
                             persistent=False)

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an input image is brought to: the shorter side to ``input.min_size`` (in
        training, one of ``input.train_scales`` drawn from torch's generator, so a resumed
        run draws what the uninterrupted one did), the longer at most ``input.max_size``."""
        if tracing():  # the same rule, with symbolic sizes (export with dynamic H, W)
            scale = torch.sym_min(self.min_size / torch.sym_min(height, width),
                                  self.max_size / torch.sym_max(height, width))
            whole = math.floor if self.torchvision_resize else round
            return (torch.sym_max(1, whole(height * scale)),
                    torch.sym_max(1, whole(width * scale)))
        min_size, max_size = self.min_size, self.max_size
        if self.training and self.train_scales:
            min_size = self.train_scales[int(torch.randint(len(self.train_scales), (1,)))]
            max_size = max(max_size, min_size)
        return resized_shape(height, width, min_size, max_size, floor=self.torchvision_resize)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                proposals: list[Tensor] | None = None
                ) -> tuple[ImageBatch, list[dict[str, Tensor]] | None, list[Tensor] | None]:
        """images: list of [3, H_i, W_i], float in 0..1 or uint8. Returns the batch, and the
        targets' boxes (and ``ignore`` regions) and the proposals scaled to the resized images
        (new lists; inputs untouched)."""
        resized, sizes = [], []
        for image in images:
            h, w = image.shape[-2:]
            nh, nw = self.target_size(h, w)
            if self.torchvision_resize:
                resized.append(self.normalise_then_resize(image, (nh, nw)))
            else:
                resized.append((resize_image(image, (nh, nw)) - self.mean) / self.std)
            sizes.append((h, w, nh, nw))
        d = self.size_divisible
        pad_h = -(-max(s[2] for s in sizes) // d) * d  # rounded up to a multiple of d
        pad_w = -(-max(s[3] for s in sizes) // d) * d
        tensors = torch.stack([F.pad(im, (0, pad_w - im.shape[-1], 0, pad_h - im.shape[-2]))
                               for im in resized])
        if self.channels_last and (not self.training or tensors.is_cuda):
            # Channels-last convolutions: faster inference on CPUs and GPUs, but about twice
            # as slow a backward pass on a CPU (benchmarks/README.md), so CPU training runs
            # NCHW. The weights stay NCHW; the convolutions follow their input's layout.
            tensors = tensors.contiguous(memory_format=torch.channels_last)
        device = tensors.device
        info = torch.tensor(sizes, device=device)
        batch = ImageBatch(tensors, info[:, 2:], info[:, 2:] / info[:, :2], info[:, :2])

        if targets is not None:
            targets = [{**t, **{k: self.scale_boxes(t[k].to(torch.float32), batch, i)
                                for k in ("boxes", "ignore") if k in t}}
                       for i, t in enumerate(targets)]
        if proposals is not None:
            proposals = [self.scale_boxes(p.to(torch.float32), batch, i)
                         for i, p in enumerate(proposals)]
        return batch, targets, proposals

    def normalise_then_resize(self, image: Tensor, size: tuple[int, int]) -> Tensor:
        """torchvision's order: normalise, then bilinear without antialiasing."""
        if image.dtype == torch.uint8:
            image = image.float() / 255
        image = (image - self.mean) / self.std
        if tracing() or tuple(size) != tuple(image.shape[-2:]):
            image = F.interpolate(image[None], size=size, mode="bilinear",
                                  align_corners=False)[0]
        return image

    @staticmethod
    def scale_boxes(boxes: Tensor, batch: ImageBatch, i: int) -> Tensor:
        """Boxes [N, 4] in input image ``i``'s pixels -> resized image pixels."""
        sy, sx = batch.scales[i, 0], batch.scales[i, 1]
        return boxes * torch.stack([sx, sy, sx, sy]).to(boxes.dtype)

    @staticmethod
    def to_input(boxes: Tensor, batch: ImageBatch, i: int) -> Tensor:
        """Boxes [N, 4] in resized image ``i``'s pixels -> input pixels, clipped to it."""
        sy, sx = batch.scales[i, 0], batch.scales[i, 1]
        boxes = boxes / torch.stack([sx, sy, sx, sy]).to(boxes.dtype)
        return clip_boxes(boxes, batch.input_sizes[i, 0], batch.input_sizes[i, 1])
