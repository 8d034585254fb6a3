"""From a list of images of any size to one normalised, padded batch, and boxes back again.

The paper rescales each image so its shorter side is 600 px, the longer at most 1000
(:func:`frcnn_cli.geometry.resize_scale`). The rule is idempotent, so images the data loader
already resized pass through untouched; raw images (``frcnn predict``, the Python API) are
resized here. Then: subtract the mean, divide by the std, and pad with zeros (the mean
colour) at the bottom and right to a common size divisible by ``input.size_divisible``.
"""

from __future__ import annotations

import random
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn_cli.config import InputConfig
from frcnn_cli.geometry import is_resized, resized_shape
from frcnn_cli.model.box_coder import clip_boxes, tracing


class ImageBatch(NamedTuple):
    tensors: Tensor      # [B, 3, H, W] normalised and padded
    image_sizes: Tensor  # [B, 2] int64: (height, width) of each resized image inside the pad
    scales: Tensor       # [B, 2] float: (sy, sx) = resized size / input size
    input_sizes: Tensor  # [B, 2] int64: (height, width) of the input images


class ImageTransform(nn.Module):
    """Resize, normalise and batch images; scale boxes in and out. Holds no weights."""

    def __init__(self, cfg: InputConfig, mean: tuple[float, ...], std: tuple[float, ...],
                 channels_last: bool = False) -> None:
        super().__init__()
        self.min_size, self.max_size = cfg.min_size, cfg.max_size
        self.train_scales = list(cfg.train_scales or [])
        self.size_divisible = cfg.size_divisible
        self.channels_last = channels_last
        self.register_buffer("mean", torch.tensor(cfg.pixel_mean or mean).reshape(3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.pixel_std or std).reshape(3, 1, 1),
                             persistent=False)

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """Size an input image is brought to: unchanged if already at an allowed scale (the
        test scale; in training, any of ``input.train_scales``), else resized."""
        if tracing():  # the same rule, with symbolic sizes (export with dynamic H, W)
            scale = torch.sym_min(self.min_size / torch.sym_min(height, width),
                                  self.max_size / torch.sym_max(height, width))
            return (torch.sym_max(1, round(height * scale)),
                    torch.sym_max(1, round(width * scale)))
        scales = self.train_scales if self.training and self.train_scales else [self.min_size]
        if any(is_resized(height, width, s, self.max_size) for s in scales):
            return height, width
        return resized_shape(height, width, random.choice(scales), self.max_size)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                proposals: list[Tensor] | None = None
                ) -> tuple[ImageBatch, list[dict[str, Tensor]] | None, list[Tensor] | None]:
        """images: list of [3, H_i, W_i] float in 0..1. Returns the batch, and the targets'
        boxes and the proposals scaled to the resized images (new lists; inputs untouched)."""
        resized, sizes = [], []
        for image in images:
            h, w = image.shape[-2:]
            nh, nw = self.target_size(h, w)
            if tracing() or (nh, nw) != (h, w):  # resizing to the same size changes nothing
                image = F.interpolate(image[None], size=(nh, nw), mode="bilinear",
                                      align_corners=False)[0]
            resized.append((image - self.mean) / self.std)
            sizes.append((h, w, nh, nw))
        d = self.size_divisible
        pad_h = -(-max(s[2] for s in sizes) // d) * d  # rounded up to a multiple of d
        pad_w = -(-max(s[3] for s in sizes) // d) * d
        tensors = torch.stack([F.pad(im, (0, pad_w - im.shape[-1], 0, pad_h - im.shape[-2]))
                               for im in resized])
        if self.channels_last:
            tensors = tensors.contiguous(memory_format=torch.channels_last)
        device = tensors.device
        info = torch.tensor(sizes, device=device)
        batch = ImageBatch(tensors, info[:, 2:], info[:, 2:] / info[:, :2], info[:, :2])

        if targets is not None:
            targets = [{**t, "boxes": self.scale_boxes(t["boxes"].to(torch.float32), batch, i)}
                       for i, t in enumerate(targets)]
        if proposals is not None:
            proposals = [self.scale_boxes(p.to(torch.float32), batch, i)
                         for i, p in enumerate(proposals)]
        return batch, targets, proposals

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
        return clip_boxes(boxes[None], batch.input_sizes[i:i + 1])[0]
