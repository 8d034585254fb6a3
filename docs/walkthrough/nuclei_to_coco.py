"""The nuclei of the 2018 Data Science Bowl image that the stardist package ships, as COCO
JSON boxes for the README's walkthrough (large images and small objects).

    pip download stardist==0.9.2 --no-deps -d wheels
    unzip -o -j wheels/stardist-0.9.2-*.whl 'stardist/data/images/*2d.tif' -d nuclei/
    python docs/walkthrough/nuclei_to_coco.py nuclei/

stardist (BSD-3-Clause) ships ``img2d.tif``, a 512 x 512 fluorescence image, and
``mask2d.tif``, its instance labels (one integer per nucleus), from the 2018 Kaggle Data
Science Bowl (Caicedo et al., Nature Methods 16, 2019; the BBBC038 collection). This writes:

- ``nuclei.png``: the image as 8-bit PNG. Its 16-bit samples only go up to 235, and frcnn
  reads 16-bit files by their high byte, which would make it black: it is converted here.
- ``nuclei.json``: every nucleus as a box (class ``nucleus``), on the whole image;
- ``train.json`` and ``val.json``: the left and the right half (256 x 512 px each) as two
  images, ``left.png`` and ``right.png``, so that no pixel is both trained and evaluated on.
  A nucleus the middle line cuts keeps the box of its part in each half, as an object where
  at least half of it lies, as an ignore region (``iscrowd``) elsewhere (``data tile``'s rule).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

MIN_VISIBLE = 0.5


def boxes(mask: np.ndarray, whole: np.ndarray) -> list[dict]:
    """One COCO annotation per label of ``mask``; ``whole``: the label's pixel count in the
    full image, to tell a cut nucleus."""
    anns = []
    for label in np.unique(mask[mask > 0]):
        ys, xs = np.nonzero(mask == label)
        visible = len(xs) / whole[label]
        box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
               int(ys.max() - ys.min() + 1)]
        anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1, "bbox": box,
                     "area": box[2] * box[3], "iscrowd": int(visible < MIN_VISIBLE)})
    return anns


def write(folder: Path, name: str, pixels: np.ndarray, mask: np.ndarray,
          whole: np.ndarray) -> None:
    Image.fromarray(pixels).save(folder / f"{name}.png")
    height, width = pixels.shape
    dataset = {"images": [{"id": 1, "file_name": f"{name}.png", "width": width,
                           "height": height}],
               "annotations": boxes(mask, whole),
               "categories": [{"id": 1, "name": "nucleus"}]}
    json_name = {"left": "train", "right": "val"}.get(name, name)
    (folder / f"{json_name}.json").write_text(json.dumps(dataset, indent=1))
    kept = sum(not a["iscrowd"] for a in dataset["annotations"])
    print(f"{folder / json_name}.json: {name}.png, {width} x {height} px, {kept} nuclei "
          f"({len(dataset['annotations']) - kept} cut to ignore regions)")


def main(folder: Path) -> None:
    image = np.asarray(Image.open(folder / "img2d.tif"))
    mask = np.asarray(Image.open(folder / "mask2d.tif")).astype(np.int64)
    if image.max() > 255:
        raise SystemExit("img2d.tif holds samples above 255: scale them to 8 bits instead")
    pixels = image.astype(np.uint8)
    whole = np.bincount(mask.ravel())
    middle = pixels.shape[1] // 2
    write(folder, "nuclei", pixels, mask, whole)
    write(folder, "left", pixels[:, :middle].copy(), mask[:, :middle], whole)
    write(folder, "right", pixels[:, middle:].copy(), mask[:, middle:], whole)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "nuclei"))
