"""Train the `shapes` recipe with `frcnn train` and `frcnn train-alt`; time both and evaluate.

    .venv/bin/python benchmarks/train_shapes.py --out DIR [--only joint|alt] [--set KEY=VALUE ...]

Synthesises the demo's data (600 train / 100 val images at 256 px, seed 0) unless OUT/data
already holds it, then runs each training command as a user would, from the shell, into
OUT/joint and OUT/alt, evaluates each final model with VOC07 AP on the validation images and
prints one row per schedule: training wall time, mAP, and whether it meets the targets
(mAP >= 0.90 within 8 minutes on a 2-core CPU). The figures go to OUT/results.json too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TARGET_MAP = 0.90
TARGET_MINUTES = 8.0
SCHEDULES = {"joint": "train", "alt": "train-alt"}


def frcnn(*args: str) -> None:
    cmd = [sys.executable, "-m", "frcnn_cli", "--quiet", *args]
    print("$ frcnn " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for data and runs.")
    parser.add_argument("--only", choices=sorted(SCHEDULES), help="Run one schedule only.")
    parser.add_argument("--recipe", default="shapes")
    parser.add_argument("--seed", type=int, default=0, help="Training seed.")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="Recipe override passed to both commands.")
    args = parser.parse_args()

    data = args.out / "data"
    if not (data / "train.json").is_file():
        frcnn("data", "synth", str(data), "--train", "600", "--val", "100", "--size", "256",
              "--seed", "0")
    results = {}
    for name, command in SCHEDULES.items():
        if args.only and name != args.only:
            continue
        run = args.out / name
        if run.exists():
            print(f"{run} exists; remove it to measure again", file=sys.stderr)
            return 2
        start = time.perf_counter()
        sets = [arg for kv in args.overrides for arg in ("--set", kv)]
        frcnn(command, "--recipe", args.recipe, "--train", str(data / "train.json"),
              "--out", str(run), "--seed", str(args.seed), *sets)
        minutes = (time.perf_counter() - start) / 60
        frcnn("eval", str(run / "model.pt"), "--data", str(data / "val.json"),
              "--metric", "voc07", "--json", str(run / "eval.json"))
        mean_ap = json.loads((run / "eval.json").read_text())["mAP"]
        results[name] = {"command": command, "minutes": round(minutes, 2),
                         "mAP": round(mean_ap, 4),
                         "meets_target": mean_ap >= TARGET_MAP and minutes <= TARGET_MINUTES}

    print(f"\n{'schedule':<10}{'command':<12}{'minutes':>9}{'VOC07 mAP':>11}  target "
          f"(mAP >= {TARGET_MAP}, <= {TARGET_MINUTES:g} min)")
    for name, r in results.items():
        print(f"{name:<10}{r['command']:<12}{r['minutes']:>9.2f}{r['mAP']:>11.4f}  "
              f"{'met' if r['meets_target'] else 'MISSED'}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["meets_target"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
