"""Truncated SVD of the detection head (Fast R-CNN, Section 3.1).

In detection, fc6 and fc7 run once per RoI (300 per image), so for VGG16 they cost nearly
half of the forward pass. Each layer's weight W [out, in] is replaced by its best rank-K
approximation ``U_K Sigma_K V_K^T``, computed as two thinner layers: in -> K with weight
Sigma_K V_K^T (no bias), then K -> out with U_K and W's bias. That is K (in + out)
multiply-adds per RoI instead of in x out; the paper keeps 1024 of fc6's and 256 of fc7's
singular values and reports a 30 % faster detector for 0.3 points of mAP.

    small, layers = compress(model, fc6=1024, fc7=256)    # a new model; ``model`` unchanged
    timing = time_heads({"full": model, "svd": small})    # fc6+fc7 on the test RoI count
    small, report = compress_and_measure(model, 1024, 256, annotations)  # both, and the mAPs
    save_compressed(small, "runs/a/model.pt", "runs/a/model-svd.pt")

The compressed model's recipe records the ranks (``model.svd_fc6``, ``model.svd_fc7``), so its
checkpoint loads through :func:`frcnn_cli.load_model` like any other.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from frcnn_cli.devices import synchronize
from frcnn_cli.errors import InputError
from frcnn_cli.model.box_heads import FCHead, LowRankLinear
from frcnn_cli.progress import SILENT, Reporter

LAYERS = ("fc6", "fc7")


@dataclass
class LayerSVD:
    """One layer's truncation: its shape, the rank kept and what it costs."""

    name: str
    in_features: int
    out_features: int
    rank: int
    relative_error: float   # ||W - W_K||_F / ||W||_F: the norm of the discarded singular values

    @property
    def parameters(self) -> int:
        """Weights and biases before (one layer)."""
        return self.in_features * self.out_features + self.out_features

    @property
    def parameters_svd(self) -> int:
        """Weights and biases after (two layers)."""
        return self.rank * (self.in_features + self.out_features) + self.out_features

    @property
    def break_even(self) -> int:
        """The lowest rank that saves nothing: K (in + out) >= in x out."""
        return -(-self.in_features * self.out_features // (self.in_features + self.out_features))


def fc_head(model: nn.Module) -> FCHead:
    """The model's fc6/fc7 head; InputError for a convolutional head (ResNet C4, MobileNet)."""
    head = model.roi_heads.box_head
    if not isinstance(head, FCHead):
        raise InputError(f"--svd truncates fc6/fc7, and this {model.recipe.model.backbone} "
                         "model has no such layers (its head is res5 or MobileNet blocks)")
    return head


def check_ranks(model: nn.Module, fc6: int | None, fc7: int | None) -> dict[str, int]:
    """The ranks to apply, by layer (None or 0: keep the layer full); InputError for a rank
    that saves nothing or a layer already truncated."""
    head = fc_head(model)
    ranks = {name: rank for name, rank in zip(LAYERS, (fc6, fc7), strict=True) if rank}
    if not ranks:
        raise InputError("nothing to truncate: give a rank above 0 for fc6 or fc7")
    for name, rank in ranks.items():
        layer = getattr(head, name)
        if isinstance(layer, LowRankLinear):
            raise InputError(f"{name} is already a truncated SVD (rank {layer.rank}); "
                             "compress the original checkpoint instead")
        smaller = min(layer.in_features, layer.out_features)
        flag = "--svd" if name == "fc6" else "--svd-fc7"
        if not 1 <= rank < smaller:
            raise InputError(f"{flag} {rank}: {name} is {layer.in_features} -> "
                             f"{layer.out_features}, so its rank must be below {smaller} to "
                             "save anything")
    return ranks


def compress(model: nn.Module, fc6: int | None, fc7: int | None = None
             ) -> tuple[nn.Module, list[LayerSVD]]:
    """A copy of ``model`` whose fc6 (and fc7) are truncated SVDs of these ranks (None or 0:
    keep that layer), with the ranks in its recipe; and what each truncation discarded."""
    ranks = check_ranks(model, fc6, fc7)
    small = copy.deepcopy(model)
    singular_values = fc_head(small).compress(ranks.get("fc6"), ranks.get("fc7"))
    for name, rank in ranks.items():
        setattr(small.recipe.model, f"svd_{name}", rank)
    layers = []
    for name, rank in ranks.items():
        s = singular_values[name].double()
        layer = getattr(fc_head(small), name)
        layers.append(LayerSVD(name, layer.in_features, layer.out_features, rank,
                               float(s[rank:].norm() / s.norm())))
    return small, layers


@dataclass
class HeadTiming:
    """Seconds per fc6+fc7 forward of each model, over ``rois`` RoIs, in interleaved rounds."""

    rois: int
    device: str
    runs: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.runs[name])

    def speedup(self, name: str, reference: str) -> float:
        """How many times faster ``name`` is than ``reference`` (ratio of medians)."""
        return self.median(reference) / self.median(name)


