"""Robust image decoding: EXIF orientation, odd modes to RGB, broken files as DataError,
large images up to a cap, 16-bit and multi-band files."""

from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
from PIL import Image

from frcnn_cli.data import images
from frcnn_cli.data.images import image_size, read_image
from frcnn_cli.errors import DataError


def _rgb(h=20, w=30):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:5, :5] = (255, 0, 0)  # a red corner, top-left, to follow rotations
    return arr


def test_rgb_png_round_trip(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    assert np.array_equal(out, arr)
    assert image_size(tmp_path / "a.png") == (30, 20)


def test_exif_orientation_applied_to_pixels_and_header_size(tmp_path):
    im = Image.fromarray(_rgb())
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (30, 20, 3)
    assert image_size(tmp_path / "r.jpg") == (20, 30)
    # the red corner moved from top-left to top-right
    assert out[1, 18, 0] > 200 and out[1, 1, 0] < 60


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK", "1"])
def test_modes_become_rgb(tmp_path, mode):
    im = Image.fromarray(_rgb()).convert(mode)
    suffix = "jpg" if mode == "CMYK" else "tif" if mode == "LA" else "png"
    im.save(tmp_path / f"m.{suffix}")
    out = read_image(tmp_path / f"m.{suffix}")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8


def test_sixteen_bit_gray_keeps_the_high_byte(tmp_path):
    arr = np.full((8, 9), 65535, np.uint16)
    arr[0, 0] = 0
    arr[0, 1] = 257 * 100
    arr[0, 2] = 511  # the high byte is 1 (v / 257 would round to 2)
    arr[0, 3] = 255  # 0
    Image.fromarray(arr).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (8, 9, 3)
    assert out[0, :4, 0].tolist() == [0, 100, 1, 0]
    assert out[0, 1].tolist() == [100, 100, 100]
    assert out[5, 5].tolist() == [255, 255, 255]


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_sixteen_bit_colour_keeps_the_high_byte_like_gray(tmp_path, suffix):
    import cv2

    rgb = np.zeros((4, 5, 3), np.uint16)
    rgb[0, 0] = (511, 257 * 100, 65535)
    rgb[1, 1] = (255, 256, 40000)
    assert cv2.imwrite(str(tmp_path / f"c16.{suffix}"), rgb[:, :, ::-1])  # OpenCV writes BGR
    out = read_image(tmp_path / f"c16.{suffix}")
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    assert out[0, 0].tolist() == [1, 100, 255]
    assert out[1, 1].tolist() == [0, 1, 156]


def _write_tiff(path, arr, extra_samples=0):
    """A minimal uncompressed little-endian TIFF of ``arr`` ``[H, W, C]`` (C >= 3), RGB
    photometric, bands after the third marked ``extra_samples`` (0: unspecified, 2: alpha)."""
    h, w, c = arr.shape
    pixels = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    tags = {256: [w], 257: [h], 258: [arr.dtype.itemsize * 8] * c, 259: [1], 262: [2],
            273: [8], 277: [c], 278: [h], 279: [len(pixels)], 284: [1]}
    if c > 3:
        tags[338] = [extra_samples] * (c - 3)
    head = b"II*\x00" + struct.pack("<I", 8 + len(pixels)) + pixels
    ifd_size = 2 + 12 * len(tags) + 4
    entries, spill = b"", b""
    for tag in sorted(tags):
        typ, fmt = (4, "I") if tag in (256, 257, 273, 278, 279) else (3, "H")
        raw = struct.pack(f"<{len(tags[tag])}{fmt}", *tags[tag])
        if len(raw) > 4:  # values that do not fit the entry go after the directory
            raw, spill = struct.pack("<I", len(head) + ifd_size + len(spill)), spill + raw
        entries += struct.pack("<HHI", tag, typ, len(tags[tag])) + raw.ljust(4, b"\x00")
    path.write_bytes(head + struct.pack("<H", len(tags)) + entries + b"\x00" * 4 + spill)


@pytest.mark.parametrize("bands", [4, 5])
def test_extra_bands_read_as_the_first_three_with_one_warning(tmp_path, monkeypatch, caplog,
                                                              bands):
    monkeypatch.setattr(images, "_warned_bands", False)
    arr = np.random.default_rng(0).integers(0, 256, (6, 7, bands), dtype=np.uint8)
    _write_tiff(tmp_path / "nir.tif", arr)
    with caplog.at_level(logging.WARNING, logger="frcnn"):
        out = read_image(tmp_path / "nir.tif")
        read_image(tmp_path / "nir.tif")
    assert np.array_equal(out, arr[:, :, :3])
    warned = [r.getMessage() for r in caplog.records if "bands" in r.getMessage()]
    assert len(warned) == 1 and f"has {bands} bands" in warned[0]


def test_declared_alpha_is_dropped_without_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(images, "_warned_bands", False)
    arr = np.random.default_rng(1).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    _write_tiff(tmp_path / "rgba.tif", arr, extra_samples=2)
    with caplog.at_level(logging.WARNING, logger="frcnn"):
        out = read_image(tmp_path / "rgba.tif")
    assert np.array_equal(out, arr[:, :, :3]) and not caplog.records


def test_undecodable_tiffs_are_refused_naming_bands_and_samples(tmp_path):
    import cv2

    _write_tiff(tmp_path / "ms.tif", np.zeros((6, 7, 5), np.uint16))
    assert cv2.imwrite(str(tmp_path / "f.tif"), np.zeros((6, 7, 3), np.float32))
    with pytest.raises(DataError, match=r"ms\.tif: a TIFF of 5 band\(s\) of 16-bit unsigned"):
        read_image(tmp_path / "ms.tif")
    with pytest.raises(DataError, match=r"f\.tif: a TIFF of 3 band\(s\) of 32-bit float"):
        read_image(tmp_path / "f.tif")
    (tmp_path / "x.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataError, match="not an image file"):
        read_image(tmp_path / "x.tif")


def test_images_beyond_pillows_limit_read_up_to_the_cap(tmp_path, monkeypatch):
    """Pillow refuses images over twice its MAX_IMAGE_PIXELS; frcnn reads them up to its own
    cap, leaves Pillow's setting as it was, and refuses larger ones naming the cap."""
    Image.fromarray(_rgb(20, 30)).save(tmp_path / "big.png")  # 600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert read_image(tmp_path / "big.png").shape == (20, 30, 3)
    assert image_size(tmp_path / "big.png", decode=True) == (30, 20)
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(DataError, match=r"big\.png has 30 x 20 = 600 pixels.*cap of 599"):
        read_image(tmp_path / "big.png", max_pixels=599)
    assert read_image(tmp_path / "big.png", max_pixels=600).shape == (20, 30, 3)
    assert read_image(tmp_path / "big.png", max_pixels=None).shape == (20, 30, 3)
    # the header alone is read whatever the size; decoding applies the cap
    assert image_size(tmp_path / "big.png", max_pixels=10) == (30, 20)
    with pytest.raises(DataError, match="cap of 10"):
        image_size(tmp_path / "big.png", decode=True, max_pixels=10)


def test_truncated_and_corrupt_and_missing_name_the_file(tmp_path):
    Image.fromarray(_rgb(200, 200)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "c.png").write_bytes(b"not an image at all")
    for name in ("t.jpg", "c.png", "missing.jpg"):
        with pytest.raises(DataError, match=name):
            read_image(tmp_path / name)
    with pytest.raises(DataError, match="c.png"):
        image_size(tmp_path / "c.png")
