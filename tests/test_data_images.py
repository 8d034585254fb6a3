"""Robust image decoding: EXIF orientation, odd modes to RGB, broken files as DataError."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

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


def test_sixteen_bit_gray_scaled_to_eight_bits(tmp_path):
    arr = np.full((8, 9), 65535, np.uint16)
    arr[0, 0] = 0
    arr[0, 1] = 257 * 100
    Image.fromarray(arr).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (8, 9, 3)
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 1].tolist() == [100, 100, 100]
    assert out[5, 5].tolist() == [255, 255, 255]


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
