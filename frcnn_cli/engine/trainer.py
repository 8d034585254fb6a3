"""One training run: joint training, or one stage of the 4-step alternating schedule.

    args = RunArgs(command="train", recipe="shapes", train="d/train.json", val="d/val.json",
                   out="runs/a")
    result = train_run(args, reporter)

A run folder holds ``config.yaml`` (the resolved recipe and these arguments), ``last.pt``
(resumable: model, optimizer, scheduler, RNG states), ``model.pt`` (final weights),
``best.pt`` (best validation mAP), ``metrics.jsonl``, ``plots/`` and ``eval.json``.
``resume_run(run_dir)`` reads ``config.yaml`` and continues from ``last.pt`` exactly where the
run stopped: same batches, same augmentation, same random draws.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from frcnn_cli import config as config_mod
from frcnn_cli.checkpoint import checkpoint_meta, load_checkpoint, save_checkpoint
from frcnn_cli.config import Recipe, scaled_steps
from frcnn_cli.devices import resolve_device
from frcnn_cli.engine import distributed as dist_mod
from frcnn_cli.engine.kinds import RunKind
from frcnn_cli.engine.optim import build_optimizer, build_scheduler
from frcnn_cli.errors import CheckpointError, FrcnnError, InputError, TrainingError
from frcnn_cli.files import prepare_output_dir, require_file, write_text
from frcnn_cli.progress import SILENT, Reporter

log = logging.getLogger("frcnn")



class Interrupted(FrcnnError):
    """Ctrl-C: the run saved its state and can be resumed."""

    exit_code = 130


class HoldInterrupts:
    """Holds Ctrl-C (SIGINT) back while an iteration updates the weights.

    A run stopped half-way through ``optimizer.step()``, or after the iteration's RPN and RoI
    sampling drew from the random generators, would save a state that no iteration boundary
    had, and its resume would not continue the run exactly. Between ``begin()`` and ``end()``
    a first Ctrl-C is noted and raised as ``KeyboardInterrupt`` by ``end()``; a second one
    raises at once (``forced``: the state in memory is then half-way and must not be saved).
    Outside (loading the next batch, validating) Ctrl-C stops at once, which is safe: nothing
    there changes the weights or draws from the trainer's generators.
    """

    def __init__(self) -> None:
        self.pending = self.forced = self._installed = False
        self._previous = None

    def _hold(self, signum, frame) -> None:
        if self.pending:
            self.forced = True
            raise KeyboardInterrupt
        self.pending = True

    def begin(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._hold)
            self._installed = True

    def end(self) -> None:
        self.release()
        if self.pending:
            raise KeyboardInterrupt

    def release(self) -> None:
        """Puts the previous Ctrl-C handler back."""
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


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
    init: str | None = None            # "imagenet" or a checkpoint path
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


# --------------------------------------------------------------------------- set-up helpers


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random state a run draws from, in checkpoint-safe types."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    random.setstate(_python_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def classes_match(a: list[dict], b: list[dict]) -> bool:
    return [(c["id"], c["name"]) for c in a] == [(c["id"], c["name"]) for c in b]


# --------------------------------------------------------------------------- the run


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step or validation."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, iteration: int) -> None:
        """Drop lines logged after ``iteration`` (a resumed run logs them again)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
        write_text(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


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


def resume_run(run_dir: str | Path, reporter: Reporter = SILENT,
               device: str | None = None) -> RunResult:
    """Continue the run in ``run_dir`` from its ``last.pt`` with its original arguments."""
    args, recipe_dict = read_config(run_dir)
    args.out = str(run_dir)
    if device is not None:
        args.device = device
    recipe = config_mod.recipe_from_dict(recipe_dict, f"{run_dir}/config.yaml")
    return train_run(args, reporter, resume=True, recipe=recipe)


def training_device(args: RunArgs) -> torch.device:
    """The run's ``--device``, refusing ``--amp`` anywhere but on a GPU."""
    device = resolve_device(args.device)
    if args.amp and device.type != "cuda":
        raise InputError("--amp needs a CUDA device (mixed precision training runs on GPUs)")
    return device


def train_run(args: RunArgs, reporter: Reporter = SILENT, resume: bool = False,
              recipe: Recipe | None = None) -> RunResult:
    """Train one run as ``args`` says; see the module docstring for what it writes."""
    from frcnn_cli.data.annotations import load_annotations

    device = training_device(args)
    dist = dist_mod.init_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)

    if recipe is None:
        recipe = config_mod.load_recipe(args.recipe, args.overrides)
    seed = recipe.train.seed if args.seed is None else args.seed
    args.seed = seed
    checkpoint_every = args.checkpoint_every or recipe.train.checkpoint_every
    max_iters, steps = schedule_for(args, recipe)
    batch = images_per_batch(args, recipe)
    if batch % dist.world_size:
        raise InputError(f"{batch} images per batch cannot be split over "
                         f"{dist.world_size} processes; set a multiple")

    train_ann = load_annotations(require_file(args.train, "training annotations"))
    val_ann = load_annotations(require_file(args.val, "validation annotations")) \
        if args.val else None
    inputs = [args.train, args.val, args.proposals,
              args.init if args.init not in (None, "imagenet") else None]
    out = Path(args.out)
    last_path, model_path = out / "last.pt", out / "model.pt"
    if dist.is_main:
        prepare_output_dir(out, inputs, "run folder")
        if not resume and (last_path.exists() or model_path.exists()):
            raise InputError(f"{out} already holds a run; resume it with --resume {out} "
                             "or choose another --out")
    if resume and not last_path.exists():
        raise InputError(f"{out} has no last.pt to resume from")

    proposals = None
    if args.kind.is_detector:
        from frcnn_cli.engine.proposals import load_proposals

        if not args.proposals:
            raise InputError("train-detector needs --proposals (made by frcnn propose)")
        proposals = load_proposals(args.proposals, train_ann)

    seed_everything(seed)  # the same initial weights in every process
    model = _build_initial_model(args, recipe, train_ann.classes)
    if dist.is_main and not args.kind.is_detector:
        _warn_if_anchors_cross_border(recipe)
    seed_everything(seed + dist.rank)  # different RPN/RoI samples in each process
    model.set_trainable(**args.kind.trainable)
    model.to(device)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = build_optimizer(named, recipe.solver)
    scheduler = build_scheduler(optimizer, recipe.solver, steps)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp)

    metrics = MetricsLog(out / "metrics.jsonl", dist.is_main)
    start_iter, best_map, state = 0, -1.0, None
    if resume:
        state = load_checkpoint(last_path)
        start_iter = int(state["meta"]["iteration"])
        if start_iter >= max_iters and model_path.exists():
            log.info("%s already finished its %d iterations; nothing to resume", out, max_iters)
            dist_mod.shutdown(dist)
            return RunResult(out=out, iterations=start_iter, model_path=model_path,
                             val_map=_read_eval(out), resumed_from=start_iter)

    from frcnn_cli.data.dataset import build_train_loader

    loader = build_train_loader(train_ann, recipe, batch // dist.world_size, seed,
                                start_iter=start_iter, rank=dist.rank,
                                world_size=dist.world_size, proposals=proposals)
    batches = iter(loader)

    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        best_map = float(state["meta"].get("best_map", -1.0))
        set_rng_state(state["rng"])
        metrics.truncate_after(start_iter)
        log.info("resuming %s from iteration %d of %d", out, start_iter, max_iters)
    elif dist.is_main:
        _write_config(out, args, recipe)

    ddp_model = model
    if dist.enabled:
        # Every trainable group takes part in every step of its kind of run (frozen groups have
        # no gradients), so DDP need not search the graph for unused parameters.
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    iteration = start_iter
    window: dict[str, list[float]] = state.get("log_window", {}) if state else {}
    hold = HoldInterrupts()  # so that a stop, and the state saved, fall between iterations

    def save_last(iteration: int) -> None:
        if dist.is_main:
            save_checkpoint({
                "model": model.state_dict(),
                "meta": _meta(model, recipe, args, iteration, best_map),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state(),
                "log_window": window,  # losses since the last logged step
            }, last_path)

    last_losses: dict[str, float] = {}
    tic = time.perf_counter()
    model.train()
    name = "train" if args.kind is RunKind.JOINT else args.kind.value
    task = reporter.task(name, total=max_iters,
                         completed=start_iter) if dist.is_main else SILENT.task("")
    try:
        while iteration < max_iters:
            images, targets = next(batches)
            hold.begin()  # from here to hold.end(), Ctrl-C stops the run after this iteration
            images = [im.to(device, non_blocking=True) for im in images]
            props = None
            if proposals is not None:
                props = [t.pop("proposals").to(device) for t in targets]
            targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()}
                       for t in targets]
            with torch.autocast(device_type=device.type, dtype=torch.float16,
                                enabled=args.amp):
                losses = ddp_model(images, targets, proposals=props,
                                   rpn_only=args.kind.is_rpn)
            total = sum(losses.values())
            if not torch.isfinite(total).item():
                bad = {k: float(v.detach()) for k, v in losses.items()}
                raise TrainingError(
                    f"loss became non-finite at iteration {iteration + 1} "
                    f"({', '.join(f'{k}={v:.4g}' for k, v in bad.items())}); "
                    f"{_last_good(last_path)} Lower solver.lr or set solver.clip_grad_norm.")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if recipe.solver.clip_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for _, p in named],
                                               recipe.solver.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            iteration += 1

            for k, v in losses.items():
                window.setdefault(k, []).append(float(v.detach()))
            window.setdefault("loss", []).append(float(total.detach()))
            if iteration % recipe.train.log_every == 0 or iteration == max_iters:
                avg = {k: sum(v) / len(v) for k, v in window.items()}
                avg = dist_mod.mean_over_processes(avg, dist)
                window.clear()
                elapsed = time.perf_counter() - tic
                last_losses = avg
                metrics.write({"iteration": iteration, "lr": optimizer.param_groups[0]["lr"],
                               **{k: round(v, 6) for k, v in avg.items()},
                               "time": round(elapsed, 3)})
                task.update(completed=iteration, **_short_names(avg),
                            lr=optimizer.param_groups[0]["lr"])
            else:
                task.update(completed=iteration)

            if iteration % checkpoint_every == 0 and iteration < max_iters:
                save_last(iteration)
            hold.end()
            if (val_ann is not None and recipe.train.val_every
                    and iteration % recipe.train.val_every == 0 and iteration < max_iters):
                best_map = _validate(model, val_ann, recipe, device, dist, metrics, iteration,
                                     best_map, args, reporter)
                model.train()
    except KeyboardInterrupt:
        task.close()
        dist_mod.shutdown(dist)
        cmd = f"frcnn {args.command} --resume {out}"
        if hold.forced:  # stopped inside an iteration: its state is half-way, keep the file's
            resume = f" Resume with: {cmd}" if last_path.exists() else ""
            raise Interrupted(f"stopped during iteration {iteration + 1}; "
                              f"{_last_good(last_path)}{resume}") from None
        save_last(iteration)
        raise Interrupted(f"interrupted at iteration {iteration}; state saved to {last_path}. "
                          f"Resume with: {cmd}") from None
    finally:
        hold.release()
        task.close()

    save_last(iteration)
    val_map = None
    if val_ann is not None:
        best_map = _validate(model, val_ann, recipe, device, dist, metrics, iteration,
                             best_map, args, reporter, final=True)
        val_map = _read_eval(out)
    if dist.is_main:
        save_checkpoint({"model": model.state_dict(),
                         "meta": _meta(model, recipe, args, iteration, best_map)}, model_path)
        from frcnn_cli.engine.plots import plot_run

        plot_run(out)
    dist_mod.barrier(dist)
    dist_mod.shutdown(dist)
    return RunResult(out=out, iterations=iteration, model_path=model_path, val_map=val_map,
                     resumed_from=start_iter, losses=last_losses)


