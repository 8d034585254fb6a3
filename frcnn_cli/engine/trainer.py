"""One training run: joint training, or one stage of the 4-step alternating schedule.

    args = RunArgs(command="train", recipe="shapes", train="d/train.json", val="d/val.json",
                   out="runs/a")
    result = train_run(args, reporter)

A run folder holds ``config.yaml`` (the resolved recipe and these arguments), ``last.pt``
(resumable: model, optimizer, scheduler, RNG states), ``model.pt`` (final weights),
``best.pt`` (best validation mAP), ``metrics.jsonl`` and the same values in TensorBoard's
event files, ``plots/`` and ``eval.json``. ``resume_run(run_dir)`` reads ``config.yaml`` and
continues from ``last.pt`` exactly where the run stopped: same batches, same augmentation,
same random draws.

A :class:`Run` is set up, then started or resumed, then trained: its loop calls ``step`` once
per iteration and ``validate`` every ``train.val_every`` iterations, and ends with ``finish``.
A validation logs the mAP, each class's AP and the validation loss, and draws a few images
for TensorBoard; with ``train.patience`` the loop ends early once the mAP has stopped rising
(:mod:`frcnn_cli.engine.patience`), and ``model.pt`` is then the best validation's weights.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import torch

from frcnn_cli import config as config_mod
from frcnn_cli import distributed as dist_mod
from frcnn_cli.checkpoint import checkpoint_meta, load_checkpoint, save_checkpoint
from frcnn_cli.config import Recipe
from frcnn_cli.engine.initial_model import build_initial_model, warn_if_anchors_cross_border
from frcnn_cli.engine.kinds import RunKind
from frcnn_cli.engine.losses import batch_losses, loss_samples, validation_losses
from frcnn_cli.engine.metrics import LossWindow, MetricsLog, short_names
from frcnn_cli.engine.optim import build_optimizer, build_scheduler
from frcnn_cli.engine.patience import Patience
from frcnn_cli.engine.rng import rng_state, seed_everything, set_rng_state
from frcnn_cli.engine.run_config import (
    RunArgs,
    RunResult,
    claim_run_folder,
    images_per_batch,
    open_run_data,
    refuse_changed_data,
    schedule_for,
    stored_run,
    write_config,
)
from frcnn_cli.errors import FrcnnError, InputError, TrainingError
from frcnn_cli.files import FolderLock, prepare_output_dir, write_result
from frcnn_cli.interrupts import (
    HoldInterrupts,
    Interrupted,
    Terminated,
    sigterm_as_interrupt,
    stops_ignored,
)
from frcnn_cli.outputs import EVAL_RESULT
from frcnn_cli.progress import SILENT, Reporter

log = logging.getLogger("frcnn")


def train_run(args: RunArgs, reporter: Reporter = SILENT, resume: bool = False,
              recipe: Recipe | None = None) -> RunResult:
    """Train one run as ``args`` says (``recipe``: the resolved recipe, else loaded from
    ``args.recipe`` and ``args.overrides``); see the module docstring for what it writes."""
    run = Run(args if resume else args.resolved(), reporter, recipe, resume)
    try:
        if resume:
            run.resume()
        else:
            run.start()
        return run.result(_read_eval(run.out)) if run.done else run.train()
    finally:
        run.close()


def resume_run(run_dir: str | Path, reporter: Reporter = SILENT,
               device: str | None = None) -> RunResult:
    """Continue the run in ``run_dir`` from its ``last.pt`` with its original arguments."""
    args, recipe = stored_run(run_dir, device)
    return train_run(args, reporter, resume=True, recipe=recipe)


class Run:
    """One training run in progress: its model, optimizer, batches and run folder."""

    def __init__(self, args: RunArgs, reporter: Reporter = SILENT, recipe: Recipe | None = None,
                 resume: bool = False) -> None:
        """Set up: the processes, the recipe, the data, the model and its optimizer."""
        self.args, self.kind, self.reporter = args, args.kind, reporter
        self.device, self.dist = dist_mod.join_processes(args.device, args.amp)
        self.recipe = config_mod.load_recipe(args.recipe, args.overrides) if recipe is None \
            else recipe
        args.seed = self.seed = self.recipe.train.seed if args.seed is None else args.seed
        self.checkpoint_every = args.checkpoint_every or self.recipe.train.checkpoint_every
        self.max_iters, steps = schedule_for(args, self.recipe)
        self.images_per_batch = images_per_batch(args, self.recipe)
        if self.images_per_batch % self.dist.world_size:
            raise InputError(f"{self.images_per_batch} images per batch cannot be split over "
                             f"{self.dist.world_size} processes; set a multiple")
        self._load_annotations(resume)
        # the proposals of steps 2 and 4 (and Selective Search's settings when it made them,
        # with its search of --val): read before the run folder is taken
        self.proposal_source = self.val_proposals = None
        self.proposals = self._load_proposals()
        self.out = Path(args.out)
        self.last_path, self.model_path = self.out / "last.pt", self.out / "model.pt"
        self.lock = self._prepare_folder(resume)
        try:
            self._set_up(args, steps)
        except BaseException:
            self.close()
            raise

    def _set_up(self, args: RunArgs, steps: list[int]) -> None:
        """The proposals, model, optimizer and logs, once the folder is this run's."""
        self.model = self._build_model()
        self.params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, self.recipe.solver)
        self.scheduler = build_scheduler(self.optimizer, self.recipe.solver, steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=args.amp)
        self.metrics = MetricsLog(self.out / "metrics.jsonl", self.dist.is_main)
        self.window = LossWindow()
        self.hold = HoldInterrupts()  # so that a stop, and the state saved, fall between steps
        self.iteration = self.start_iter = 0
        self.last_losses, self.done = {}, False
        self.patience = Patience(self.recipe.train.patience)
        self.stop_reason: str | None = None  # why the run ended before its schedule
        self.val_samples = None  # --val as training samples, for the validation loss
        if self.patience.patience and self.val_ann is None and self.kind is RunKind.JOINT:
            log.warning("train.patience counts validations on --val, and this run has none: "
                        "it trains its whole schedule")

    def close(self) -> None:
        """Release the run folder (its lock) and the event files; the run's files stay."""
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
        if self.lock is not None:
            self.lock.release()

    # ------------------------------------------------------------------ start or resume

    def start(self) -> None:
        """A new run: batches from the first, ``config.yaml`` written."""
        self.batches = self._batches()
        if self.dist.is_main:
            write_config(self.out, self.args, self.recipe, data=self.data)
        self.metrics.open()

    def resume(self) -> None:
        """Continue from ``last.pt``: weights, optimizer, lr schedule, random states and the
        losses not yet logged as they were, batches from the next one. ``done`` if the run
        had already finished."""
        state = load_checkpoint(self.last_path)
        self.iteration = self.start_iter = int(state["meta"]["iteration"])
        self.stop_reason = state["meta"].get("stopped_early")
        if (self.iteration >= self.max_iters or self.stop_reason) and self.model_path.exists():
            log.info("%s already finished (%s); nothing to resume", self.out,
                     f"stopped early: {self.stop_reason}" if self.stop_reason
                     else f"its {self.max_iters} iterations")
            dist_mod.shutdown(self.dist)
            self.done = True
            return
        self.batches = self._batches()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.patience = Patience.from_meta(state["meta"], self.recipe.train.patience)
        self.window = LossWindow(state.get("log_window", {}))
        set_rng_state(state["rng"])
        self.metrics.open(after=self.iteration)
        log.info("resuming %s from iteration %d of %d", self.out, self.iteration, self.max_iters)

    # ------------------------------------------------------------------ the loop

    def train(self) -> RunResult:
        """Step to the last iteration, validating on the way, and finish. Ctrl-C stops the run
        between two iterations with its state saved (:class:`Interrupted`)."""
        self._begin_loop()
        try:
            with sigterm_as_interrupt():
                while self.iteration < self.max_iters and self.stop_reason is None:
                    self.step(*next(self.batches))
                    if self._validation_due():
                        self.validate()
                        if self._checkpoint_due():  # after it: last.pt keeps its best and count
                            self.save_last()
        except KeyboardInterrupt as stop:
            with stops_ignored():  # a second stop would cut the save short
                raise self._interrupted(isinstance(stop, Terminated)) from None
        except RuntimeError as error:  # torch.distributed.DistError is one
            if not (self.dist.enabled and dist_mod.is_peer_failure(error)):
                raise
            with stops_ignored():  # torchrun's SIGTERM follows the lost process
                raise self._lost_a_process(error) from None
        finally:
            self.hold.release()
            self.task.close()
        return self.finish()

    def step(self, images: list[torch.Tensor], targets: list[dict]) -> None:
        """One iteration: losses, backward pass, update; the losses logged and ``last.pt``
        saved when due (after the validation when one is due too). A Ctrl-C during it takes
        effect once it is whole."""
        self.hold.begin()
        losses = self._losses(images, targets)
        total = sum(losses.values())
        self._check_finite(losses, total)
        self._update(total)
        self.iteration += 1
        self._log(losses, total)
        if self._checkpoint_due() and not self._validation_due():
            self.save_last()
        self.hold.end()

    def validate(self, final: bool = False) -> None:
        """mAP and loss on --val, logged; ``best.pt`` kept; patience counted; ``eval.json``
        if ``final``. Under torchrun every process detects its share of the images and the
        main one scores them and records the rest."""
        from frcnn_cli.evaluation.inference import evaluate_model

        dist_mod.main_buffers(self.model, self.dist)  # every share scored by one model
        self.model.eval()
        result = evaluate_model(self.model, self.val_ann, metric=self.recipe.eval.metric,
                                device=self.device,
                                reporter=self.reporter if self.dist.is_main else SILENT,
                                proposals=self.val_proposals, dist=self.dist)
        if self.dist.is_main:
            self._record_validation(result, final)
        self.model.train()
        self.stop_reason = dist_mod.broadcast_from_main(self.stop_reason, self.dist)
        dist_mod.barrier(self.dist)

    def _record_validation(self, result, final: bool) -> None:
        """A validation's metrics line (mAP, each class's AP, the validation loss), its
        pictures, ``best.pt`` when it is the best, ``eval.json`` when ``final``, and the
        early stop when patience has run out (main process)."""
        value = float(result.mAP)
        losses = self.validation_losses()
        self.metrics.write({"iteration": self.iteration, "val_mAP": round(value, 6),
                            "metric": self.recipe.eval.metric,
                            "val_AP": {name: None if ap is None else round(float(ap), 6)
                                       for name, ap in result.per_class.items()},
                            **{f"val_{k}": round(v, 6) for k, v in losses.items()}})
        log.info("iteration %d: validation %s mAP %.4f, loss %.4f", self.iteration,
                 self.recipe.eval.metric, value, losses["loss"])
        self._draw_validation_images()
        if self.patience.observe(value, self.iteration):
            self._save_model(self.out / "best.pt",
                             validation={"iteration": self.iteration, **result.to_dict()})
        if final:
            write_result(self.out / "eval.json", EVAL_RESULT,
                         {"iteration": self.iteration, **result.to_dict()})
        elif self.patience.stop_reason:
            self.stop_reason = self.patience.stop_reason
            log.info("stopping early at iteration %d: %s", self.iteration, self.stop_reason)
            self.metrics.write({"iteration": self.iteration, "stopped_early": self.stop_reason})
        self.metrics.flush()

    def validation_losses(self) -> dict[str, float]:
        """The losses of the model on --val, no update (:mod:`frcnn_cli.engine.losses`)."""
        if self.val_samples is None:
            self.val_samples = loss_samples(self.val_ann, self.recipe)
        return validation_losses(
            self.model, self.val_samples, self.device, self.kind,
            images_per_batch=self.images_per_batch // self.dist.world_size, seed=self.seed,
            amp=self.args.amp, proposals=self.val_proposals)

    def _draw_validation_images(self) -> None:
        """A few validation images with their detections, for TensorBoard."""
        from frcnn_cli.engine.pictures import detection_pictures

        for name, pixels in detection_pictures(self.model, self.val_ann, self.device,
                                               self.val_proposals):
            self.metrics.image(f"val/detections/{name}", pixels, self.iteration)

    def save_last(self) -> None:
        """``last.pt``: everything a resume needs, at an iteration boundary."""
        if self.dist.is_main:
            self.metrics.flush()  # TensorBoard's files hold every point last.pt's iteration has
            save_checkpoint({
                "model": self.model.state_dict(),
                "meta": self._meta(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_state(),
                "log_window": self.window.values,  # losses since the last logged step
            }, self.last_path)

    def finish(self) -> RunResult:
        """The end: ``last.pt``, the final validation (``eval.json``), ``model.pt``, plots.
        A run stopped early ends with the best validation instead (``best.pt``'s weights and
        its scores)."""
        self.save_last()
        if self.stop_reason is None and self.val_ann is not None:
            self.validate(final=True)
        if self.dist.is_main:
            from frcnn_cli.engine.plots import plot_run

            if self.stop_reason is None:
                self._save_model(self.model_path)
            else:
                self._keep_best()
            plot_run(self.out)
        dist_mod.barrier(self.dist)
        dist_mod.shutdown(self.dist)
        return self.result(_read_eval(self.out) if self.val_ann is not None else None)

    def result(self, val_map: float | None) -> RunResult:
        return RunResult(out=self.out, iterations=self.iteration, model_path=self.model_path,
                         val_map=val_map, resumed_from=self.start_iter, losses=self.last_losses,
                         stopped_early=self.stop_reason)

    def _keep_best(self) -> None:
        """A run stopped early: ``model.pt`` is ``best.pt`` (weights and meta, the reason
        added) and ``eval.json`` the scores of its validation."""
        best = load_checkpoint(self.out / "best.pt")
        validation = best["meta"].pop("validation", None)
        best["meta"]["stopped_early"] = self.stop_reason
        save_checkpoint(best, self.model_path)
        if validation is not None:  # (best.pt of a run from before patience existed: none)
            write_result(self.out / "eval.json", EVAL_RESULT, validation)

    # ------------------------------------------------------------------ set-up parts

    def _load_annotations(self, resume: bool) -> None:
        """The training and validation sets, every rule checked before the run folder is
        taken (:func:`frcnn_cli.data.usable.open_dataset`): a run that would fail at its
        first validation fails here; a resumed run only on the data it started with."""
        self.train_ann, self.val_ann, self.data = open_run_data(self.args, self.recipe)
        if resume:
            refuse_changed_data(Path(self.args.out), self.data)

    def _prepare_folder(self, resume: bool) -> FolderLock | None:
        """Take the run folder (never an input; for a new run only a missing or empty one)
        and lock it while the run writes there (main process)."""
        args = self.args
        inputs = [args.train, args.val, args.proposals,
                  args.init if args.init not in (None, "imagenet") else None]
        if not self.dist.is_main:
            if resume and not self.last_path.exists():
                raise InputError(f"{self.out} has no last.pt to resume from")
            return None
        prepare_output_dir(self.out, inputs, "run folder")
        return claim_run_folder(self.out, args.command, resume)

    def _load_proposals(self):
        """Steps 2 and 4 train on the proposals of ``--proposals``; other runs on none."""
        if not self.kind.is_detector:
            return None
        from frcnn_cli.proposals.files import read_proposals
        from frcnn_cli.proposals.search import search_settings
        from frcnn_cli.proposals.sources import search_for

        if not self.args.proposals:
            raise InputError("train-detector needs --proposals (made by frcnn propose)")
        found = read_proposals(self.args.proposals, self.train_ann,
                               self.args.ignore_dataset_mismatch)
        # a detector trained on Selective Search needs it at test time too: its checkpoints
        # say so (meta["proposals"]), and validation searches --val (once for all)
        self.proposal_source = search_settings(found.meta)
        self.val_proposals = search_for(self.proposal_source, remember=True)
        return found.boxes

    def _build_model(self):
        seed_everything(self.seed)  # the same initial weights in every process
        model = build_initial_model(self.args, self.recipe, self.train_ann.classes)
        if self.dist.is_main and not self.kind.is_detector:
            warn_if_anchors_cross_border(self.recipe)
        seed_everything(self.seed + self.dist.rank)  # different RPN/RoI samples in each process
        model.set_trainable(**self.kind.trainable)
        return model.to(self.device)

    def _batches(self):
        """This process's share of the batches, from the current iteration on."""
        from frcnn_cli.data.dataset import build_train_loader

        loader = build_train_loader(
            self.train_ann, self.recipe, self.images_per_batch // self.dist.world_size,
            self.seed, start_iter=self.iteration, rank=self.dist.rank,
            world_size=self.dist.world_size, proposals=self.proposals)
        return iter(loader)

    # ------------------------------------------------------------------ step parts

    def _begin_loop(self) -> None:
        self.ddp_model = self.model
        if self.dist.enabled:
            # Every trainable group takes part in every step of its kind of run (frozen groups
            # have no gradients), so DDP need not search the graph for unused parameters.
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.tic = time.perf_counter()
        self.model.train()
        name = "train" if self.kind is RunKind.JOINT else self.kind.value
        self.task = self.reporter.task(name, total=self.max_iters, completed=self.iteration) \
            if self.dist.is_main else SILENT.task("")

    def _losses(self, images: list[torch.Tensor], targets: list[dict]
                ) -> dict[str, torch.Tensor]:
        """The model's losses on one batch (with its proposals in steps 2 and 4)."""
        return batch_losses(self.ddp_model, images, targets, self.device, self.kind,
                            self.args.amp)

    def _check_finite(self, losses: dict[str, torch.Tensor], total: torch.Tensor) -> None:
        if not torch.isfinite(total).item():
            bad = {k: float(v.detach()) for k, v in losses.items()}
            raise TrainingError(
                f"loss became non-finite at iteration {self.iteration + 1} "
                f"({', '.join(f'{k}={v:.4g}' for k, v in bad.items())}); "
                f"{_last_good(self.last_path)} Lower solver.lr or set solver.clip_grad_norm.")

    def _update(self, total: torch.Tensor) -> None:
        """Backward pass and SGD step (gradients scaled under --amp, clipped if asked)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.recipe.solver.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for _, p in self.params],
                                           self.recipe.solver.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def _log(self, losses: dict[str, torch.Tensor], total: torch.Tensor) -> None:
        """Every train.log_every iterations (and the last), a metrics line of mean losses."""
        self.window.add(losses, total)
        if self.iteration % self.recipe.train.log_every and self.iteration != self.max_iters:
            self.task.update(completed=self.iteration)
            return
        means = dist_mod.mean_over_processes(self.window.pop_means(), self.dist)
        lr = self.optimizer.param_groups[0]["lr"]
        self.last_losses = means
        self.metrics.write({"iteration": self.iteration, "lr": lr,
                            **{k: round(v, 6) for k, v in means.items()},
                            "time": round(time.perf_counter() - self.tic, 3)})
        self.task.update(completed=self.iteration, **short_names(means), lr=lr)

    def _checkpoint_due(self) -> bool:
        return self.iteration % self.checkpoint_every == 0 and self.iteration < self.max_iters

    def _validation_due(self) -> bool:
        every = self.recipe.train.val_every
        return bool(self.val_ann is not None and every and self.iteration % every == 0
                    and self.iteration < self.max_iters)

    def _interrupted(self, terminated: bool) -> Interrupted:
        """Ctrl-C or SIGTERM: ``last.pt`` saved at the boundary the hold kept, unless a second
        signal broke into an iteration (its state is half-way: the file's is kept)."""
        self.task.close()
        dist_mod.shutdown(self.dist)
        cmd = f"frcnn {self.args.command} --resume {self.out}"
        how = "terminated (SIGTERM)" if terminated else "interrupted"
        if self.hold.forced:
            resume = f" Resume with: {cmd}" if self.last_path.exists() else ""
            signal = " (SIGTERM)" if terminated else ""
            return Interrupted(f"stopped{signal} during iteration {self.iteration + 1}; "
                               f"{_last_good(self.last_path)}{resume}", terminated)
        self.save_last()
        return Interrupted(f"{how} at iteration {self.iteration}; state saved to "
                           f"{self.last_path}. Resume with: {cmd}", terminated)

    def _lost_a_process(self, error: BaseException) -> TrainingError:
        """Another process of the run stopped mid-iteration: this one's state is half-way and
        is not saved; ``last.pt`` keeps the last boundary it reached."""
        self.task.close()
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        first = re.sub(r"^\[[^\]]*\]\s*", "", first)[:120]  # gloo's source location first
        return TrainingError(
            f"another process of the run stopped during iteration {self.iteration + 1} "
            f"({type(error).__name__}: {first}); {_last_good(self.last_path)} Resume with: "
            f"torchrun ... frcnn {self.args.command} --resume {self.out}")

    def _meta(self, **extra) -> dict:
        source = {"proposals": self.proposal_source} if self.proposal_source else {}
        stopped = {"stopped_early": self.stop_reason} if self.stop_reason else {}
        return checkpoint_meta(self.model, self.iteration, self.kind.value, self.recipe,
                               seed=self.seed, **self.patience.meta(), **source, **stopped,
                               **extra)

    def _save_model(self, path: Path, **extra) -> None:
        save_checkpoint({"model": self.model.state_dict(), "meta": self._meta(**extra)}, path)


def _last_good(last_path: Path) -> str:
    if last_path.exists():
        try:
            it = load_checkpoint(last_path)["meta"]["iteration"]
            return f"the last good checkpoint is {last_path} (iteration {it})."
        except FrcnnError:
            pass
    return "no checkpoint was written yet."


def _read_eval(out: Path) -> float | None:
    path = out / "eval.json"
    return json.loads(path.read_text())["mAP"] if path.exists() else None
