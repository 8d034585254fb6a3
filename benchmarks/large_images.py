"""Small objects in large images: whole-image prediction, tiled prediction, and training on
tiles, by AP50 and time.

    .venv/bin/python benchmarks/large_images.py --out DIR [--iters 400] [--tile 128]
        [--only ordinary|tiles]

Runs the commands a user would, from the shell, each printed before it runs:

1. ``data synth`` large images with many small objects (2000 px, 1 to 150 shapes of 12-40 px
   each; 8 training and 6 validation images) and, for the first model, ordinary images (the
   demo's set: 600 images of 256 px, shapes of 28-128 px);
2. ``train`` the ``shapes`` recipe on the ordinary images (model "ordinary"), and on the large
   training images cut by ``data tile --size TILE`` (model "tiles"), each ``--iters``
   iterations of 8 images at the recipe's 256 px input, timed;
3. ``eval --metric voc`` (area AP at IoU 0.5, "AP50": pycocotools' AP50 would count only 100
   detections per image) of each model on the large validation images, whole (shrunk to
   256 px) and with ``--tile TILE`` (each tile enlarged to 256 px), timed in this process
   (decoding, prediction and scoring; not the start of a process).

Prints one row per model and prediction, and writes OUT/results.json (OUT/results-MODEL.json
with ``--only``, which trains and evaluates one model: two processes, one per model, share a
busy machine better). Data and trained runs already in OUT are kept (remove OUT/runs to train
again).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def frcnn(*args: str) -> float:
    """Run one command as a user would; its wall time in seconds."""
    cmd = [sys.executable, "-m", "frcnn_cli", "--quiet", *args]
    print("$ frcnn " + " ".join(args), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for data and runs.")
    parser.add_argument("--iters", type=int, default=400, help="Training iterations per model.")
    parser.add_argument("--tile", type=int, default=128, help="Tile side for data tile and "
                        "tiled prediction.")
    parser.add_argument("--only", choices=("ordinary", "tiles"), help="Train and evaluate "
                        "one model (the data must exist or is made first).")
    args = parser.parse_args()
    large, ordinary, runs = args.out / "large", args.out / "ordinary", args.out / "runs"
    tiles = large / f"train{args.tile}.json"
    if not (large / "val.json").is_file():
        frcnn("data", "synth", str(large), "--train", "8", "--val", "6", "--size", "2000",
              "--objects", "150", "--min-object", "12", "--max-object", "40", "--seed", "0")
    if not (ordinary / "train.json").is_file():
        frcnn("data", "synth", str(ordinary), "--train", "600", "--val", "0", "--size", "256",
              "--seed", "0")
    if not tiles.is_file():
        frcnn("data", "tile", str(large / "train.json"), "--size", str(args.tile), "--out",
              str(tiles))

    models = {"ordinary": ordinary / "train.json", "tiles": tiles}
    if args.only:
        models = {args.only: models[args.only]}
    minutes = {}
    for name, train in models.items():
        run = runs / name
        if not (run / "model.pt").is_file():
            seconds = frcnn("train", "--recipe", "shapes", "--train", str(train), "--out",
                            str(run), "--iters", str(args.iters), "--seed", "0")
            (run / "train_seconds.txt").write_text(f"{seconds:.1f}\n")
        minutes[name] = float((run / "train_seconds.txt").read_text()) / 60

    from frcnn_cli import load_model
    from frcnn_cli.data.annotations import load_annotations
    from frcnn_cli.evaluation.inference import evaluate_model
    from frcnn_cli.inference.tiled import Tiling

    val = load_annotations(large / "val.json")
    rows = []
    for name in models:
        model = load_model(runs / name / "model.pt")
        for tiling in (None, Tiling(args.tile)):
            flags = "" if tiling is None else f" --tile {args.tile}"
            print(f"$ frcnn eval {runs / name / 'model.pt'} --data {large / 'val.json'} "
                  f"--metric voc{flags}   (in this process, timed)", flush=True)
            start = time.perf_counter()
            result = evaluate_model(model, val, "voc", tiling=tiling)
            seconds = time.perf_counter() - start
            rows.append({"model": name, "trained on": str(models[name]),
                         "train minutes": round(minutes[name], 2),
                         "prediction": "whole image" if tiling is None
                         else f"tiled {args.tile} px",
                         "AP50": round(result.mAP, 4),
                         "seconds per image": round(seconds / len(val.images), 2)})

    print(f"\n{'model':<10}{'train min':>10}  {'prediction':<16}{'AP50':>7}"
          f"{'s/image':>9}")
    for r in rows:
        print(f"{r['model']:<10}{r['train minutes']:>10.1f}  {r['prediction']:<16}"
              f"{r['AP50']:>7.3f}{r['seconds per image']:>9.2f}")
    name = f"results-{args.only}.json" if args.only else "results.json"
    (args.out / name).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