def _build_initial_model(args: RunArgs, recipe: Recipe, classes: list[dict]):
    """The model a run starts from: ImageNet weights (recipe) or ``--init`` CKPT."""
    from frcnn_cli.model.faster_rcnn import build_model

    previous = args.kind.previous
    if args.init in (None, "imagenet"):
        if previous is not None:
            raise InputError(f"{args.command} --stage 2 needs --init CKPT (the {previous} "
                             f"model of step {previous.step})")
        return build_model(recipe, len(classes), classes=classes)
    ckpt = load_checkpoint(require_file(args.init, "--init checkpoint"))
    ckpt_classes = ckpt["meta"].get("classes") or []
    no_download = recipe.model_copy(update={"model": recipe.model.model_copy(
        update={"pretrained": False, "backbone_weights": None})})
    model = build_model(no_download, len(classes), classes=classes)
    state = ckpt["model"]
    if ckpt_classes and not classes_match(ckpt_classes, classes):
        if previous is not None:
            raise CheckpointError(
                f"{args.init} was trained on classes {[c['name'] for c in ckpt_classes]}, "
                f"but --train has {[c['name'] for c in classes]}")
        # Fine-tuning to new classes: keep everything but the class-specific outputs.
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        log.info("--init %s: classes differ, class-specific layers start fresh", args.init)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise CheckpointError(f"{args.init} does not fit recipe '{recipe.name}' "
                              f"(unexpected weight '{unexpected[0]}')")
    if missing and classes_match(ckpt_classes or classes, classes):
        raise CheckpointError(f"{args.init} does not fit recipe '{recipe.name}' "
                              f"(missing weight '{missing[0]}')")
    return model


