"""Inference speed of a detector, stage by stage, and of torchvision's built to the same recipe.

One image, batch 1, under ``torch.inference_mode`` (and autocast for bf16/fp16). The stages
are split by hooks at module boundaries of an ordinary forward, so nothing is re-implemented
and torchvision's ``FasterRCNN`` is split the same way:

| stage | from | to |
| --- | --- | --- |
| preprocess | forward starts | the transform returns (resize, normalise, pad) |
| backbone | | the shared convs return |
| rpn | | the RPN returns (head, decoding, NMS: the proposals) |
| roi_head | | the class and box layers return (RoI pooling, fc6/fc7 or res5) |
| postprocess | | forward returns (softmax, decoding, class NMS, boxes to input pixels) |

An exported file (:func:`frcnn_cli.inference.exported.load_exported_model`) is one graph: it is
timed whole, without stages or FLOPs (0), beside the models above (:func:`exported_to_time`).

A Fast R-CNN detector trained on Selective Search proposals has no RPN stage: the search runs
first, on the CPU, timed as the stage ``selective_search``, and the network then detects on its
boxes (the paper's Section 1: the search, not the network, is the bottleneck).

On CUDA every boundary synchronises the device, so each stage is charged its own kernels.
Models are timed interleaved (ours then theirs, then the other way round) so both see the
same machine load; medians are reported.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward (convolutions and matrix
products, multiply-add = 2 FLOPs; RoI pooling, NMS and element-wise work are not counted), per
part (backbone, rpn, roi_heads). Memory: on CUDA, the peak of ``torch.cuda.max_memory_allocated``
during one forward above what was allocated before it (weights excluded); on the CPU, the
peak growth of the process's resident set size during the model's first forward, sampled
every millisecond from ``/proc/self/statm`` (allocator caches make later forwards reuse
memory, so it is measured cold; 0 where /proc is missing).

    models, source = models_to_time(recipe="voc07-vgg16-joint", compare=True)
    result = benchmark(models, benchmark_image(size=(375, 500)), torch.device("cpu"))
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from frcnn_cli import devices
from frcnn_cli.errors import InputError

STAGES = ("preprocess", "backbone", "rpn", "roi_head", "postprocess")
SEARCH_STAGES = ("selective_search", "preprocess", "backbone", "roi_head", "postprocess")
STAGE_TITLES = {"preprocess": "preprocess (resize, normalise)", "backbone": "backbone",
                "rpn": "RPN and proposals", "roi_head": "RoI pooling and head",
                "postprocess": "postprocess (class NMS)",
                "selective_search": "Selective Search (CPU, proposals)"}
PARTS = ("backbone", "rpn", "roi_heads")


@dataclass
class ModelSpeed:
    """Timings of one model: seconds per run for each stage (:data:`STAGES`, or
    :data:`SEARCH_STAGES` for a detector on Selective Search) and in total."""

    name: str
    stages: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    totals: list[float] = field(default_factory=list)
    flops: float = 0.0                       # one forward
    part_flops: dict[str, float] = field(default_factory=dict)
    peak_memory: int = 0                     # bytes, see the module doc
    detections: int = 0

    def median(self, stage: str | None = None) -> float:
        return statistics.median(self.totals if stage is None else self.stages[stage])

    def to_dict(self) -> dict[str, Any]:
        total = self.median()
        return {
            "name": self.name,
            "median_ms": {**{s: self.median(s) * 1000 for s in self.stages},
                          "total": total * 1000},
            "runs_ms": {**{s: [t * 1000 for t in v] for s, v in self.stages.items()},
                        "total": [t * 1000 for t in self.totals]},
            "images_per_s": 1.0 / total,
            "gflops": self.flops / 1e9,
            "part_gflops": {k: v / 1e9 for k, v in self.part_flops.items()},
            "gflops_per_s": self.flops / 1e9 / total,
            "peak_memory_mib": self.peak_memory / 2**20,
            "detections": self.detections,
        }


@dataclass
class BenchmarkResult:
    device: str
    precision: str
    image_size: tuple[int, int]
    threads: int
    warmup: int
    runs: int
    models: list[ModelSpeed]
    memory_kind: str

    def ratio(self, stage: str | None = None) -> float | None:
        """ours / torchvision (median time), None without --compare."""
        if len(self.models) < 2:
            return None
        return self.models[0].median(stage) / self.models[1].median(stage)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device, "precision": self.precision,
            "image_size": list(self.image_size), "threads": self.threads,
            "warmup": self.warmup, "runs": self.runs, "memory": self.memory_kind,
            "torch": torch.__version__,
            "models": [m.to_dict() for m in self.models],
            "ratio": None if len(self.models) < 2 else {
                **{s: self.ratio(s) for s in self.models[0].stages}, "total": self.ratio()},
        }


class StageClock:
    """Timestamps one forward of a detector at its stage boundaries (see module doc)."""

    def __init__(self, model: nn.Module, sync: Callable[[], None]) -> None:
        heads = model.roi_heads
        head_end = heads.box_predictor if hasattr(heads, "box_predictor") else heads.bbox_pred
        self.sync, self.marks = sync, {}
        self.handles = [model.register_forward_pre_hook(self._mark("start")),
                        model.transform.register_forward_hook(self._mark("preprocess")),
                        model.backbone.register_forward_hook(self._mark("backbone")),
                        model.rpn.register_forward_hook(self._mark("rpn")),
                        head_end.register_forward_hook(self._mark("roi_head")),
                        model.register_forward_hook(self._mark("postprocess"))]

    def _mark(self, name: str):
        def hook(*_: Any) -> None:
            self.sync()
            self.marks[name] = time.perf_counter()
        return hook

    def stages(self) -> dict[str, float]:
        """Seconds per stage of the last forward (no ``rpn`` when proposals were given)."""
        order = [s for s in ("start", *STAGES) if s in self.marks]
        return {s: self.marks[s] - self.marks[p] for p, s in zip(order, order[1:], strict=False)}

    def clear(self) -> None:
        self.marks.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class WholeClock:
    """The clock of an exported file: one graph, no stage boundaries to hook."""

    def clear(self) -> None:
        pass

    def stages(self) -> dict[str, float]:
        return {}

    def remove(self) -> None:
        pass


def count_flops(model: nn.Module, image: Tensor, autocast: Any,
                proposals: list[Tensor] | None = None) -> tuple[float, dict[str, float]]:
    """FLOPs of one forward (on ``proposals`` when given), in total and per part (backbone,
    rpn, roi_heads); 0 for an exported file, whose operators are not torch's."""
    if not isinstance(model, nn.Module):
        return 0.0, {}
    from torch.utils.flop_counter import FlopCounterMode

    def mkldnn_linear(x_shape, w_shape, *_, **__) -> int:  # our fp32 CPU path for fc6/fc7
        return 2 * x_shape[0] * w_shape[0] * w_shape[1]

    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.mkldnn_linear: mkldnn_linear})
    with torch.inference_mode(), autocast(), counter:
        _forward(model, image, proposals)
    counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    root = type(model).__name__
    return float(counter.get_total_flops()), {p: float(counts.get(f"{root}.{p}", 0))
                                              for p in PARTS}


