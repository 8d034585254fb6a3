"""Selective Search against the RPN on the shapes set: time, recall and mAP (the paper's
Section 1, Figures 3-4 and Table 2, in miniature).

    .venv/bin/python benchmarks/selective_search.py --out DIR [--train 600 --val 100
        --size 256] [--iters N] [--workers 2]

Runs, as a user would from the shell, into DIR (a step whose output exists is kept, so a
second call continues an interrupted one):

1. ``frcnn data synth`` (seed 0) unless DIR/data holds the set;
2. ``frcnn propose --method selective-search`` for the training set (``--workers``) and the
   validation set (one process, so its seconds per image are one core's);
3. ``frcnn train-alt`` of the ``shapes`` recipe: Faster R-CNN, the step-1 RPN and the final
   shared RPN;
4. ``frcnn train-detector --stage 1`` on the Selective Search boxes: Fast R-CNN with its own
   backbone, trained for as many iterations, of as many images, as step 2 of ``train-alt``;
5. ``frcnn propose`` of the step-1 and the final RPN on the validation set (``--max 2000``),
   and ``frcnn eval --compare-proposals`` of the three files (DIR/compare.json, DIR/plots/);
6. VOC07 mAP on the validation set: Fast R-CNN on Selective Search run per image (up to 2000
   boxes), Faster R-CNN on its RPN's proposals (the recipe's test count, and 300 through a
   proposals file), and the two crossed (Table 2 also pairs a detector with the other's
   proposals);
7. ``frcnn benchmark`` of both detectors on one validation image, stage by stage.

Prints the tables and writes DIR/results.json, with the load average (``os.getloadavg``) at
the start and end of every step: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LOADS: list[dict] = []


def frcnn(*args: str, output: Path | None = None) -> None:
    """Run one command (skipped when ``output`` exists), timing it and noting the load."""
    if output is not None and output.exists():
        print(f"(kept {output})", flush=True)
        return
    before = os.getloadavg()[0]
    start = time.perf_counter()
    print("$ frcnn " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "frcnn_cli", *args], check=True)
    LOADS.append({"command": " ".join(args[:2]), "minutes": (time.perf_counter() - start) / 60,
                  "load_before": before, "load_after": os.getloadavg()[0]})
    print(f"  {LOADS[-1]['minutes']:.2f} min, load average {before:.1f} -> "
          f"{LOADS[-1]['load_after']:.1f}", flush=True)


def meta(path: Path) -> dict:
    from frcnn_cli.proposals.files import read_meta as read_proposals

    return read_proposals(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for data and runs.")
    parser.add_argument("--train", type=int, default=600, help="Training images (synth).")
    parser.add_argument("--val", type=int, default=100, help="Validation images (synth).")
    parser.add_argument("--size", type=int, default=256, help="Image size (synth).")
    parser.add_argument("--iters", type=int, help="Every stage's iterations (default: the "
                        "recipe's schedule); Fast R-CNN trains as long as step 2.")
    parser.add_argument("--workers", type=int, default=2, help="Selective Search processes "
                        "for the training set.")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="Recipe override for both detectors.")
    args = parser.parse_args()
    out, data = args.out, args.out / "data"
    train, val = str(data / "train.json"), str(data / "val.json")
    sets = [a for kv in args.overrides for a in ("--set", kv)]
    iters = ["--iters", str(args.iters)] if args.iters else []
    plots = out / "plots"

    frcnn("data", "synth", str(data), "--train", str(args.train), "--val", str(args.val),
          "--size", str(args.size), "--seed", "0", output=data / "val.json")
    frcnn("propose", "--method", "selective-search", "--data", train, "--out",
          str(out / "ss-train.pt"), "--workers", str(args.workers), output=out / "ss-train.pt")
    frcnn("propose", "--method", "selective-search", "--data", val, "--out",
          str(out / "ss-val.pt"), output=out / "ss-val.pt")
    frcnn("train-alt", "--recipe", "shapes", "--train", train, "--val", val, "--out",
          str(out / "alt"), "--seed", "0", *iters, *sets, output=out / "alt" / "model.pt")
    # no --val: step 6 evaluates it (a validation would search the images once more)
    frcnn("train-detector", "--recipe", "shapes", "--train", train, "--proposals",
          str(out / "ss-train.pt"), "--out", str(out / "fast-rcnn"), "--stage", "1", "--seed",
          "0", *iters, *sets, output=out / "fast-rcnn" / "model.pt")
    rpn_files = {"step-1 RPN": (out / "alt" / "stage1-rpn" / "model.pt", out / "rpn1-val.pt"),
                 "final RPN": (out / "alt" / "model.pt", out / "rpn-val.pt")}
    for checkpoint, file in rpn_files.values():
        frcnn("propose", str(checkpoint), "--data", val, "--out", str(file), "--max", "2000",
              "--device", "cpu", output=file)
    frcnn("propose", str(out / "alt" / "model.pt"), "--data", val, "--out",
          str(out / "rpn-val-300.pt"), "--max", "300", "--device", "cpu",
          output=out / "rpn-val-300.pt")
    frcnn("eval", "--data", val, "--compare-proposals", str(out / "ss-val.pt"),
          *[str(f) for _, f in rpn_files.values()], "--json", str(out / "compare.json"),
          "--plot", str(plots), output=out / "compare.json")

    fast, faster = str(out / "fast-rcnn" / "model.pt"), str(out / "alt" / "model.pt")
    evals = {  # name: (checkpoint, proposals file or None, what it is)
        "fast-ss": (fast, None, "Fast R-CNN, Selective Search (2000) per image"),
        "faster-rpn": (faster, None, "Faster R-CNN, its RPN (the recipe's test count)"),
        "faster-rpn300": (faster, out / "rpn-val-300.pt", "Faster R-CNN, its RPN, 300"),
        "fast-rpn300": (fast, out / "rpn-val-300.pt", "Fast R-CNN (trained on SS), RPN 300"),
        "faster-ss": (faster, out / "ss-val.pt", "Faster R-CNN, Selective Search (2000)"),
    }
    for name, (checkpoint, file, _) in evals.items():
        extra = ["--proposal-file", str(file)] if file else []
        frcnn("eval", checkpoint, "--data", val, "--metric", "voc07", "--device", "cpu",
              *extra, "--json", str(out / f"eval-{name}.json"),
              output=out / f"eval-{name}.json")
    image = sorted((data / "images" / "val").iterdir())[0]
    for name, checkpoint in (("fast", fast), ("faster", faster)):
        frcnn("benchmark", checkpoint, "--image", str(image), "--runs", "10", "--json",
              str(out / f"bench-{name}.json"), output=out / f"bench-{name}.json")

    results = report(out, evals)
    results["loads"] = LOADS
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


def report(out: Path, evals: dict) -> dict:
    """Print the three tables; return their figures."""
    ss, rpn = meta(out / "ss-val.pt"), meta(out / "rpn-val.pt")
    bench = {n: json.loads((out / f"bench-{n}.json").read_text())["models"][0]["median_ms"]
             for n in ("fast", "faster")}
    print("\nseconds per image on the validation images (this CPU)")
    print(f"  Selective Search ({ss['mode']}, one process)     {ss['seconds_per_image']:.3f}")
    print(f"  RPN proposals (backbone + RPN, propose)      {rpn['seconds_per_image']:.3f}")
    print(f"  RPN stage alone (benchmark, one image)       {bench['faster']['rpn'] / 1000:.4f}")
    print(f"  Fast R-CNN image, search included (bench.)   {bench['fast']['total'] / 1000:.3f}")
    print(f"  Faster R-CNN image (benchmark)               {bench['faster']['total'] / 1000:.3f}")

    compare = json.loads((out / "compare.json").read_text())
    print(f"\nproposal recall on {compare['num_objects']} objects "
          f"({compare['num_images']} images): IoU 0.5 / 0.7 / AR")
    for source in compare["sources"]:
        cells = "  ".join(f"{n}: {source['recall']['0.5'][n]:.3f} / "
                          f"{source['recall']['0.7'][n]:.3f} / {source['average_recall'][n]:.3f}"
                          for n in ("100", "300", "2000"))
        print(f"  {Path(source['file']).name:<14} {cells}")

    maps = {n: json.loads((out / f"eval-{n}.json").read_text())["mAP"] for n in evals}
    print("\nVOC07 mAP on the validation images (Table 2 in miniature)")
    for name, (_, _, what) in evals.items():
        print(f"  {what:<52} {maps[name]:.4f}")
    return {"selective_search": ss, "rpn": rpn, "benchmark_ms": bench, "compare": compare,
            "mAP": maps}


if __name__ == "__main__":
    sys.exit(main())
