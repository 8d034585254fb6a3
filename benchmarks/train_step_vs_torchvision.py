"""Training speed of frcnn's Faster R-CNN against torchvision's, built to the same recipe.

    python benchmarks/train_step_vs_torchvision.py                          # VGG16, 375x500
    python benchmarks/train_step_vs_torchvision.py --recipe shapes --size 256x256 --batch 8
    python benchmarks/train_step_vs_torchvision.py --set model.channels_last=false

One training step is forward (losses), backward and an SGD step (momentum 0.9, the recipe's
lr), on the same images and boxes, with random weights (``model.pretrained=false``: no
download; speed does not depend on the values). torchvision's ``FasterRCNN`` is built to the
recipe by :func:`frcnn_cli.model.reference.build_reference` (same backbone, head, anchors,
resize, proposal counts and samplers). The two run interleaved in one process (ours then
theirs, then the other way round), so both see the same machine load; the script prints each
model's median step time and the ratio ours / torchvision (of the medians, and the median of
each round's ratio, steadier on a shared machine). ``--profile`` also prints where frcnn's
step spends its time (torch.profiler, by operator).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from frcnn_cli.config import load_recipe
from frcnn_cli.model.faster_rcnn import build_model
from frcnn_cli.model.reference import build_reference


def batch_of(n: int, h: int, w: int, classes: int, seed: int = 0):
    """``n`` random images [3, h, w] in 0..1 with three boxes each."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g))
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = (0.15 + 0.25 * torch.rand(3, 2, generator=g)) * torch.tensor([w, h])
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1),
                        "labels": torch.randint(1, classes + 1, (3,), generator=g)})
    return images, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="voc07-vgg16-joint")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE", help="recipe override, for frcnn only")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--size", default="375x500", help="image HxW before the model's resize")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--runs", type=int, default=5, help="timed steps per model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    recipe = load_recipe(args.recipe, ["model.pretrained=false", *args.overrides])
    reference_recipe = load_recipe(args.recipe, ["model.pretrained=false"])
    torch.manual_seed(0)
    ours = build_model(recipe, args.classes).train()
    theirs = build_reference(reference_recipe, args.classes).train()
    h, w = (int(v) for v in args.size.split("x"))
    images, targets = batch_of(args.batch, h, w, args.classes)
    optimizers = {name: torch.optim.SGD([p for p in m.parameters() if p.requires_grad],
                                        lr=recipe.solver.lr, momentum=0.9)
                  for name, m in (("frcnn", ours), ("torchvision", theirs))}
    models = {"frcnn": ours, "torchvision": theirs}

    def step(name: str) -> float:
        start = time.perf_counter()
        losses = models[name](images, [dict(t) for t in targets])
        optimizers[name].zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizers[name].step()
        return time.perf_counter() - start

    print(f"recipe {recipe.name}: {recipe.model.backbone}, {args.classes + 1} classes, "
          f"{args.batch} image(s) {h}x{w} -> shorter side {recipe.input.min_size}, "
          f"channels_last {recipe.model.channels_last} (inference; CPU training runs NCHW), "
          f"{torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    times: dict[str, list[float]] = {name: [] for name in models}
    for name in models:  # warm-up
        step(name)
    for i in range(args.runs):
        for name in (list(models) if i % 2 == 0 else list(reversed(models))):
            times[name].append(step(name))
        print(f"step {i + 1}: " + "  ".join(f"{n} {times[n][-1] * 1000:.0f} ms" for n in models),
              flush=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    print()
    for name, t in med.items():
        print(f"{name:>12}: median {t * 1000:8.0f} ms   (min {min(times[name]) * 1000:.0f})")
    rounds = statistics.median(a / b for a, b in zip(times["frcnn"], times["torchvision"],
                                                     strict=True))
    print(f"{'ratio':>12}: frcnn / torchvision = {med['frcnn'] / med['torchvision']:.3f} "
          f"(median of the per-round ratios: {rounds:.3f})")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step("frcnn")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