def _rss() -> int:
    """Resident set size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@contextlib.contextmanager
def _rss_peak() -> Iterator[list[int]]:
    """Yields a one-element list that holds, on exit, the peak RSS growth during the block."""
    result, stop, base = [0], threading.Event(), _rss()
    peak = [base]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result[0] = max(peak[0], _rss()) - base


def benchmark(models: dict[str, nn.Module], image: Tensor, device: torch.device,
              precision: str = "fp32", warmup: int = 2, runs: int = 10,
              reporter=None) -> BenchmarkResult:
    """Time each model (eval mode, on ``device``) on ``image`` [3, H, W] in 0..1; the first
    model is "ours" for the ratio. Models run interleaved, warm-up runs first."""
    from frcnn_cli.progress import SILENT

    reporter = reporter or SILENT
    cuda = device.type == "cuda"
    autocast = functools.partial(devices.autocast, device, precision, emulated_fp16=True)
    sync = functools.partial(devices.synchronize, device)
    from frcnn_cli.proposals.sources import proposals_for

    image = image.to(device)
    nets = [m.eval().to(device) for m in models.values()]
    searches = [proposals_for(net) for net in nets]  # Selective Search for a Fast R-CNN
    speeds = [ModelSpeed(name, _stages(net, search))
              for name, net, search in zip(models, nets, searches, strict=True)]
    given = [None if search is None else [search.boxes(image, None).to(device)]
             for search in searches]  # the proposals of the untimed passes
    with torch.inference_mode():
        for k, speed in enumerate(speeds):  # memory first: the CPU's is cold
            speed.peak_memory = _peak_memory(nets[k], image, device, autocast, sync, given[k])
    for k, speed in enumerate(speeds):
        speed.flops, speed.part_flops = count_flops(nets[k], image, autocast, given[k])
    with torch.inference_mode(), reporter.task("benchmark", total=warmup + runs) as task:
        _interleaved(nets, searches, speeds, image, device, autocast, sync, warmup, runs, task)
    memory_kind = ("CUDA max_memory_allocated above the weights, one forward" if cuda else
                   "growth of the process RSS during the first forward (sampled every ms)")
    return BenchmarkResult(str(device), precision, (image.shape[1], image.shape[2]),
                           torch.get_num_threads(), warmup, runs, speeds, memory_kind)


def _interleaved(nets: list, searches: list, speeds: list[ModelSpeed], image: Tensor,
                 device: torch.device, autocast, sync, warmup: int, runs: int, task) -> None:
    """``warmup + runs`` rounds, each model once a round, the order reversed every other
    round; the runs after the warm-up recorded in ``speeds``."""
    clocks = [_clock(net, sync) for net in nets]
    try:
        for i in range(warmup + runs):
            order = range(len(nets)) if i % 2 == 0 else reversed(range(len(nets)))
            for k in order:
                sync()
                start = time.perf_counter()
                proposals = None
                if searches[k] is not None:  # on the CPU, before the network
                    proposals = [searches[k].boxes(image, None).to(device)]
                    sync()
                    searched = time.perf_counter() - start
                clocks[k].clear()
                with autocast():
                    out = _forward(nets[k], image, proposals)
                sync()
                total = time.perf_counter() - start
                if i >= warmup:
                    speeds[k].totals.append(total)
                    if proposals is not None:
                        speeds[k].stages["selective_search"].append(searched)
                    for stage, t in clocks[k].stages().items():
                        speeds[k].stages[stage].append(t)
                    speeds[k].detections = len(out[0]["boxes"])
            task.update(advance=1)
    finally:
        for clock in clocks:
            clock.remove()


@dataclass
class BenchmarkArgs:
    """What ``frcnn benchmark`` was asked (the options of its ``--help``): a ``checkpoint``
    (or an exported ONNX or TorchScript file), or a ``recipe`` with ``overrides`` and
    ``classes``, random weights."""

    checkpoint: str | os.PathLike | None = None
    recipe: str | None = None
    overrides: list[str] = field(default_factory=list)
    classes: int = 20
    image: str | os.PathLike | None = None
    size: tuple[int, int] = (375, 500)
    device: str = "cpu"
    precision: str = "fp32"
    warmup: int = 2
    runs: int = 10
    compare: bool = False
    json_out: str | os.PathLike | None = None


def run_benchmark(args: BenchmarkArgs, reporter=None) -> tuple[BenchmarkResult, str, Any]:
    """``frcnn benchmark``: the inputs and the ``--json`` output checked before any work, the
    models loaded or built, timed, the result written; returns the result, what was timed
    (in words) and the first model."""
    from frcnn_cli.devices import resolve_device
    from frcnn_cli.files import prepare_output_file, require_file, write_result
    from frcnn_cli.inference.exported import exported_format
    from frcnn_cli.outputs import BENCHMARK

    if (args.checkpoint is None) == (args.recipe is None):
        raise InputError("give a checkpoint or --recipe NAME (exactly one of them)")
    if args.overrides and args.recipe is None:
        raise InputError("--set changes a --recipe; a checkpoint keeps its own recipe")
    if args.checkpoint is not None:
        require_file(args.checkpoint, "checkpoint")
    if args.json_out is not None:
        prepare_output_file(args.json_out, BENCHMARK,
                            [p for p in (args.checkpoint, args.image) if p], "--json file")
    device = resolve_device(args.device)
    if args.checkpoint is not None and exported_format(args.checkpoint) is not None:
        models, source = exported_to_time(args.checkpoint, args.compare, device)
    else:
        models, source = models_to_time(args.checkpoint, args.recipe, args.overrides,
                                        args.classes, args.compare)
    result = benchmark(models, benchmark_image(args.image, args.size), device, args.precision,
                       args.warmup, args.runs, reporter)
    if args.json_out is not None:
        write_result(args.json_out, BENCHMARK, {"source": source, **result.to_dict()})
    return result, source, models["frcnn"]


def _clock(net: Any, sync: Callable[[], None]) -> StageClock | WholeClock:
    return StageClock(net, sync) if isinstance(net, nn.Module) else WholeClock()


def _stages(net: Any, search: Any) -> dict[str, list[float]]:
    """The stages ``net`` is timed by: none for an exported file (one graph)."""
    if not isinstance(net, nn.Module):
        return {}
    return {s: [] for s in (STAGES if search is None else SEARCH_STAGES)}


def _peak_memory(net: nn.Module, image: Tensor, device: torch.device, autocast, sync,
                 proposals: list[Tensor] | None = None) -> int:
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with autocast():
            _forward(net, image, proposals)
        sync()
        return torch.cuda.max_memory_allocated(device) - before
    with _rss_peak() as peak, autocast():
        _forward(net, image, proposals)
    return peak[0]


def _forward(net: nn.Module, image: Tensor, proposals: list[Tensor] | None) -> Any:
    """``net([image])``, on ``proposals`` when given (torchvision's model takes none)."""
    return net([image]) if proposals is None else net([image], proposals=proposals)


def models_to_time(checkpoint: str | os.PathLike | None = None, recipe: str | None = None,
                   overrides: Sequence[str] = (), num_classes: int = 20,
                   compare: bool = False) -> tuple[dict[str, nn.Module], str]:
    """The models for :func:`benchmark`, and what the first one is: the ``checkpoint``'s
    model, or else the ``recipe``'s with ``num_classes`` and random weights (seed 0, nothing
    downloaded); with ``compare``, also torchvision's FasterRCNN built to the same recipe."""
    from frcnn_cli import build_model, load_model

    if checkpoint is not None:
        model, source = load_model(checkpoint), str(checkpoint)
    else:
        from frcnn_cli.config import load_recipe

        loaded = load_recipe(recipe, ["model.pretrained=false", *overrides])
        torch.manual_seed(0)
        model = build_model(loaded, num_classes).eval()
        source = f"recipe {loaded.name} (random weights)"
    models = {"frcnn": model}
    if compare:
        if model.proposal_source:
            raise InputError(f"{source} is a Fast R-CNN detector on Selective Search "
                             "proposals; torchvision's FasterRCNN proposes with an RPN: "
                             "compare a Faster R-CNN checkpoint or a --recipe")
        models["torchvision"] = _torchvision_model(model)
    return models, source


def _torchvision_model(model) -> nn.Module:
    """torchvision's FasterRCNN built to ``model``'s recipe and classes, random weights
    (seed 0)."""
    from frcnn_cli.model.reference import build_reference

    torch.manual_seed(0)
    return build_reference(model.recipe, model.num_classes)


def exported_to_time(path: str | os.PathLike, compare: bool = False,
                     device: str | torch.device = "cpu") -> tuple[dict[str, Any], str]:
    """:func:`models_to_time` for an exported file (``frcnn benchmark M.onnx``): the file as
    ``frcnn``, and with ``compare`` torchvision's FasterRCNN built to the recipe it carries
    (random weights, seed 0; InputError for a file too old to carry its recipe)."""
    from frcnn_cli.inference.exported import load_exported_model

    detector = load_exported_model(path, device)
    models: dict[str, Any] = {"frcnn": detector}
    if compare:
        if not detector.recipe_known:
            raise InputError(f"{path} does not carry its recipe (exported before frcnn "
                             "stored it), so torchvision's model cannot be built to it; export "
                             "the checkpoint again")
        models["torchvision"] = _torchvision_model(detector)
    return models, detector.describe()


def benchmark_image(path: str | os.PathLike | None = None,
                    size: tuple[int, int] = (375, 500)) -> Tensor:
    """[3, H, W] float in 0..1: the picture at ``path``, or else a synthetic one of shapes of
    ``size`` (height, width; seed 0)."""
    import numpy as np

    if path is not None:
        from frcnn_cli.data.images import read_image

        pixels = read_image(path)
    else:
        from frcnn_cli.data.synth import SynthConfig, draw_image

        h, w = size
        pixels, _ = draw_image(SynthConfig(size=max(h, w), empty_fraction=0.0),
                               np.random.default_rng(0))
        pixels = pixels[:h, :w]
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float() / 255.0
