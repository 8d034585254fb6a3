"""What a training step could gain from other kernels: every convolution and fc layer of a
recipe's model timed in each variant CPU PyTorch offers for it.

    python benchmarks/train_step_variants.py                       # VGG16, one 375x500 image
    python benchmarks/train_step_variants.py --recipe shapes --size 256x256 --batch 8 --classes 3

One training forward of frcnn's model (random weights, ``model.pretrained=false``) records the
input shape of every Conv2d and Linear and whether it trains (frozen layers run forward only;
a layer whose input needs no gradient, e.g. the first trained conv after frozen ones, computes
no input gradient). Each layer is then timed alone, median of ``--runs``:

- convolutions: forward and backward in the default memory format (NCHW, what CPU training
  runs) and channels-last (NHWC), and the input gradient as a forward convolution with the
  flipped, transposed kernel (stride-1 layers);
- fc layers: forward, input gradient and weight gradient through ``torch.addmm``/``mm`` (MKL,
  what training runs) and oneDNN's ``mkldnn_linear``.

The last lines add up the step's convolution and fc time as training runs it, and with the
fastest variant of every operation taken separately, with no memory-format conversion between
them: a lower bound on what any mix of these kernels could reach.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from train_step_vs_torchvision import batch_of  # the step benchmark's images and boxes

from frcnn_cli.config import load_recipe
from frcnn_cli.model.faster_rcnn import build_model

CL = torch.channels_last


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def record_layers(model: nn.Module, images, targets) -> list[tuple[str, nn.Module, tuple, bool]]:
    """(name, layer, input shape, input needs a gradient) of each Conv2d/Linear, in call
    order, frozen ones included (they are timed forward only)."""
    seen: list[tuple[str, nn.Module, tuple, bool]] = []
    hooks = []
    for name, layer in model.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            def hook(mod, args, _name=name):
                seen.append((_name, mod, tuple(args[0].shape), args[0].requires_grad))
            hooks.append(layer.register_forward_pre_hook(hook))
    model(images, targets)
    for h in hooks:
        h.remove()
    return seen


def backward(conv: nn.Conv2d, grad, x, weight, mask: list[bool]):
    """The gradients ``mask`` asks for (input, weight, bias) of ``conv`` at ``x``."""
    bias = None if conv.bias is None else list(conv.bias.shape)
    return torch.ops.aten.convolution_backward(grad, x, weight, bias, list(conv.stride),
                                               list(conv.padding), list(conv.dilation), False,
                                               [0, 0], conv.groups, mask)


def conv_variants(conv: nn.Conv2d, shape: tuple, input_grad: bool, runs: int) -> dict[str, float]:
    x = torch.randn(shape)
    w, b = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    g = torch.randn_like(F.conv2d(x, w, b, *args))  # the output's gradient, NCHW
    mask = [input_grad, True, b is not None]
    out = {}
    for fmt, xf, wf, gf in (("nchw", x, w, g),
                            ("nhwc", x.contiguous(memory_format=CL),
                             w.contiguous(memory_format=CL), g.contiguous(memory_format=CL))):
        out[f"fwd {fmt}"] = median_ms(lambda xf=xf, wf=wf: F.conv2d(xf, wf, b, *args), runs)
        if conv.weight.requires_grad:
            out[f"bwd {fmt}"] = median_ms(lambda gf=gf, xf=xf, wf=wf: backward(
                conv, gf, xf, wf, mask), runs)
    if conv.weight.requires_grad and input_grad and conv.stride == (1, 1) and conv.groups == 1:
        # dL/dx = conv(dL/dy, W flipped and transposed): a forward convolution, in either format
        wt = w.transpose(0, 1).flip(2, 3).contiguous()
        weight_only = median_ms(lambda: backward(conv, g, x, w, [False, True, b is not None]),
                                runs)
        for fmt, gf, wtf in (("nchw", g, wt), ("nhwc", g.contiguous(memory_format=CL),
                                                wt.contiguous(memory_format=CL))):
            out[f"bwd via fwd {fmt}"] = weight_only + median_ms(
                lambda gf=gf, wtf=wtf: F.conv2d(gf, wtf, None, 1, conv.padding), runs)
    return out


def linear_variants(fc: nn.Linear, shape: tuple, input_grad: bool, runs: int) -> dict[str, float]:
    x = torch.randn(shape).flatten(1)
    w, b = fc.weight.detach(), fc.bias.detach()
    g = torch.randn(x.shape[0], fc.out_features)
    onednn = torch.ops.aten.mkldnn_linear
    wt, gt, xt = w.t().contiguous(), g.t().contiguous(), x.t().contiguous()
    out = {"fwd mkl": median_ms(lambda: torch.addmm(b, x, w.t()), runs),
           "fwd onednn": median_ms(lambda: onednn(x.to_mkldnn(), w, b).to_dense(), runs),
           "dW mkl": median_ms(lambda: g.t().mm(x), runs),
           "dW onednn": median_ms(lambda: onednn(gt.to_mkldnn(), xt, None).to_dense(), runs)}
    if input_grad:
        out["dx mkl"] = median_ms(lambda: g.mm(w), runs)
        out["dx onednn"] = median_ms(lambda: onednn(g.to_mkldnn(), wt, None).to_dense(), runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="voc07-vgg16-joint")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--size", default="375x500", help="image HxW before the model's resize")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per variant")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, ["model.pretrained=false"])
    torch.manual_seed(0)
    model = build_model(recipe, args.classes).train()
    h, w = (int(v) for v in args.size.split("x"))
    images, targets = batch_of(args.batch, h, w, args.classes)
    layers = record_layers(model, images, targets)
    print(f"recipe {recipe.name}: {args.batch} image(s) {h}x{w}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}; ms per call, median of {args.runs}")

    as_run = best = 0.0
    for name, layer, shape, input_grad in layers:
        is_conv = isinstance(layer, nn.Conv2d)
        times = (conv_variants if is_conv else linear_variants)(layer, shape, input_grad,
                                                               args.runs)
        trains = layer.weight.requires_grad
        if is_conv:
            current = ["fwd nchw", "bwd nchw"] if trains else ["fwd nchw"]
        else:
            current = ["fwd mkl", "dW mkl", "dx mkl"] if input_grad else ["fwd mkl", "dW mkl"]
        as_run += sum(times[k] for k in current)
        best += sum(min(t for k, t in times.items() if k.split()[0] == phase)
                    for phase in {k.split()[0] for k in current})
        cells = "  ".join(f"{k} {t:.1f}" for k, t in times.items())
        print(f"{name:<28} {'x'.join(map(str, shape)):<18} {'trains' if trains else 'frozen':<6}  "
              f"{cells}", flush=True)
    print()
    print(f"convolutions and fc layers as training runs them: {as_run:8.0f} ms")
    print(f"the fastest variant of every operation:           {best:8.0f} ms "
          f"({as_run - best:.0f} ms less, {100 * (as_run - best) / as_run:.1f} %)")


if __name__ == "__main__":
    main()
