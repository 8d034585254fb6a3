"""`make demo` from a fresh clone, timed: what a new user waits for, step by step.

    python3 benchmarks/demo_time.py                    # clones this checkout's HEAD into a temp dir
    python3 benchmarks/demo_time.py --repo URL_OR_PATH --keep /tmp/demo-clone

Clones the repository (committed files only, as a user gets them), runs `make demo` there with
a clean environment, and prints the minutes of the whole run and of each step make echoes
(installing, the synthetic data, train-alt, eval, predict, export), then the VOC07 mAP from
demo/run/eval.json. Exit 1 if the demo fails, or misses VOC07 mAP >= 0.90 or 10 minutes.
Run it alone on the machine: anything else on the cores slows training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MAP, TARGET_MINUTES = 0.90, 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]),
                        help="what to clone (default: this checkout)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="clone into this folder and keep it (default: a temp dir)")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="frcnn-demo-"))
    if folder.exists() and any(folder.iterdir()):
        sys.exit(f"{folder} is not empty")
    subprocess.run(["git", "clone", "--quiet", args.repo, str(folder)], check=True)
    head = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}

    steps: list[tuple[str, float]] = [("install", 0.0)]
    start = time.perf_counter()
    proc = subprocess.Popen(["make", "demo"], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    log, continued = [], False
    for line in proc.stdout:
        log.append(line)
        command = line.strip()
        # make echoes each step; a step written over several lines ends them with a backslash
        if not continued and command.startswith((".venv/bin/frcnn", "test -f")):
            # `test -f demo/data/train.json || frcnn data synth ...`: the data step
            name = "data synth" if command.startswith("test -f") else command.split()[1]
            steps.append((name, time.perf_counter() - start))
        continued = command.endswith("\\")
    code = proc.wait()
    total = time.perf_counter() - start
    (folder / "demo_time.log").write_text("".join(log))
    if code != 0:
        print("".join(log[-30:]))
        print(f"make demo failed (exit {code}) in {folder}")
        return 1

    print(f"make demo from a fresh clone of {args.repo} at {head} ({os.cpu_count()} CPUs)")
    ends = [t for _, t in steps[1:]] + [total]
    for (name, begin), end in zip(steps, ends, strict=True):
        print(f"  {name:<12} {(end - begin) / 60:6.2f} min")
    result = json.loads((folder / "demo" / "run" / "eval.json").read_text())
    minutes = total / 60
    print(f"  {'total':<12} {minutes:6.2f} min")
    print(f"VOC07 mAP {result['mAP']:.4f} ("
          + ", ".join(f"{k} {v:.3f}" for k, v in result["per_class"].items()) + ")")
    met = result["mAP"] >= TARGET_MAP and minutes <= TARGET_MINUTES
    print(f"target (mAP >= {TARGET_MAP}, <= {TARGET_MINUTES:g} min): {'met' if met else 'MISSED'}")
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
