"""What CPU bfloat16 inference costs in accuracy, on a weak and a strong shapes model.

    .venv/bin/python benchmarks/bf16_accuracy.py --out DIR [--model NAME=RUN/model.pt ...]

Uses the demo's data in DIR/data (made as benchmarks/train_shapes.py makes it, 600 train / 100
val at 256 px, seed 0, unless it is there), trains a weak model (`frcnn train --iters 300`) into
DIR/weak unless it is there, then evaluates every model on the validation images with
`frcnn eval --precision fp32` and `--precision bf16` and prints VOC07 mAP both ways and the
difference. Pass strong models with --model (e.g. `--model joint=DIR/joint/model.pt` after
`benchmarks/train_shapes.py --out DIR --only joint`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def frcnn(*args: str) -> None:
    print("$ frcnn " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "frcnn_cli", "--quiet", *args], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--weak-iters", type=int, default=300)
    args = parser.parse_args()

    data = args.out / "data"
    if not (data / "train.json").is_file():
        frcnn("data", "synth", str(data), "--train", "600", "--val", "100", "--size", "256",
              "--seed", "0")
    weak = args.out / "weak"
    if not (weak / "model.pt").is_file():
        frcnn("train", "--recipe", "shapes", "--train", str(data / "train.json"), "--out",
              str(weak), "--iters", str(args.weak_iters))
    models = {"weak": weak / "model.pt"}
    models.update({k: Path(v) for k, v in (m.split("=", 1) for m in args.model)})

    rows = []
    for name, path in models.items():
        maps = {}
        for precision in ("fp32", "bf16"):
            out = args.out / f"{name}-{precision}.json"
            frcnn("eval", str(path), "--data", str(data / "val.json"), "--metric", "voc07",
                  "--precision", precision, "--json", str(out))
            maps[precision] = json.loads(out.read_text())["mAP"]
        rows.append((name, maps["fp32"], maps["bf16"]))
    print(f"\n{'model':<10}{'fp32 mAP':>10}{'bf16 mAP':>10}{'bf16 - fp32':>13}")
    for name, full, low in rows:
        print(f"{name:<10}{full:>10.4f}{low:>10.4f}{low - full:>+13.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