@torch.inference_mode()
def time_heads(models: dict[str, nn.Module], rois: int | None = None,
               device: str | torch.device = "cpu", budget_s: float = 2.0, min_rounds: int = 5,
               max_rounds: int = 100, seed: int = 0) -> HeadTiming:
    """Time the fc6/fc7 head of each model on the same pooled RoIs [rois, C, s, s].

    ``rois``: default the recipe's test proposal count (``rpn.post_nms_top_n_test``, 300 in
    the paper). The models take turns round by round, so all see the same machine load;
    rounds go on until ``budget_s`` is spent (between ``min_rounds`` and ``max_rounds``).
    """
    device = torch.device(device)
    first = next(iter(models.values()))
    rois = rois or first.recipe.rpn.post_nms_top_n_test
    m = first.recipe.model
    generator = torch.Generator().manual_seed(seed)
    pooled = torch.rand(rois, first.backbone.out_channels, m.roi_size, m.roi_size,
                        generator=generator).to(device)
    heads = {name: fc_head(model).eval() for name, model in models.items()}

    def once(head: nn.Module) -> float:
        synchronize(device)
        start = time.perf_counter()
        head(pooled)
        synchronize(device)
        return time.perf_counter() - start

    for head in heads.values():  # warm-up: allocator, oneDNN primitives, CUDA kernels
        once(head)
    runs: dict[str, list[float]] = {name: [] for name in heads}
    spent = 0.0
    while True:
        for name, head in heads.items():
            runs[name].append(once(head))
            spent += runs[name][-1]
        rounds = len(runs[name])
        if rounds >= max_rounds or (rounds >= min_rounds and spent >= budget_s):
            return HeadTiming(rois, str(device), runs)


def head_parameters(model: nn.Module) -> int:
    """Parameters of the fc6/fc7 head."""
    return sum(p.numel() for p in fc_head(model).parameters())


@dataclass
class SVDReport:
    """What :func:`compress_and_measure` found: each layer's truncation, both heads' time and
    parameters (keys "full" and "svd"), and with a dataset both models' mAP."""

    layers: list[LayerSVD]
    timing: HeadTiming
    parameters: dict[str, int]
    metric: str | None = None                 # the recipe's eval.metric, with a dataset
    maps: dict[str, float | None] = field(default_factory=dict)  # None: no object to score

    @property
    def map_change(self) -> float | None:
        """The compressed model's mAP minus the original's (None: not measured or unscored)."""
        full, small = self.maps.get("full"), self.maps.get("svd")
        return None if full is None or small is None else small - full


def compress_and_measure(model: nn.Module, fc6: int | None, fc7: int | None = None,
                         annotations=None, device: str | torch.device = "cpu",
                         reporter: Reporter = SILENT) -> tuple[nn.Module, SVDReport]:
    """:func:`compress` ``model``, time both heads on ``device`` and, given an
    :class:`~frcnn_cli.data.annotations.Annotations`, evaluate both models on it with the
    recipe's ``eval.metric``. Returns the compressed model (on the CPU, in eval mode) and
    the report; ``model`` is left where it was."""
    from frcnn_cli.data.usable import match_classes
    from frcnn_cli.evaluation.inference import evaluate_model

    if annotations is not None:  # before any slow work
        match_classes(model.classes, annotations)
    small, layers = compress(model, fc6, fc7)
    home = next(model.parameters()).device
    models = {"full": model.to(device), "svd": small.to(device)}
    try:
        report = SVDReport(layers, time_heads(models, device=device),
                           {name: head_parameters(m) for name, m in models.items()})
        if annotations is not None:
            report.metric = model.recipe.eval.metric
            report.maps = {name: evaluate_model(m, annotations, report.metric, device,
                                                reporter).mAP for name, m in models.items()}
    finally:
        model.to(home)
    return small.cpu().eval(), report


def save_compressed(model: nn.Module, source: str | os.PathLike, out: str | os.PathLike
                    ) -> Path:
    """Write ``model``, compressed from the checkpoint ``source``, as a checkpoint at ``out``
    (atomically): ``source``'s iteration and stage, and ``svd_of`` naming it."""
    from frcnn_cli.checkpoint import checkpoint_meta, load_checkpoint, save_checkpoint

    old = load_checkpoint(source)["meta"]
    meta = checkpoint_meta(model, int(old.get("iteration") or 0), old.get("stage"),
                           svd_of=Path(source).name)
    return save_checkpoint({"model": model.state_dict(), "meta": meta}, out)
