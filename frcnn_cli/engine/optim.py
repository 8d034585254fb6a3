"""SGD with the original implementation's parameter rules, and the warm-up + step schedule."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from frcnn_cli.config import SolverConfig


def build_optimizer(params: Iterable[tuple[str, nn.Parameter]],
                    solver: SolverConfig) -> torch.optim.SGD:
    """SGD over the trainable named parameters.

    Biases and normalisation scales (1-d tensors) learn ``bias_lr_factor`` times faster with
    ``bias_weight_decay`` (py-faster-rcnn: lr_mult 2, no decay on biases); weights take
    ``lr`` and ``weight_decay``.
    """
    weights, biases = [], []
    for _, p in params:
        if p.requires_grad:
            (biases if p.ndim <= 1 else weights).append(p)
    groups = [{"params": weights, "lr": solver.lr, "weight_decay": solver.weight_decay}]
    if biases:
        groups.append({"params": biases, "lr": solver.lr * solver.bias_lr_factor,
                       "weight_decay": solver.bias_weight_decay})
    return torch.optim.SGD(groups, lr=solver.lr, momentum=solver.momentum)


class WarmupMultiStep:
    """lr factor at an iteration: linear warm-up from ``warmup_factor``, then ``gamma`` at
    each step. A plain function of the iteration, so a resumed run needs only the iteration."""

    def __init__(self, steps: list[int], gamma: float, warmup_iters: int,
                 warmup_factor: float) -> None:
        self.steps, self.gamma = sorted(steps), gamma
        self.warmup_iters, self.warmup_factor = warmup_iters, warmup_factor

    def __call__(self, iteration: int) -> float:
        factor = self.gamma ** sum(iteration >= s for s in self.steps)
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def build_scheduler(optimizer: torch.optim.Optimizer, solver: SolverConfig,
                    steps: list[int]) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupMultiStep(steps, solver.gamma, solver.warmup_iters,
                                   solver.warmup_factor))
