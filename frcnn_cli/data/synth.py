"""A synthetic detection set of coloured shapes, for demos, tests and quick experiments.

Each image has a textured, noisy background and 0 to ``max_objects`` shapes of up to six
classes (circle, square, triangle, cross, diamond, star), with sides from 8 % to 50 % of the
image, random colours that stand out from the background and from each other, overlapping one
another. Later shapes are drawn over earlier ones, but a placement is refused if it would hide
more than 30 % of a shape already there or if two boxes would overlap at IoU above 0.3 (the
test-time NMS threshold), so every object stays recognisable and findable. A box is the
shape's full extent in pixels, occluded parts included, exactly as rasterised.

Large images with many small objects, for tiling (``frcnn data tile``), come from the same
drawing with pixel sizes instead of fractions: ``--size 2000 --objects 150 --min-object 12
--max-object 40``. Each shape is drawn and checked in its own small window of the image, so
the cost grows with the objects, not with the image's area times the objects.

Generation is deterministic: image ``i`` of a split draws from its own random stream seeded by
``(seed, split, i)``, so the same seed gives byte-identical JSON (and pixels) on any machine
with the same OpenCV, in one process or many.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_cli.data.annotations import Annotations, save_annotations
from frcnn_cli.data.images import opencv
from frcnn_cli.errors import InputError
from frcnn_cli.files import prepare_output_dir
from frcnn_cli.progress import SILENT, Reporter

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "star")


@dataclass(frozen=True)
class SynthConfig:
    """What a synthetic image may contain; sides are fractions of the image side."""

    size: int = 256
    num_classes: int = 3
    min_side: float = 0.11
    max_side: float = 0.5
    max_objects: int = 5
    empty_fraction: float = 0.08
    min_visible: float = 0.7
    max_box_iou: float = 0.3  # no two boxes overlap more: the paper's test NMS (0.3) keeps both
    min_contrast: float = 110.0  # RGB distance between a shape and the background's mean
    min_shape_contrast: float = 80.0  # RGB distance between two shapes' colours
    jpeg_quality: int = 92


_SPLIT_CODES = {"train": 1, "val": 2}
_MIN_OBJECT = 6  # pixels: the smallest shape drawn
_MAX_OBJECTS = 10000  # per image: the owner map is int16


def synthesize(out: str | os.PathLike, train: int = 200, val: int = 50, size: int = 256,
               seed: int = 0, num_classes: int = 3, reporter: Reporter = SILENT,
               workers: int | None = None, max_objects: int | None = None,
               min_object: int | None = None, max_object: int | None = None
               ) -> dict[str, Path]:
    """Write ``OUT/train.json``, ``OUT/val.json`` and ``OUT/images/{train,val}/*.jpg``.

    Returns ``{"train": path, "val": path}``. ``workers`` processes draw the images (default:
    up to 4, one per CPU); the result does not depend on it. ``max_objects`` (shapes per
    image, 1 to it) and ``min_object``/``max_object`` (shape sides in pixels) replace
    :class:`SynthConfig`'s defaults when given.
    """
    if not 1 <= num_classes <= len(SHAPES):
        raise InputError(f"--classes must be between 1 and {len(SHAPES)}, got {num_classes}")
    if size < 32:
        raise InputError(f"--size must be at least 32 pixels, got {size}")
    if train < 0 or val < 0:
        raise InputError("--train and --val must not be negative")
    cfg = SynthConfig(size=size, num_classes=num_classes,
                      **_object_options(size, max_objects, min_object, max_object))
    _refuse_existing_dataset(Path(out))
    folder = prepare_output_dir(out, what="output")
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    written = {}
    with reporter.task("synthesising", total=train + val) as task:
        for split, count in (("train", train), ("val", val)):
            img_dir = folder / "images" / split
            img_dir.mkdir(parents=True, exist_ok=True)
            jobs = [(cfg, seed, split, i, img_dir) for i in range(count)]
            records = []
            if workers > 1 and count > 1 and count * size**2 >= 64 * 256**2:
                with ProcessPoolExecutor(workers) as pool:
                    for rec in pool.map(_write_image, jobs, chunksize=16):
                        records.append(rec)
                        task.update(advance=1)
            else:
                for job in jobs:
                    records.append(_write_image(job))
                    task.update(advance=1)
            ann = _assemble(records, cfg, folder)
            written[split] = save_annotations(ann, folder / f"{split}.json",
                                              written_by="data synth")
    return written


def _object_options(size: int, max_objects: int | None, min_object: int | None,
                    max_object: int | None) -> dict[str, Any]:
    """SynthConfig fields for the options given, checked."""
    fields: dict[str, Any] = {}
    if max_objects is not None:
        if not 1 <= max_objects <= _MAX_OBJECTS:
            raise InputError(f"--objects must be between 1 and {_MAX_OBJECTS}, got {max_objects}")
        fields["max_objects"] = max_objects
    lo = min_object if min_object is not None else SynthConfig.min_side * size
    hi = max_object if max_object is not None else SynthConfig.max_side * size
    if (min_object is not None or max_object is not None) and \
            not _MIN_OBJECT <= lo <= hi <= size - 2:
        raise InputError(f"object sides must satisfy {_MIN_OBJECT} <= --min-object <= "
                         f"--max-object <= --size - 2, got {lo:g} and {hi:g} for {size} px "
                         "images")
    if min_object is not None:
        fields["min_side"] = min_object / size
    if max_object is not None:
        fields["max_side"] = max_object / size
    return fields


def _refuse_existing_dataset(folder: Path) -> None:
    """Synth writes fixed names (train.json, images/train/000001.jpg): in a folder that already
    holds a dataset they would replace the user's files."""
    taken = [folder / f"{split}.json" for split in ("train", "val")]
    taken = [p for p in taken if p.exists()]
    for split in ("train", "val"):
        images = folder / "images" / split
        if images.is_dir() and any(images.iterdir()):
            taken.append(images)
    if taken:
        raise InputError(f"{folder} already holds a dataset ({taken[0]}); data synth never "
                         "replaces files: choose a new or empty folder")


def _assemble(records: list[dict[str, Any]], cfg: SynthConfig, folder: Path) -> Annotations:
    images, anns = [], []
    for rec in records:
        images.append(rec["image"])
        for obj in rec["objects"]:
            x, y, w, h = obj["bbox"]
            anns.append({"id": len(anns) + 1, "image_id": rec["image"]["id"],
                         "category_id": obj["category_id"], "bbox": [x, y, w, h],
                         "area": float(w * h), "iscrowd": 0})
    cats = [{"id": i + 1, "name": SHAPES[i], "supercategory": "shape"}
            for i in range(cfg.num_classes)]
    extra = {"info": {"description": f"frcnn synthetic shapes, {cfg.size} px",
                      "version": "1"}}
    return Annotations(images, anns, cats, folder, None, extra)


def _write_image(job: tuple[SynthConfig, int, str, int, Path]) -> dict[str, Any]:
    cv2 = opencv()

    cfg, seed, split, index, img_dir = job
    rng = np.random.default_rng([seed, _SPLIT_CODES.get(split, 3), index])
    pixels, objects = draw_image(cfg, rng)
    name = f"{index + 1:06d}.jpg"
    ok, buf = cv2.imencode(".jpg", pixels[:, :, ::-1],
                           [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
    if not ok:
        raise InputError(f"cannot encode synthetic image {img_dir / name}")
    (img_dir / name).write_bytes(buf.tobytes())
    image = {"id": index + 1, "file_name": f"images/{split}/{name}", "width": cfg.size,
             "height": cfg.size}
    return {"image": image, "objects": objects}


def draw_image(cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One synthetic image: uint8 ``[S, S, 3]`` RGB and its objects
    (``{"category_id": 1..K, "bbox": [x, y, w, h]}``, full extents in pixels)."""
    s = cfg.size
    image, base = _background(s, rng)
    owner = np.full((s, s), -1, np.int16)  # which object each pixel shows (-1: background)
    full_area: list[int] = []
    visible_area = np.zeros(0, np.int64)  # pixels each object still shows
    objects: list[dict] = []
    boxes = np.zeros((0, 4))
    n = 0 if rng.random() < cfg.empty_fraction else int(rng.integers(1, cfg.max_objects + 1))
    colors: list[np.ndarray] = []
    for _ in range(n):
        cls = int(rng.integers(cfg.num_classes))
        color = _contrasting_color(base, colors, cfg, rng)
        for _attempt in range(15):
            (x, y, mask), box = _shape_mask(SHAPES[cls], cfg, rng)
            region = owner[y:y + mask.shape[0], x:x + mask.shape[1]]
            hidden = np.bincount(region[mask] + 1, minlength=len(full_area) + 1)[1:]
            if (np.all(visible_area - hidden >= cfg.min_visible * np.asarray(full_area))
                    and _max_iou(box, boxes) <= cfg.max_box_iou):
                break
        else:
            continue
        k = len(objects)
        region[mask] = k
        image[y:y + mask.shape[0], x:x + mask.shape[1]][mask] = color
        full_area.append(int(mask.sum()))
        visible_area = np.append(visible_area - hidden, full_area[-1])
        colors.append(color)
        objects.append({"category_id": cls + 1, "bbox": box})
        boxes = np.vstack([boxes, box])
    noise = rng.normal(0.0, rng.uniform(3.0, 8.0), image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return image, objects


def _background(s: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A float ``[S, S, 3]`` textured background and its mean colour."""
    cv2 = opencv()

    base = rng.uniform(30, 225, 3)
    kind = rng.integers(3)
    if kind == 0:  # soft blotches: a coarse random grid blown up
        g = int(rng.integers(3, 9))
        coarse = rng.uniform(-30, 30, (g, g, 3)).astype(np.float32)
        texture = cv2.resize(coarse, (s, s), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:  # stripes at a random angle
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 30)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        texture = wave[:, :, None] * rng.uniform(-20, 20, 3).astype(np.float32)
    else:  # a linear gradient
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
        angle = rng.uniform(0, 2 * np.pi)
        ramp = xx * np.cos(angle) + yy * np.sin(angle)
        texture = ramp[:, :, None] * rng.uniform(-60, 60, 3).astype(np.float32)
    return base.astype(np.float32) + texture, base


def _contrasting_color(base: np.ndarray, others: list[np.ndarray], cfg: SynthConfig,
                       rng: np.random.Generator) -> np.ndarray:
    """A colour far from the background's mean and, where possible, from the other shapes'
    (so two overlapping shapes never melt into one blob)."""
    for attempt in range(100):
        c = rng.uniform(0, 255, 3)
        if np.linalg.norm(c - base) < cfg.min_contrast:
            continue
        if attempt < 50 and any(np.linalg.norm(c - o) < cfg.min_shape_contrast for o in others):
            continue
        return c.astype(np.float32)
    # the base is mid-grey-ish: take the far corner of the colour cube
    return np.where(base > 127, 0.0, 255.0).astype(np.float32)


def _shape_mask(shape: str, cfg: SynthConfig, rng: np.random.Generator
                ) -> tuple[tuple[int, int, np.ndarray], list[float]]:
    """One shape placed at random: ``(x, y, mask)``, a boolean mask of the window whose top
    left pixel is ``(x, y)``, and the shape's tight box ``[x, y, w, h]`` in the image."""
    cv2 = opencv()

    s = cfg.size
    side = float(np.exp(rng.uniform(np.log(cfg.min_side), np.log(cfg.max_side)))) * s
    # circles and squares keep their proportions; other shapes stretch a little
    aspect = 1.0 if shape in ("circle", "square") else float(np.exp(rng.uniform(-0.25, 0.25)))
    w = max(6, round(side * np.sqrt(aspect)))
    h = max(6, round(side / np.sqrt(aspect)))
    w, h = min(w, s - 2), min(h, s - 2)
    x0 = int(rng.integers(0, s - w + 1))
    y0 = int(rng.integers(0, s - h + 1))
    x1, y1 = x0 + w - 1, y0 + h - 1  # inclusive pixel extent
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # The shape is drawn in a window a little larger than its extent, at whole-pixel offsets:
    # the same pixels as drawing it on the whole image.
    left, top = max(0, x0 - 2), max(0, y0 - 2)
    right, bottom = min(s, x1 + 3), min(s, y1 + 3)
    canvas = np.zeros((bottom - top, right - left), np.uint8)
    if shape == "circle":
        cv2.ellipse(canvas, (round(cx) - left, round(cy) - top),
                    ((w - 1) // 2, (h - 1) // 2), 0, 0, 360, 1, -1)
    elif shape == "square":
        cv2.rectangle(canvas, (x0 - left, y0 - top), (x1 - left, y1 - top), 1, -1)
    else:
        for poly in _polygons(shape, x0, y0, x1, y1):
            points = np.round(poly).astype(np.int32) - np.array([left, top], np.int32)
            cv2.fillPoly(canvas, [points], 1)
    mask = canvas.astype(bool)
    ys, xs = np.nonzero(mask)
    bx, by = int(xs.min()) + left, int(ys.min()) + top
    box = [float(bx), float(by), float(xs.max() + left + 1 - bx), float(ys.max() + top + 1 - by)]
    return (left, top, mask), box


def _polygons(shape: str, x0: int, y0: int, x1: int, y1: int) -> list[np.ndarray]:
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "triangle":
        return [np.array([[cx, y0], [x1, y1], [x0, y1]])]
    if shape == "diamond":
        return [np.array([[cx, y0], [x1, cy], [cx, y1], [x0, cy]])]
    if shape == "cross":
        tw, th = (x1 - x0) / 6, (y1 - y0) / 6
        return [np.array([[cx - tw, y0], [cx + tw, y0], [cx + tw, y1], [cx - tw, y1]]),
                np.array([[x0, cy - th], [x1, cy - th], [x1, cy + th], [x0, cy + th]])]
    # star: ten points alternating between the outer and an inner radius
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    px, py = np.cos(angles) * radius, np.sin(angles) * radius
    # stretch the star so its outer points touch the box
    px = x0 + (px - px.min()) / (px.max() - px.min()) * (x1 - x0)
    py = y0 + (py - py.min()) / (py.max() - py.min()) * (y1 - y0)
    return [np.stack([px, py], axis=1)]


def _max_iou(box: list[float], others: np.ndarray) -> float:
    """Largest IoU of ``box`` with ``others`` ``(M, 4)`` (all ``[x, y, w, h]``); 0 without
    others."""
    if not len(others):
        return 0.0
    x, y, w, h = box
    ox, oy, ow, oh = others.T
    iw = np.maximum(0.0, np.minimum(x + w, ox + ow) - np.maximum(x, ox))
    ih = np.maximum(0.0, np.minimum(y + h, oy + oh) - np.maximum(y, oy))
    inter = iw * ih
    return float(np.max(inter / (w * h + ow * oh - inter)))
