"""Speed of the detection head after truncated SVD (Fast R-CNN Section 3.1), on the paper's VGG16.

    python benchmarks/svd_head.py                            # fc6 rank 1024, fc7 rank 256, 300 RoIs
    python benchmarks/svd_head.py --whole --runs 5           # also whole images, end to end

Builds the ``voc07-vgg16-joint`` model (21 classes, random weights: timing does not depend on
them; fc6 25088 -> 4096, fc7 4096 -> 4096), truncates fc6 and fc7 as ``frcnn export --svd``
does (:func:`frcnn_cli.export.svd.compress`) and prints how long the SVD took, the head's
parameters, and fc6+fc7's median time on 300 pooled RoIs before and after, the two heads
interleaved (:func:`frcnn_cli.export.svd.time_heads`). With ``--whole`` it also times whole
detections of one 375x500 image with both models (:func:`frcnn_cli.export.benchmark.benchmark`,
interleaved). For a trained checkpoint and the mAP change, use ``frcnn export --svd --data``.
"""

from __future__ import annotations

import argparse
import time

import torch

from frcnn_cli.config import load_recipe
from frcnn_cli.export import svd
from frcnn_cli.model.faster_rcnn import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="voc07-vgg16-joint")
    parser.add_argument("--fc6", type=int, default=1024, help="fc6 rank (the paper: 1024)")
    parser.add_argument("--fc7", type=int, default=256, help="fc7 rank (the paper: 256)")
    parser.add_argument("--rois", type=int, default=None,
                        help="RoIs per forward (default: the recipe's test proposals, 300)")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of head timing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--whole", action="store_true", help="also time whole detections")
    parser.add_argument("--runs", type=int, default=5, help="with --whole: timed runs per model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = build_model(load_recipe(args.recipe, ["model.pretrained=false"]), 20).eval()
    start = time.perf_counter()
    small, layers = svd.compress(model, args.fc6, args.fc7)
    print(f"truncated SVD of fc6 and fc7: {time.perf_counter() - start:.1f} s "
          f"({torch.get_num_threads()} threads, torch {torch.__version__})")
    for x in layers:
        print(f"  {x.name}: {x.out_features} x {x.in_features} -> rank {x.rank}: "
              f"{x.parameters / 1e6:.1f} M -> {x.parameters_svd / 1e6:.1f} M parameters")

    timing = svd.time_heads({"full": model, "svd": small}, args.rois, budget_s=args.budget)
    rounds = len(timing.runs["full"])
    print(f"fc6+fc7 on {timing.rois} RoIs, median of {rounds} interleaved runs:")
    for name in ("full", "svd"):
        print(f"  {name:>4}: {timing.median(name) * 1000:8.1f} ms  "
              f"(min {min(timing.runs[name]) * 1000:.1f})  "
              f"{svd.head_parameters(model if name == 'full' else small) / 1e6:.1f} M parameters")
    print(f"  speed-up: {timing.speedup('svd', 'full'):.2f}x")

    if args.whole:
        from frcnn_cli.export.benchmark import benchmark

        image = torch.rand(3, 375, 500, generator=torch.Generator().manual_seed(0))
        result = benchmark({"full": model, "svd": small}, image, torch.device("cpu"),
                           warmup=1, runs=args.runs)
        full, thin = result.models
        print(f"whole detection of a 375x500 image, median of {args.runs} interleaved runs:")
        for speed in (full, thin):
            print(f"  {speed.name:>4}: {speed.median() * 1000:8.1f} ms  "
                  f"(RoI pooling and head {speed.median('roi_head') * 1000:.1f} ms)")
        print(f"  speed-up: {full.median() / thin.median():.2f}x")


if __name__ == "__main__":
    main()
