"""Training commands: ``train`` (approximate joint) and the paper's 4-step alternating
schedule, stage by stage (``train-rpn``, ``propose``, ``train-detector``) or whole
(``train-alt``)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from frcnn_cli.cli import console, options
from frcnn_cli.errors import InputError

PANEL = "Training"

Train = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--train", help="Training annotations (COCO JSON, e.g. from frcnn data convert).")]
Val = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--val", help="Validation annotations: VOC07 mAP at the end (and every train.val_every "
    "iterations), best.pt kept by it.")]
Out = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--out", "-o", help="Run folder to create (config.yaml, last.pt, model.pt, metrics.jsonl, "
    "plots/, eval.json).")]
Iters = Annotated[Optional[int], typer.Option(  # noqa: UP045
    "--iters", min=1, help="Override the schedule length (lr drops scale with it).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed (default: the "  # noqa: UP045
                                             "recipe's train.seed).")]
CheckpointEvery = Annotated[Optional[int], typer.Option(  # noqa: UP045
    "--checkpoint-every", min=1, help="Iterations between last.pt saves (default: recipe).")]
Resume = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--resume", help="Continue the run in this folder from its last.pt with its original "
    "arguments.")]
Amp = Annotated[bool, typer.Option("--amp", help="Mixed precision (CUDA only).")]
BackboneWeights = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--backbone-weights", help="Local ImageNet state dict for the backbone (offline machines).",
    dir_okay=False)]
Stage = Annotated[Optional[int], typer.Option(  # noqa: UP045
    "--stage", min=1, max=2, help="1: from ImageNet weights, shared convs trained; 2: from "
    "--init, shared convs frozen.")]
Init = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--init", help="'imagenet' (default for stage 1), a checkpoint to start from, or "
    "torchvision:NAME, torchvision's COCO detector NAME (e.g. "
    "torchvision:fasterrcnn_resnet50_fpn; downloaded on first use).")]
InitWeights = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--init-weights", help="With --init torchvision:NAME: a local file of NAME's weights "
    "(offline machines).", dir_okay=False)]


def _args(command: str, recipe: str | None, train: Path | None, val: Path | None,
          out: Path | None, overrides: list[str] | None, iters: int | None, device: str,
          seed: int | None, checkpoint_every: int | None, amp: bool,
          backbone_weights: Path | None, **kw):
    from frcnn_cli.engine.run_config import RunArgs

    missing = [name for name, v in (("--recipe", recipe), ("--train", train), ("--out", out))
               if v is None]
    if missing:
        raise InputError(f"{command} needs {', '.join(missing)} (or --resume RUN)")
    sets = list(overrides or [])
    init_weights = kw.pop("init_weights", None)
    if init_weights is not None:
        if not str(kw.get("init") or "").startswith("torchvision:"):
            raise InputError("--init-weights holds a torchvision detector's weights: it goes "
                             "with --init torchvision:NAME")
        if not init_weights.is_file():
            raise InputError(f"--init-weights file not found: {init_weights}")
        kw["init_weights"] = str(init_weights)
    if backbone_weights is not None:
        if not backbone_weights.is_file():
            raise InputError(f"--backbone-weights file not found: {backbone_weights}")
        sets.append(f"model.backbone_weights={backbone_weights}")
    return RunArgs(command=command, recipe=recipe, train=str(train), out=str(out),
                   val=str(val) if val else None, overrides=sets, iters=iters, device=device,
                   seed=seed, checkpoint_every=checkpoint_every, amp=amp, **kw)


def _refuse_with_resume(resume: Path | None, **given) -> None:
    if resume is None:
        return
    extra = [name for name, v in given.items() if v not in (None, False, [])]
    if extra:
        raise InputError(f"--resume restores the run's own arguments; drop "
                         f"{', '.join('--' + e.replace('_', '-') for e in extra)}")


def _report(result) -> None:
    console.result(("done", "bold green"), f": {result.iterations} iterations -> "
                   f"{result.model_path}")
    if result.val_map is not None:
        console.result("validation mAP: ", (f"{result.val_map:.4f}", "bold"))


def _run(args, resume: Path | None, device: str) -> None:
    from frcnn_cli.engine.trainer import resume_run, train_run

    if resume is not None:
        result = resume_run(resume, console.reporter(), device=device)
    else:
        result = train_run(args, console.reporter())
    _report(result)


def train(
    recipe: options.OptionalRecipe = None, train: Train = None, val: Val = None, out: Out = None,
    iters: Iters = None, overrides: options.Overrides = None, device: options.Device = "auto",
    seed: Seed = None, checkpoint_every: CheckpointEvery = None, resume: Resume = None,
    amp: Amp = False, init: Init = None, init_weights: InitWeights = None,
    backbone_weights: BackboneWeights = None,
) -> None:
    """Approximate joint training: one backward pass through the RPN and detector losses.

    Example: [bold]frcnn train -r shapes --train d/train.json --val d/val.json -o runs/joint[/]
    """
    _refuse_with_resume(resume, recipe=recipe, train=train, val=val, out=out, iters=iters,
                        overrides=overrides, seed=seed, checkpoint_every=checkpoint_every, amp=amp,
                        init=init, init_weights=init_weights, backbone_weights=backbone_weights)
    args = None if resume else _args("train", recipe, train, val, out, overrides, iters, device,
                                     seed, checkpoint_every, amp, backbone_weights, init=init,
                                     init_weights=init_weights)
    _run(args, resume, device)


def train_rpn(
    recipe: options.OptionalRecipe = None, train: Train = None, out: Out = None,
    stage: Stage = None, init: Init = None, val: Val = None, iters: Iters = None,
    overrides: options.Overrides = None, device: options.Device = "auto", seed: Seed = None,
    checkpoint_every: CheckpointEvery = None, resume: Resume = None, amp: Amp = False,
    init_weights: InitWeights = None, backbone_weights: BackboneWeights = None,
) -> None:
    """Steps 1 and 3 of the 4-step schedule: train the RPN.

    Stage 1 trains the shared convs and the RPN from ImageNet weights; stage 2 starts from the
    stage-1 detector (--init) and trains only the RPN's own layers.

    Example: [bold]frcnn train-rpn -r shapes --train d/train.json -o runs/s1rpn --stage 1[/]
    """
    _refuse_with_resume(resume, recipe=recipe, train=train, val=val, out=out, iters=iters,
                        overrides=overrides, seed=seed, checkpoint_every=checkpoint_every, amp=amp,
                        init=init, init_weights=init_weights, stage=stage,
                        backbone_weights=backbone_weights)
    args = None
    if resume is None:
        if stage is None:
            raise InputError("train-rpn needs --stage 1 or --stage 2")
        args = _args("train-rpn", recipe, train, val, out, overrides, iters, device, seed,
                     checkpoint_every, amp, backbone_weights, stage=stage, init=init,
                     init_weights=init_weights)
    _run(args, resume, device)


def train_detector(
    recipe: options.OptionalRecipe = None, train: Train = None,
    proposals: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--proposals", help="Proposals for the training set, from frcnn propose.")] = None,
    out: Out = None, stage: Stage = None, init: Init = None, val: Val = None,
    iters: Iters = None, overrides: options.Overrides = None, device: options.Device = "auto",
    seed: Seed = None, checkpoint_every: CheckpointEvery = None, resume: Resume = None,
    amp: Amp = False, init_weights: InitWeights = None, backbone_weights: BackboneWeights = None,
    ignore_dataset_mismatch: options.IgnoreDatasetMismatch = False,
) -> None:
    """Steps 2 and 4 of the 4-step schedule: train the Fast R-CNN detector on fixed proposals.

    Stage 1 trains the shared convs and the head from ImageNet weights; stage 2 starts from the
    stage-2 RPN (--init) and trains only the detector's own layers: the result is the final
    shared model.

    Example: [bold]frcnn train-detector -r shapes --train d/train.json --proposals p1.pt
    -o runs/s1det --stage 1[/]
    """
    _refuse_with_resume(resume, recipe=recipe, train=train, val=val, out=out, iters=iters,
                        overrides=overrides, seed=seed, checkpoint_every=checkpoint_every, amp=amp,
                        init=init, init_weights=init_weights, stage=stage, proposals=proposals,
                        backbone_weights=backbone_weights,
                        ignore_dataset_mismatch=ignore_dataset_mismatch)
    args = None
    if resume is None:
        if stage is None:
            raise InputError("train-detector needs --stage 1 or --stage 2")
        if proposals is None:
            raise InputError("train-detector needs --proposals (made by frcnn propose)")
        args = _args("train-detector", recipe, train, val, out, overrides, iters, device, seed,
                     checkpoint_every, amp, backbone_weights, stage=stage, init=init,
                     init_weights=init_weights, proposals=str(proposals),
                     ignore_dataset_mismatch=ignore_dataset_mismatch)
    _run(args, resume, device)


class Method(str, Enum):
    rpn = "rpn"
    selective_search = "selective-search"


class Mode(str, Enum):
    fast = "fast"
    quality = "quality"


def propose(
    checkpoint: Annotated[Optional[Path], typer.Argument(  # noqa: UP045
        help="Model whose RPN proposes (model.pt); leave out with --method selective-search.",
        show_default=False)] = None,
    data: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--data", help="Annotations of the images to propose for.", show_default=False)]
        = None,
    out: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--out", "-o", help="Proposals file to write (.pt).", dir_okay=False,
        show_default=False)] = None,
    method: Annotated[Optional[Method], typer.Option(  # noqa: UP045
        "--method", help="rpn (the checkpoint's RPN, the default) or selective-search "
        "(OpenCV's, on the CPU: the proposals Fast R-CNN was trained on; no checkpoint).",
        show_default=False)] = None,
    mode: Annotated[Optional[Mode], typer.Option(  # noqa: UP045
        "--mode", help="Selective Search: fast (the default) or quality (more boxes, "
        "slower).", show_default=False)] = None,
    max_proposals: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--max", min=1, help="At most N proposals per image: Selective Search's best N "
        "(default 2000), or the RPN's top N after its NMS (default: the recipe's "
        "rpn.post_nms_top_n_train).", show_default=False)] = None,
    max_side: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--max-side", min=1, help="Selective Search: shrink larger images to this many pixels "
        "a side first (default 500; the boxes come back in the image's pixels).",
        show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--workers", "-w", min=1, help="Selective Search: processes searching images at "
        "once (default 1).", show_default=False)] = None,
    device: options.Device = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="RPN: images per "
                                            "forward pass.")] = 1,
) -> None:
    """Proposals for every image of a dataset, in one file: a checkpoint's RPN with the
    training proposal settings (12000 -> NMS -> 2000), or Selective Search.

    Boxes are stored in original image pixels, best first, with their scores (the RPN's
    objectness; for Selective Search, which has none, 1 / (1 + rank)); the meta says the
    method, the seconds per image and the share of the objects covered at IoU 0.5 and 0.7.
    The detector stages flip the boxes with their images. Selective Search gives the same
    boxes on every run.

    Example: [bold]frcnn propose runs/s1rpn/model.pt --data d/train.json --out runs/p1.pt[/]

    Example: [bold]frcnn propose --method selective-search --data d/train.json --out ss.pt
    --workers 2[/]
    """
    from frcnn_cli.proposals.files import read_meta

    if data is None or out is None:
        raise InputError("propose needs --data ANN.json and --out FILE")
    search = method is Method.selective_search
    if search and checkpoint is not None:
        raise InputError("--method selective-search needs no checkpoint; drop it")
    if search and batch_size != 1:
        raise InputError("--batch-size is the RPN's; Selective Search takes --workers")
    if not search:
        if checkpoint is None:
            raise InputError("propose needs a checkpoint (its RPN proposes) or --method "
                             "selective-search")
        given = [f for f, v in (("--mode", mode), ("--max-side", max_side),
                                ("--workers", workers)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with "
                             "--method selective-search")
    if search:
        from frcnn_cli.proposals import search as ss

        path = ss.propose_selective_search(
            data, out, (mode or Mode.fast).value,
            ss.MAX_PROPOSALS if max_proposals is None else max_proposals,
            ss.MAX_SIDE if max_side is None else max_side, workers or 1, console.reporter())
    else:
        from frcnn_cli.proposals.rpn import propose as run_propose

        path = run_propose(checkpoint, data, out, device, console.reporter(), batch_size,
                           max_proposals)
    meta = read_meta(path)
    n = len(meta["counts"])
    mean = float(meta["counts"].float().mean()) if n else 0.0
    seconds = meta.get("seconds_per_image")
    speed = f", {seconds:.3g} s per image" if seconds is not None else ""
    console.result(("done", "bold green"),
                   f": {n} images, {mean:.0f} proposals per image{speed} -> {path}")


def train_alt(
    recipe: options.OptionalRecipe = None, train: Train = None, val: Val = None, out: Out = None,
    iters: Iters = None, overrides: options.Overrides = None, device: options.Device = "auto",
    seed: Seed = None, checkpoint_every: CheckpointEvery = None, resume: Resume = None,
    amp: Amp = False, init: Init = None, init_weights: InitWeights = None,
    backbone_weights: BackboneWeights = None,
) -> None:
    """The paper's 4-step alternating training, all steps in order.

    Writes RUN/stage1-rpn, RUN/stage1-detector, RUN/stage2-rpn, RUN/stage2-detector (each a run
    folder with its model.pt) and RUN/model.pt, the final shared model. Repeating the command
    (or --resume RUN) skips finished stages and resumes an interrupted one; every stage trains
    with the recipe stored in RUN/config.yaml when the run started. --iters sets each stage's
    length.

    Example: [bold]frcnn train-alt -r shapes --train d/train.json --val d/val.json -o runs/alt[/]
    """
    from frcnn_cli.engine.stages import resume_alt
    from frcnn_cli.engine.stages import train_alt as run_alt

    _refuse_with_resume(resume, recipe=recipe, train=train, val=val, out=out, iters=iters,
                        overrides=overrides, seed=seed, checkpoint_every=checkpoint_every, amp=amp,
                        init=init, init_weights=init_weights, backbone_weights=backbone_weights)
    if resume is not None:
        result = resume_alt(resume, console.reporter(), device=device)
    else:
        args = _args("train-alt", recipe, train, val, out, overrides, iters, device, seed,
                     checkpoint_every, amp, backbone_weights, init=init,
                     init_weights=init_weights)
        result = run_alt(args, console.reporter())
    console.result(("done", "bold green"), f": final shared model -> {result.model_path}")
    if result.val_map is not None:
        console.result("validation mAP: ", (f"{result.val_map:.4f}", "bold"))


def register(app: typer.Typer) -> None:
    app.command("train", rich_help_panel=PANEL)(train)
    app.command("train-rpn", rich_help_panel=PANEL)(train_rpn)
    app.command("propose", rich_help_panel=PANEL)(propose)
    app.command("train-detector", rich_help_panel=PANEL)(train_detector)
    app.command("train-alt", rich_help_panel=PANEL)(train_alt)