def _warn_if_anchors_cross_border(recipe: Recipe) -> None:
    """Say so when no anchor fits inside an input.min_size square: the RPN, trained only on
    anchors inside the image, would then learn nothing (its losses stay exactly 0)."""
    from frcnn_cli.model.anchors import AnchorGrid, inside_image

    grid = AnchorGrid.from_recipe(recipe)
    side = recipe.input.min_size
    places = -(-side // grid.stride)
    anchors = grid.grid(places, places)
    if not inside_image(anchors, side, side, recipe.rpn.allowed_border).any():
        smallest = float((anchors[:, 2:] - anchors[:, :2]).min())
        log.warning("every anchor (the smallest %.0f px) crosses the border of a %d px image, "
                    "so the RPN has nothing to train on; use smaller anchors.scales or a larger "
                    "input.min_size, or set rpn.allowed_border=-1", smallest, side)


def _meta(model, recipe: Recipe, args: RunArgs, iteration: int, best_map: float) -> dict:
    return checkpoint_meta(model, iteration, args.kind.value, recipe, best_map=best_map,
                           seed=args.seed)


def _short_names(avg: dict[str, float]) -> dict[str, float]:
    names = {"loss_rpn_cls": "rpn_cls", "loss_rpn_box": "rpn_box", "loss_det_cls": "det_cls",
             "loss_det_box": "det_box"}
    return {names[k]: v for k, v in avg.items() if k in names}


def _last_good(last_path: Path) -> str:
    if last_path.exists():
        try:
            it = load_checkpoint(last_path)["meta"]["iteration"]
            return f"the last good checkpoint is {last_path} (iteration {it})."
        except FrcnnError:
            pass
    return "no checkpoint was written yet."


def _validate(model, val_ann, recipe: Recipe, device, dist, metrics: MetricsLog,
              iteration: int, best_map: float, args: RunArgs, reporter: Reporter,
              final: bool = False) -> float:
    """Evaluate on --val (main process), log it, keep ``best.pt``; returns the best mAP."""
    if dist.is_main:
        from frcnn_cli.evaluation.inference import evaluate_model

        model.eval()
        result = evaluate_model(model, val_ann, metric=recipe.eval.metric, device=device,
                                reporter=reporter)
        value = float(result.mAP)
        metrics.write({"iteration": iteration, "val_mAP": round(value, 6),
                       "metric": recipe.eval.metric})
        log.info("iteration %d: validation %s mAP %.4f", iteration, recipe.eval.metric, value)
        if value > best_map or math.isclose(best_map, -1.0):
            best_map = value
            save_checkpoint({"model": model.state_dict(),
                             "meta": _meta(model, recipe, args, iteration, best_map)},
                            Path(args.out) / "best.pt")
        if final:
            from frcnn_cli.files import write_json

            write_json(Path(args.out) / "eval.json", {"iteration": iteration, **result.to_dict()})
    best_map = dist_mod.broadcast_from_main(best_map, dist)
    dist_mod.barrier(dist)
    return best_map


def _read_eval(out: Path) -> float | None:
    path = out / "eval.json"
    return json.loads(path.read_text())["mAP"] if path.exists() else None


def _write_config(out: Path, args: RunArgs, recipe: Recipe) -> None:
    text = config_mod.dump_yaml({"args": asdict(args), "recipe": recipe.to_dict()})
    write_text(out / "config.yaml", text)
