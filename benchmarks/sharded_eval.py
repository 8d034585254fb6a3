"""How `frcnn eval` scales when torchrun shards it: one process against two, each of one
thread, interleaved, on the same checkpoint and dataset; the mAP must be the same.

    python benchmarks/sharded_eval.py --checkpoint demo/run/model.pt --data demo/data/val.json
    python benchmarks/sharded_eval.py --rounds 3          # a random-weight shapes model on a
                                                          # synthetic set of --images images

Each round runs `frcnn eval` once in one process (OMP_NUM_THREADS=1) and once under
`torchrun --standalone --nproc-per-node 2` (one thread each), in alternating order, and times
each whole command, as a user waits for it (process start, model loading and the launcher's
rendezvous included). It prints the medians and the ratio two / one; 0.5 would be perfect
scaling. Run it alone on the machine: two PyTorch jobs on two cores slow each other several
times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - start


def example(folder: Path, images: int) -> tuple[Path, Path]:
    """A synthetic shapes set of ``images`` validation images and a random-weight shapes
    checkpoint (timing does not depend on the weights)."""
    import torch

    from frcnn_cli import build_model
    from frcnn_cli.checkpoint import checkpoint_meta, save_checkpoint
    from frcnn_cli.data.synth import synthesize

    synthesize(folder, train=1, val=images, size=256, seed=0, workers=2)
    torch.manual_seed(0)
    classes = [{"id": i, "name": n} for i, n in enumerate(("circle", "square", "triangle"), 1)]
    model = build_model("shapes", 3, classes=classes)
    path = folder / "random.pt"
    save_checkpoint({"model": model.state_dict(), "meta": checkpoint_meta(model)}, path)
    return path, folder / "val.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--images", type=int, default=1000,
                        help="without --checkpoint: synthetic validation images")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sharded-eval-"))
    checkpoint, data = args.checkpoint, args.data
    if checkpoint is None:
        checkpoint, data = example(work, args.images)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = ["-m", "frcnn_cli", "--quiet", "eval", str(checkpoint), "--data", str(data),
            "--device", "cpu"]
    commands = {
        "one process": [sys.executable, *base],
        "two processes": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", *base],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    maps: dict[str, float] = {}
    for k in range(args.rounds):
        order = list(commands) if k % 2 == 0 else list(reversed(commands))
        for name in order:
            out = work / f"{name.replace(' ', '-')}-{k}.json"
            times[name].append(run([*commands[name], "--json", str(out)], env))
            maps[name] = json.loads(out.read_text())["mAP"]
    one, two = (statistics.median(times[n]) for n in commands)
    print(f"frcnn eval {checkpoint} on {data}, {args.rounds} interleaved rounds, "
          f"{os.cpu_count()} CPUs, one thread per process")
    for name in commands:
        print(f"  {name:14s} median {statistics.median(times[name]):7.2f} s  "
              f"(runs {', '.join(f'{t:.2f}' for t in times[name])})  mAP {maps[name]:.4f}")
    print(f"  two / one      {two / one:.3f} (0.5 would be perfect scaling)")
    if len(set(maps.values())) != 1:
        sys.exit("the sharded evaluation's mAP differs from one process's")


if __name__ == "__main__":
    main()
