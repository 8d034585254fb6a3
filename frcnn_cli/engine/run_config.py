"""A run's arguments and result, the schedule and batch they take from the recipe, and
``RUN/config.yaml``: the arguments and resolved recipe a run stores when it starts, and that
``--resume`` reads back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from frcnn_cli import config as config_mod
from frcnn_cli.config import Recipe, scaled_steps
from frcnn_cli.engine.kinds import RunKind
from frcnn_cli.errors import InputError
from frcnn_cli.files import write_text


@dataclass
class RunArgs:
    """The arguments of a training command, as stored in ``RUN/config.yaml``."""

    command: str                       # train | train-rpn | train-detector (| train-alt)
    recipe: str
    train: str
    out: str
    val: str | None = None
    overrides: list[str] = field(default_factory=list)
    iters: int | None = None
    device: str = "auto"
    seed: int | None = None
    checkpoint_every: int | None = None
    stage: int | None = None           # 1 or 2 for train-rpn / train-detector
    init: str | None = None            # "imagenet", a checkpoint path or "torchvision:NAME"
    init_weights: str | None = None    # with torchvision:NAME, a local file of its weights
    proposals: str | None = None       # train-detector: proposals file
    amp: bool = False

    @property
    def kind(self) -> RunKind:
        """What the command trains: joint, or one step of the 4-step schedule."""
        return RunKind.of(self.command, self.stage)


@dataclass
class RunResult:
    out: Path
    iterations: int
    model_path: Path
    val_map: float | None = None
    resumed_from: int = 0
    losses: dict[str, float] = field(default_factory=dict)


def schedule_for(args: RunArgs, recipe: Recipe) -> tuple[int, list[int]]:
    """Iterations and lr drops of this run: the recipe's, or scaled to ``--iters``."""
    kind = args.kind
    if kind is RunKind.JOINT:
        total, steps = recipe.solver.max_iters, recipe.solver.steps
    else:
        total, steps = recipe.alt.schedule(rpn=kind.is_rpn, stage=kind.stage)
    if args.iters is None:
        return total, list(steps)
    return args.iters, scaled_steps(steps, total, args.iters)


def images_per_batch(args: RunArgs, recipe: Recipe) -> int:
    """Images per iteration, all processes together."""
    kind = args.kind
    if kind is RunKind.JOINT:
        return recipe.solver.images_per_batch
    return recipe.alt.rpn_images_per_batch if kind.is_rpn else recipe.alt.detector_images_per_batch


def write_config(out: Path, args: RunArgs, recipe: Recipe, **extra: Any) -> None:
    """``out/config.yaml``: ``args``, the resolved recipe, and any ``extra`` sections."""
    text = config_mod.dump_yaml({"args": asdict(args), "recipe": recipe.to_dict(), **extra})
    write_text(out / "config.yaml", text)


def read_config(run_dir: str | Path) -> tuple[RunArgs, dict[str, Any]]:
    """The arguments and resolved recipe stored in ``RUN/config.yaml``."""
    path = Path(run_dir) / "config.yaml"
    if not Path(run_dir).is_dir():
        raise InputError(f"run folder not found: {run_dir}")
    if not path.is_file():
        raise InputError(f"{run_dir} is not a run folder (no config.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return RunArgs(**data["args"]), data["recipe"]
    except (yaml.YAMLError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path} is not a valid run configuration ({first})") from None


def stored_run(run_dir: str | Path, device: str | None = None) -> tuple[RunArgs, Recipe]:
    """``read_config`` with the recipe validated, ``out`` set to ``run_dir`` (the folder may
    have moved) and ``device`` replaced when given."""
    args, recipe = read_config(run_dir)
    args.out = str(run_dir)
    if device is not None:
        args.device = device
    return args, config_mod.recipe_from_dict(recipe, f"{run_dir}/config.yaml")
