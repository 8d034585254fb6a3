"""The feature pyramid against the paper's single stride-16 map (C4), trained from scratch on
this CPU: AP50 overall and on small objects, and time per training iteration.

    .venv/bin/python benchmarks/fpn_vs_c4.py --out DIR [--iters 600] [--small-iters 400]

The two networks are the ``shapes`` recipe (the tiny stack, one stride-16 map) and its twin
``shapes-fpn`` (the same stack with a 64-channel pyramid, P2-P5); everything else, schedule
included, is the same. Two data sets, made with ``frcnn data synth``:

- ``shapes``: the demo's set (600 training and 100 validation images of 256 px, shapes of
  28-128 px), trained ``--iters`` iterations of 8 images;
- ``small``: 512 px images with up to 40 shapes of 8-32 px each (300 training, 50 validation),
  trained and evaluated at 512 px, ``--small-iters`` iterations of 4 images, anchors moved to
  the objects' sizes (C4: 8, 16, 32 px squares; FPN: 8, 16, 32, 64 px on P2-P5).

Each model is trained by ``frcnn train`` (printed before it runs), then scored in this process
by area AP at IoU 0.5 (``--metric voc``), over all objects ("AP50") and over the objects under
32 x 32 px, COCO's "small" ("AP50 small": the larger objects are marked difficult, so a
detection of one neither counts nor costs). Seconds per iteration come from the run's
``metrics.jsonl`` (the loop's own clock, from the first logged line to the last). Data and
trained runs already in OUT are kept; results go to OUT/results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

SMALL = 32 * 32  # COCO's small objects: area under 32^2 px

SETS = {
    "shapes": {"synth": ["--train", "600", "--val", "100", "--size", "256"], "set": []},
    "small": {"synth": ["--train", "300", "--val", "50", "--size", "512", "--objects", "40",
                        "--min-object", "8", "--max-object", "32"],
              "set": ["input.min_size=512", "input.max_size=512", "solver.images_per_batch=4"]},
}
ANCHORS = {  # the small set's anchors, per network
    "shapes": ["anchors.scales=[0.5,1,2]"],
    "shapes-fpn": ["anchors.sizes=[8,16,32,64]"],
}


def frcnn(*args: str) -> None:
    print("$ frcnn " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "frcnn_cli", "--quiet", *args], check=True)


def seconds_per_iteration(run: Path) -> float:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if line.strip()]
    steps = [line for line in lines if "time" in line and "iteration" in line]
    first, last = steps[0], steps[-1]
    return (last["time"] - first["time"]) / (last["iteration"] - first["iteration"])


def small_only(ann):
    """The same images with every object of 32 x 32 px or more marked difficult."""
    objs = [{**a, "difficult": 1} if a["bbox"][2] * a["bbox"][3] >= SMALL else dict(a)
            for a in ann.annotations]
    return dataclasses.replace(ann, annotations=objs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for data and runs.")
    parser.add_argument("--iters", type=int, default=600, help="Iterations on the shapes set.")
    parser.add_argument("--small-iters", type=int, default=400,
                        help="Iterations on the small-object set.")
    args = parser.parse_args()

    rows = []
    for data, spec in SETS.items():
        folder = args.out / data
        if not (folder / "val.json").is_file():
            frcnn("data", "synth", str(folder), *spec["synth"], "--seed", "0")
        iters = args.iters if data == "shapes" else args.small_iters
        for recipe in ("shapes", "shapes-fpn"):
            run = args.out / "runs" / f"{data}-{recipe}"
            overrides = spec["set"] + (ANCHORS[recipe] if data == "small" else [])
            if not (run / "model.pt").is_file():
                frcnn("train", "--recipe", recipe, "--train", str(folder / "train.json"),
                      "--out", str(run), "--iters", str(iters), "--seed", "0",
                      *[a for o in overrides for a in ("--set", o)])
            rows.append(score(run, folder / "val.json", data, recipe, iters))

    print(f"\n{'data':<8}{'network':<12}{'iters':>6}{'s/iter':>8}{'AP50':>8}{'AP50 small':>12}"
          f"{'small objects':>15}")
    for r in rows:
        print(f"{r['data']:<8}{r['network']:<12}{r['iterations']:>6}{r['s/iter']:>8.3f}"
              f"{r['AP50']:>8.3f}{r['AP50 small']:>12.3f}{r['small objects']:>15}")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def score(run: Path, val_path: Path, data: str, recipe: str, iters: int) -> dict:
    from frcnn_cli import load_model
    from frcnn_cli.data.annotations import load_annotations
    from frcnn_cli.evaluation.evaluate import evaluate_detections
    from frcnn_cli.evaluation.inference import evaluate_model

    print(f"$ frcnn eval {run / 'model.pt'} --data {val_path} --metric voc   "
          "(in this process; and on small objects only)", flush=True)
    val = load_annotations(val_path)
    dets: list[dict] = []
    overall = evaluate_model(load_model(run / "model.pt"), val, "voc", detections=dets)
    small = small_only(val)
    return {"data": data, "network": recipe, "iterations": iters,
            "s/iter": round(seconds_per_iteration(run), 3), "AP50": round(overall.mAP, 4),
            "AP50 small": round(evaluate_detections(small, dets, "voc").mAP, 4),
            "small objects": sum(1 for a in small.annotations if not a.get("difficult"))}


if __name__ == "__main__":
    sys.exit(main())
