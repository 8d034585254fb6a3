"""The paper's 4-step alternating training (Section 3.2), stage by stage.

    1. train-rpn --stage 1        RPN + shared convs from ImageNet weights
       propose                    its proposals for the training set
    2. train-detector --stage 1   Fast R-CNN + shared convs from ImageNet weights, on them
    3. train-rpn --stage 2        from step 2's model, shared convs frozen: RPN layers only
       propose                    the new RPN's proposals
    4. train-detector --stage 2   from step 3's model, shared convs and RPN frozen: head only

Step 3 starts its RPN layers afresh, as the original does (the stage-1 Fast R-CNN net carries
newly initialised RPN layers), and step 4 fine-tunes step 2's head. After step 4 the RPN and
the detector share one backbone: ``RUN/model.pt``.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from frcnn_cli import config as config_mod
from frcnn_cli import distributed as dist_mod
from frcnn_cli.checkpoint import load_checkpoint, save_checkpoint
from frcnn_cli.config import Recipe
from frcnn_cli.engine.events import EVENT_FILES
from frcnn_cli.engine.kinds import RunKind
from frcnn_cli.engine.run_config import (
    RunArgs,
    RunResult,
    open_run_data,
    refuse_changed_data,
    refuse_unless_empty,
    stored_run,
    write_config,
)
from frcnn_cli.engine.trainer import resume_run, train_run
from frcnn_cli.errors import InputError
from frcnn_cli.files import LOCK_NAME, lock_folder, require_file
from frcnn_cli.progress import SILENT, Reporter
from frcnn_cli.proposals.rpn import propose

log = logging.getLogger("frcnn")

FINAL_STAGE = "alt"  # meta["stage"] of RUN/model.pt: the four steps' shared model


def train_alt(args: RunArgs, reporter: Reporter = SILENT) -> RunResult:
    """All four steps into ``RUN/stage*/`` and the final shared model into ``RUN/model.pt``.

    The recipe is resolved once, when the run starts, and stored in ``RUN/config.yaml``; every
    stage trains with that stored recipe, whatever happens to the recipe file afterwards. A
    stage whose ``model.pt`` exists is not rerun; one with only ``last.pt`` is resumed; so
    repeating the command (or ``resume_alt``) after an interruption finishes the schedule.
    """
    root = Path(args.out)
    args = args.resolved()
    # a bad --device or --amp stops here, before RUN/ is made
    dist_mod.training_device(args.device, args.amp)
    for src, what in ((args.train, "training annotations"), (args.val, "validation annotations")):
        if src and Path(src).resolve() == root.resolve():
            raise InputError(f"run folder {root} is an input; choose another --out")
        if src:
            require_file(src, what)  # before RUN/config.yaml fixes the run's arguments
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main and not (root / "config.yaml").is_file():
        refuse_unless_empty(root, "train-alt")  # before anything is made there
    lock = lock_folder(root, "run folder", "frcnn train-alt") if is_main else None
    try:
        return _train_stages(root, args, reporter, is_main)
    finally:
        if lock is not None:
            lock.release()


def _train_stages(root: Path, args: RunArgs, reporter: Reporter, is_main: bool) -> RunResult:
    """:func:`train_alt` once the run folder ``root`` is locked."""
    args, recipe = _start_or_continue(root, args, is_main)
    init = args.init or "imagenet"
    if recipe.train.patience is not None and is_main:
        log.warning("train.patience applies to frcnn train: train-alt's stages train their "
                    "whole schedules")

    def run(kind: RunKind, **kw) -> RunResult:
        out = root / kind.value
        if (out / "model.pt").is_file():
            log.info("%s: finished earlier, kept", out.name)
            return RunResult(out=out, iterations=-1, model_path=out / "model.pt")
        resume = (out / "last.pt").is_file()
        if not resume and is_main:
            _clear_unstarted(out)
        log.info("%s: %s", out.name, "resuming" if resume else "training")
        if resume:
            return resume_run(out, reporter, device=args.device)
        return train_run(replace(args, command=kind.command, stage=kind.stage, out=str(out),
                                 val=None, **kw), reporter, recipe=recipe)

    def proposals_for(stage_dir: Path) -> Path:
        path = stage_dir / "proposals.pt"
        if not path.is_file():
            log.info("%s: proposing for the training set", stage_dir.name)
            propose(stage_dir / "model.pt", args.train, path, args.device, reporter,
                    purpose="train")
        return path

    s1_rpn = run(RunKind.STAGE1_RPN, init=init)
    p1 = proposals_for(s1_rpn.out)
    s1_det = run(RunKind.STAGE1_DETECTOR, init=init, proposals=str(p1))
    s2_rpn = run(RunKind.STAGE2_RPN, init=str(s1_det.model_path))
    p2 = proposals_for(s2_rpn.out)
    s2_det = run(RunKind.STAGE2_DETECTOR, init=str(s2_rpn.model_path), proposals=str(p2))

    val_map = None
    if is_main:
        final = load_checkpoint(s2_det.model_path)  # step 4's weights and meta (checkpoint_meta)
        final["meta"] = {**final["meta"], "stage": FINAL_STAGE}
        save_checkpoint(final, root / "model.pt")
    if args.val:
        val_map = evaluate_final(root, args, reporter)
    return RunResult(out=root, iterations=s2_det.iterations, model_path=root / "model.pt",
                     val_map=val_map)


def resume_alt(run_dir: str | os.PathLike, reporter: Reporter = SILENT,
               device: str | None = None) -> RunResult:
    """Finish an interrupted ``train-alt`` run with its original arguments and recipe."""
    args, _ = stored_run(run_dir, device)
    return train_alt(args, reporter)


def evaluate_final(root: Path, args: RunArgs, reporter: Reporter = SILENT) -> float | None:
    """VOC07 (the recipe's metric) of ``RUN/model.pt`` on --val, written to ``RUN/eval.json``.
    Under torchrun every process detects its share (joining the group waits for the main
    one's ``model.pt``), and the main one scores and returns the mAP (the others None)."""
    from frcnn_cli.data.usable import open_dataset
    from frcnn_cli.evaluation.inference import evaluate_model
    from frcnn_cli.files import write_result
    from frcnn_cli.model.faster_rcnn import load_model
    from frcnn_cli.outputs import EVAL_RESULT

    with dist_mod.processes(args.device) as (device, dist):
        model = load_model(root / "model.pt", device=device)
        result = evaluate_model(model, open_dataset(args.val, "val"),
                                metric=model.recipe.eval.metric, device=device,
                                reporter=reporter if dist.is_main else SILENT, dist=dist)
    if result is None:
        return None
    write_result(root / "eval.json", EVAL_RESULT, result.to_dict())
    return float(result.mAP)


def _start_or_continue(root: Path, args: RunArgs, is_main: bool) -> tuple[RunArgs, Recipe]:
    """The run's arguments and recipe: those stored in ``RUN/config.yaml`` when the run has
    started before (the same arguments again, or ``--resume``), else ``args`` and the recipe
    file's recipe, stored now, once. Either way the data are checked first, as every stage
    will read them (a bad --val fails here, not after four stages)."""
    if (root / "config.yaml").is_file():
        stored, recipe = stored_run(root, args.device)
        _refuse_other_arguments(root, stored, args)
        refuse_changed_data(root, open_run_data(stored, recipe)[2])
        log.info("%s: continuing with the recipe stored in its config.yaml", root)
        return stored, recipe
    recipe = config_mod.load_recipe(args.recipe, args.overrides)
    data = open_run_data(args, recipe)[2]
    if is_main:
        refuse_unless_empty(root, "train-alt", live=False)  # as found once locked
        write_config(root, replace(args, command="train-alt"), recipe, data=data,
                     stages={kind.value: str(root / kind.value) for kind in RunKind.steps()})
    return args, recipe


# What a stage writes before its first checkpoint: a stage stopped that early starts again.
_BEFORE_FIRST_CHECKPOINT = {"config.yaml", "metrics.jsonl", "plots"}


def _clear_unstarted(stage_dir: Path) -> None:
    """Remove what a stage of this run wrote before it was stopped ahead of its first
    checkpoint (``config.yaml``, ``metrics.jsonl``, TensorBoard's event files, ``plots/``), so
    that it starts again in an empty folder; anything else there is left for the stage's own
    refusal."""
    if not stage_dir.is_dir():
        return
    names = {p.name for p in stage_dir.iterdir() if p.name != LOCK_NAME}
    events = {p.name for p in stage_dir.glob(EVENT_FILES) if p.is_file()}
    if not names or not names - events <= _BEFORE_FIRST_CHECKPOINT:
        return
    plots = stage_dir / "plots"
    if plots.is_dir() and any(p.suffix != ".png" or p.is_dir() for p in plots.iterdir()):
        return
    log.info("%s: stopped before its first checkpoint; starting it again", stage_dir.name)
    for name in names:
        path = stage_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _refuse_other_arguments(root: Path, stored: RunArgs, args: RunArgs) -> None:
    """A run folder continues only the run it holds: the same command and arguments (the
    folder and --device aside)."""
    if stored.command != "train-alt":
        raise InputError(f"{root} holds a {stored.command} run, not a train-alt run; resume it "
                         f"with frcnn {stored.command} --resume {root}")
    # paths compared absolute: a run started before runs stored them so kept them as given
    old, new = asdict(stored.resolved()), asdict(replace(args.resolved(), command="train-alt"))
    changed = [name for name in old if name not in ("out", "device") and old[name] != new[name]]
    if changed:
        option = {"overrides": "set"}
        said = ", ".join(f"--{option.get(name, name).replace('_', '-')} {old[name]!r} then, "
                         f"{new[name]!r} now" for name in changed)
        raise InputError(f"{root} holds a train-alt run with other arguments ({said}); "
                         f"resume it with --resume {root} or choose another --out")
