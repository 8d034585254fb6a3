"""Exercise frcnn's CUDA paths end to end on a GPU machine and report what each one measured.

    python benchmarks/cuda_check.py --out DIR [--device cuda] [--workers 4]

Every check runs the command line a user would type, into DIR, each under its own time limit,
and a failure is reported without stopping the checks after it:

- data: `frcnn data synth` (600 train / 100 val at 256 px, the demo's set);
- joint-amp, alt-amp, joint-fp32: the `shapes` recipe with `frcnn train` / `frcnn train-alt`
  on the GPU (mixed precision with --amp), then `frcnn eval` on the GPU: minutes and VOC07 mAP;
- resume: a 60-iteration run interrupted with SIGINT (Ctrl-C) once it has passed iteration 20,
  then `--resume`d, against the same 60 iterations in one go, and a second uninterrupted run
  against the first: the largest weight difference of each pair. On a GPU two identical runs
  need not agree bit for bit (CUDA's RoI pooling backward adds with atomics), so the second
  pair shows how far apart runs may be;
- torchrun: `torchrun --nproc-per-node 1` on the GPU (the NCCL process group);
- predict: `frcnn predict` on the GPU, and `frcnn eval` of its detections.json;
- benchmark: `frcnn benchmark` of the trained model in fp32 / fp16 / bf16, and of the paper's
  VGG16 network (`voc07-vgg16-joint`, random weights) against torchvision's in fp32 and fp16.

Prints one table row per check; the rows also go to DIR/cuda_check.json. With --budget S, a
command that would start after S seconds is skipped and its check reported as not done.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from frcnn_cli.checkpoint import load_checkpoint

ROWS: list[dict] = []
DEADLINE = float("inf")  # time.time() after which no command starts (--budget)


def frcnn_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "frcnn_cli", "--quiet", *map(str, args)]


def run(name: str, cmd: list[str], log: Path, limit: float) -> float:
    """Runs one command, appending its output to LOG; returns its wall time in seconds."""
    limit = min(limit, DEADLINE - time.time())
    if limit <= 0:
        raise TimeoutError("out of --budget")
    print("$ " + " ".join(cmd[2:] if cmd[1] == "-m" else cmd), flush=True)
    start = time.perf_counter()
    with log.open("a") as f:
        f.write(f"\n### {name}: {' '.join(cmd)}\n")
        f.flush()
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=limit, check=True)
    return time.perf_counter() - start


def record(name: str, fn) -> None:
    """Runs one check, recording its result row or the error that ended it."""
    start = time.perf_counter()
    try:
        row = {"check": name, "ok": True, **fn()}
    except Exception as e:  # a check that breaks must not hide the ones after it
        if isinstance(e, subprocess.CalledProcessError):
            detail = f"exit {e.returncode} (see the log)"
        elif isinstance(e, subprocess.TimeoutExpired):
            detail = f"timed out after {e.timeout:.0f} s"
        else:
            detail = f"{type(e).__name__}: {e}"
        row = {"check": name, "ok": False, "error": detail}
    row["seconds"] = round(time.perf_counter() - start, 1)
    ROWS.append(row)
    print(f"  -> {row}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=4, help="data loader processes")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all checks; those that would start later are skipped")
    parser.add_argument("--only", action="append", metavar="CHECK",
                        help="run this check only (repeatable; 'data' is always made)")
    parser.add_argument("--quick", action="store_true",
                        help="a few iterations per run: checks the paths, not the accuracy")
    args = parser.parse_args()
    if args.budget:
        global DEADLINE
        DEADLINE = time.time() + args.budget
    out, device = args.out, args.device
    out.mkdir(parents=True, exist_ok=True)
    log = out / "cuda_check.log"
    data = out / "data"
    amp = ["--amp"] if device.startswith("cuda") else []
    workers = ["--set", f"data.num_workers={args.workers}"]
    iters = ["--iters", "20"] if args.quick else []
    runs = "2" if args.quick else "30"
    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(info, flush=True)

    def trained(tag: str, command: str, *extra: str) -> dict:
        dest = out / tag
        seconds = run(tag, frcnn_cmd(command, "--recipe", "shapes", "--train",
                                     data / "train.json", "--out", dest, "--device", device,
                                     *workers, *iters, *extra), log, 420)
        run(tag + "-eval", frcnn_cmd("eval", dest / "model.pt", "--data", data / "val.json",
                                     "--metric", "voc07", "--device", device, "--json",
                                     dest / "eval.json"), log, 120)
        mean_ap = json.loads((dest / "eval.json").read_text())["mAP"]
        return {"minutes": round(seconds / 60, 2), "mAP": round(mean_ap, 4)}

    def check_data():
        if not (data / "train.json").is_file():
            run("data", frcnn_cmd("data", "synth", data, "--train", "600", "--val", "100",
                                  "--size", "256", "--seed", "0"), log, 120)
        return {}

    def check_joint_amp():
        return trained("joint-amp", "train", *amp)

    def check_alt_amp():
        return trained("alt-amp", "train-alt", *amp)

    def check_benchmark_shapes():
        result = {}
        for precision in ("fp32", "fp16", "bf16"):
            j = out / f"bench-shapes-{precision}.json"
            run("bench", frcnn_cmd("benchmark", out / "joint-amp" / "model.pt", "-d", device,
                                   "--precision", precision, "--runs", runs, "--image-size",
                                   "256x256", "--json", j), log, 120)
            result[precision] = _speed_summary(json.loads(j.read_text()))
        return result

    def check_benchmark_vgg16_vs_torchvision():
        result = {}
        for precision in ("fp32", "fp16"):
            j = out / f"bench-vgg16-{precision}.json"
            run("bench", frcnn_cmd("benchmark", "--recipe", "voc07-vgg16-joint", "-d", device,
                                   "--precision", precision, "--runs", runs, "--compare",
                                   "torchvision", "--json", j), log, 180)
            result[precision] = _speed_summary(json.loads(j.read_text()))
        return result

    def check_predict():
        images = sorted((data / "images" / "val").glob("*.jpg"))
        dest = out / "predictions"
        run("predict", frcnn_cmd("predict", out / "joint-amp" / "model.pt", *images,
                                 "--out", dest, "--device", device), log, 120)
        run("predict-eval", frcnn_cmd("eval", "--detections", dest / "detections.json",
                                      "--data", data / "val.json", "--metric", "voc07",
                                      "--json", out / "predict-eval.json"), log, 120)
        return {"images": len(images),
                "mAP": round(json.loads((out / "predict-eval.json").read_text())["mAP"], 4)}

    def check_torchrun():
        dest = out / "ddp"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1",
               "--master-port", "29533", "-m", "frcnn_cli", "--quiet", "train", "--recipe",
               "shapes", "--train", str(data / "train.json"), "--out", str(dest),
               "--iters", "30", "--device", device, *amp]
        run("torchrun", cmd, log, 180)
        return {"iteration": load_checkpoint(dest / "model.pt")["meta"]["iteration"]}

    def check_resume():
        return _resume(out, data, device, amp, workers, log)

    def check_joint_fp32():
        return trained("joint-fp32", "train")

    for name, fn in [
        ("data", check_data),
        ("joint-amp", check_joint_amp),
        ("alt-amp", check_alt_amp),
        ("benchmark-shapes", check_benchmark_shapes),
        ("benchmark-vgg16-vs-torchvision", check_benchmark_vgg16_vs_torchvision),
        ("predict", check_predict),
        ("torchrun", check_torchrun),
        ("resume", check_resume),
        ("joint-fp32", check_joint_fp32),
    ]:
        if name == "data" or not args.only or name in args.only:
            record(name, fn)

    print(f"\n{info}\n{'check':<32}{'ok':<5}{'seconds':>8}  result")
    for row in ROWS:
        rest = {k: v for k, v in row.items() if k not in ("check", "ok", "seconds")}
        print(f"{row['check']:<32}{'yes' if row['ok'] else 'NO':<5}{row['seconds']:>8.1f}  "
              f"{json.dumps(rest)}")
    (out / "cuda_check.json").write_text(json.dumps({"env": info, "checks": ROWS}, indent=2))
    return 0 if all(row["ok"] for row in ROWS) else 1


def _speed_summary(result: dict) -> dict:
    """Median total latency of each model (and ours / torchvision) from `frcnn benchmark`."""
    summary = {m["name"] + "_ms": round(m["median_ms"]["total"], 2) for m in result["models"]}
    if result["ratio"]:
        summary["ratio"] = round(result["ratio"]["total"], 3)
    return summary


def _resume(out: Path, data: Path, device: str, amp: list[str], workers: list[str],
            log: Path) -> dict:
    base = ["train", "--recipe", "shapes", "--train", data / "train.json", "--device", device,
            "--iters", "60", "--checkpoint-every", "1000", "--seed", "3", *amp, *workers]
    for tag in ("whole", "whole2"):
        run("resume-" + tag, frcnn_cmd(*base, "--out", out / f"resume-{tag}"), log, 180)
    split = out / "resume-split"
    proc = subprocess.Popen(frcnn_cmd(*base, "--out", split), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = split / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and _last_iteration(metrics) >= 20:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=60)
    with log.open("a") as f:
        f.write(f"\n### resume-split (interrupted)\n{output}")
    if proc.returncode != 130:
        raise RuntimeError(f"interrupted run exited {proc.returncode}, not 130")
    stopped_at = load_checkpoint(split / "last.pt")["meta"]["iteration"]
    run("resume-continue", frcnn_cmd("train", "--resume", split), log, 180)

    def weights(tag: str) -> dict:
        return load_checkpoint(out / f"resume-{tag}" / "model.pt")["model"]

    def max_diff(a: dict, b: dict) -> float:
        return max((a[k].double() - b[k].double()).abs().max().item() for k in a
                   if a[k].is_floating_point())

    whole = weights("whole")
    return {"stopped_at": stopped_at, "said_resume": "--resume" in output,
            "max_abs_diff_resumed_vs_whole": max_diff(whole, weights("split")),
            "max_abs_diff_whole_vs_whole": max_diff(whole, weights("whole2"))}


def _last_iteration(metrics: Path) -> int:
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]).get("iteration", 0) if lines else 0
    except json.JSONDecodeError:  # a line being written
        return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
