"""Inference latency of frcnn's Faster R-CNN against torchvision's, built to the same recipe.

    python benchmarks/speed_vs_torchvision.py                       # VGG16 paper model, 375x500
    python benchmarks/speed_vs_torchvision.py --runs 9 --bf16       # also frcnn in bfloat16

Both models get the same network (``voc07-vgg16-joint``: VGG16 conv5_3, RoI max pooling 7x7,
fc6/fc7 4096, 21 classes), the same 600/1000 resize, 6000 -> 300 proposals at NMS 0.7 and
class NMS 0.3 (torchvision's via :func:`frcnn_cli.model.reference.build_reference`). They run
one image, fp32, in one process, interleaved (ours then theirs, then the other way round) so
both see the same machine load; the script prints each model's median latency and the ratio
ours / torchvision (of the medians, and the median of each round's ratio, which is steadier
on a shared machine). Weights are random (timing does not depend on them), and both run under
``torch.inference_mode``.

With ``--bf16`` frcnn also runs under CPU bfloat16 autocast (fp16 on CUDA); the script prints
its latency and how far its outputs are from fp32 on the same image (RPN objectness and the
proposals' agreement).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from frcnn_cli.config import load_recipe
from frcnn_cli.model.faster_rcnn import build_model
from frcnn_cli.model.reference import build_reference

# The instruction sets CPU timings depend on: fp32 (avx2, avx512f), INT8 (avx512_vnni, amx),
# bf16 (avx512_bf16, amx).
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_flags() -> str:
    """Which of :data:`FLAGS` this CPU has (from /proc/cpuinfo, as lscpu shows them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    have = set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                     if line.startswith("flags")), []))
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model}: " + ", ".join(f"{f} {'yes' if f in have else 'no'}" for f in FLAGS)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="voc07-vgg16-joint")
    parser.add_argument("--classes", type=int, default=20, help="object classes (VOC: 20)")
    parser.add_argument("--size", default="375x500", help="image HxW before the model's resize")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true",
                        help="also time frcnn in reduced precision (bf16 CPU, fp16 CUDA)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    recipe = load_recipe(args.recipe, ["model.pretrained=false"])
    torch.manual_seed(0)
    ours = build_model(recipe, args.classes).to(device).eval()
    theirs = build_reference(recipe, args.classes).to(device).eval()
    h, w = (int(v) for v in args.size.split("x"))
    image = torch.rand(3, h, w, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_ours() -> None:
        ours([image])
        sync()

    def run_theirs() -> None:
        theirs([image])
        sync()

    low = torch.bfloat16 if device.type == "cpu" else torch.float16

    def run_low() -> None:
        with torch.autocast(device.type, dtype=low):
            ours([image])
        sync()

    print(f"recipe {recipe.name}: {recipe.model.backbone}, {args.classes + 1} classes, "
          f"image {h}x{w} -> shorter side {recipe.input.min_size}, device {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(cpu_flags())
    times: dict[str, list[float]] = {"frcnn": [], "torchvision": []}
    if args.bf16:
        times[f"frcnn {str(low).split('.')[-1]}"] = []
    fns = {"frcnn": run_ours, "torchvision": run_theirs}
    if args.bf16:
        fns[f"frcnn {str(low).split('.')[-1]}"] = run_low
    with torch.inference_mode():
        for fn in fns.values():  # warm-up: allocator, kernels, anchor cache
            fn()
        for i in range(args.runs):
            names = list(fns) if i % 2 == 0 else list(reversed(fns))
            for name in names:
                times[name].append(timed(fns[name]))
            print(f"run {i + 1}: " + "  ".join(f"{n} {times[n][-1] * 1000:.0f} ms"
                                                for n in fns), flush=True)

    med = {n: statistics.median(t) for n, t in times.items()}
    print()
    for name, t in med.items():
        print(f"{name:>16}: median {t * 1000:7.0f} ms   (min {min(times[name]) * 1000:.0f})")
    rounds = statistics.median(a / b for a, b in zip(times["frcnn"], times["torchvision"],
                                                     strict=True))
    print(f"{'ratio':>16}: frcnn / torchvision = {med['frcnn'] / med['torchvision']:.3f} "
          f"(median of the per-round ratios: {rounds:.3f})")
    if args.bf16:
        name = f"frcnn {str(low).split('.')[-1]}"
        print(f"{'ratio':>16}: {name} / torchvision = {med[name] / med['torchvision']:.3f}")
        _compare_precision(ours, image, low, device)


@torch.inference_mode()
def _compare_precision(model, image: torch.Tensor, low: torch.dtype,
                       device: torch.device) -> None:
    """How far reduced precision moves the RPN: objectness and proposal boxes."""
    from torchvision.ops import box_iou

    full = model([image], rpn_only=True)[0]
    with torch.autocast(device.type, dtype=low):
        half = model([image], rpn_only=True)[0]
    n = min(len(full["boxes"]), len(half["boxes"]), 100)
    best = box_iou(full["boxes"][:n].float(), half["boxes"].float()).max(dim=1).values
    print(f"{'precision':>16}: top-{n} fp32 proposals found again in {str(low)[6:]} at IoU "
          f">= 0.9: {(best >= 0.9).float().mean():.1%}; top score fp32 "
          f"{full['scores'][0]:.4f} vs {half['scores'][0].float():.4f}")


if __name__ == "__main__":
    main()
