"""What TensorBoard's event files cost a training iteration.

    .venv/bin/python benchmarks/tensorboard_cost.py --out DIR [--iters 60] [--repeats 3]
    .venv/bin/python benchmarks/tensorboard_cost.py --out DIR --smoke      # seconds: it works

Trains the `shapes` recipe (`frcnn train`, in this process) on the demo's data (synthesised
into OUT/data unless there) for ``--iters`` iterations with a metrics line at *every*
iteration (``train.log_every=1``, twenty times the recipe's rate: the worst case), once with
the event files and once without (the same run with ``MetricsLog.open`` writing none),
interleaved ``--repeats`` times so that a change in the machine's load hits both alike. The
time per iteration is read from each run's ``metrics.jsonl`` (its ``time``, seconds since the
loop began; the first iteration, which warms up, is left out). It prints the median of each,
their ratio, the cost of one metrics line written alone (``MetricsLog.write`` with and without
events, median of many, 2 ms apart), and the CPU's model and the instruction sets timings
depend on (``speed_vs_torchvision.cpu_flags``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_vs_torchvision import cpu_flags  # noqa: E402 (the sibling script's helper)

from frcnn_cli.engine import metrics as metrics_mod  # noqa: E402
from frcnn_cli.engine.run_config import RunArgs  # noqa: E402
from frcnn_cli.engine.trainer import train_run  # noqa: E402


def seconds_per_iteration(run: Path) -> float:
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    times = [(r["iteration"], r["time"]) for r in steps if "time" in r]
    (i0, t0), (i1, t1) = times[0], times[-1]
    return (t1 - t0) / (i1 - i0)


def train(data: Path, out: Path, iters: int, events: bool, overrides: list[str]) -> float:
    real_open = metrics_mod.MetricsLog.open

    def without_events(self, after=None):
        if after is not None:
            self.truncate_after(after)

    metrics_mod.MetricsLog.open = real_open if events else without_events
    try:
        train_run(RunArgs(command="train", recipe="shapes", train=str(data / "train.json"),
                          out=str(out), iters=iters, device="cpu",
                          overrides=["train.log_every=1", *overrides]))
    finally:
        metrics_mod.MetricsLog.open = real_open
    assert any(out.glob("events.out.tfevents.*")) == events
    return seconds_per_iteration(out)


def write_cost(events: bool, lines: int = 500, gap: float = 0.002) -> float:
    """Seconds the loop waits to write one metrics line of a step's size, median of
    ``lines`` written ``gap`` seconds apart (as iterations are: back to back, the event
    writer's queue of 10 fills and a line waits for the file instead)."""
    record = {"iteration": 0, "lr": 0.02, "loss_rpn_cls": 0.5, "loss_rpn_box": 0.2,
              "loss_det_cls": 0.7, "loss_det_box": 0.3, "loss": 1.7, "time": 1.0}
    with tempfile.TemporaryDirectory() as folder:
        log = metrics_mod.MetricsLog(Path(folder) / "metrics.jsonl", True)
        if events:
            log.open()
        times = []
        for i in range(lines):
            start = time.perf_counter()
            log.write({**record, "iteration": i + 1})
            times.append(time.perf_counter() - start)
            time.sleep(gap)
        log.close()
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for data and runs.")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="5 iterations at 64 px, once: proves the script runs.")
    args = parser.parse_args()
    overrides = ["input.min_size=64", "input.max_size=64",
                 "solver.images_per_batch=2"] if args.smoke else []
    iters, repeats = (5, 1) if args.smoke else (args.iters, args.repeats)
    size, count = ("64", "8") if args.smoke else ("256", "600")

    data = args.out / "data"
    if not (data / "train.json").is_file():
        from frcnn_cli.data.synth import synthesize

        synthesize(data, train=int(count), val=2, size=int(size), seed=0)
    taken = {True: [], False: []}
    for repeat in range(repeats):
        for events in (False, True):
            run = args.out / f"run-{'events' if events else 'none'}-{repeat}"
            if run.exists():
                print(f"{run} exists; remove it to measure again")
                return 2
            taken[events].append(train(data, run, iters, events, overrides))
    on, off = statistics.median(taken[True]), statistics.median(taken[False])
    print(cpu_flags())
    print(f"shapes, {iters} iterations, a metrics line every iteration, {repeats} runs each "
          "(interleaved)")
    print(f"  without event files  {1000 * off:8.1f} ms/iteration  "
          f"({', '.join(f'{1000 * t:.1f}' for t in taken[False])})")
    print(f"  with event files     {1000 * on:8.1f} ms/iteration  "
          f"({', '.join(f'{1000 * t:.1f}' for t in taken[True])})")
    print(f"  ratio                {on / off:8.4f}")
    print(f"one metrics line written: {1e6 * write_cost(False):.0f} us without events, "
          f"{1e6 * write_cost(True):.0f} us with")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
