"""A run's arguments and result, the schedule and batch they take from the recipe,
``RUN/config.yaml`` (the arguments and resolved recipe a run stores when it starts, and that
``--resume`` reads back), and the run folder itself: which folders a run may take, and the
lock it holds on its folder while it writes there."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from frcnn_cli import config as config_mod
from frcnn_cli.config import Recipe, scaled_steps
from frcnn_cli.engine.kinds import RunKind
from frcnn_cli.errors import InputError
from frcnn_cli.files import LOCK_NAME, FolderLock, folder_holder, lock_folder, write_text


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
    ignore_dataset_mismatch: bool = False  # train-detector: proposals made for another set
    amp: bool = False

    @property
    def kind(self) -> RunKind:
        """What the command trains: joint, or one step of the 4-step schedule."""
        return RunKind.of(self.command, self.stage)

    def resolved(self) -> RunArgs:
        """These arguments with every input file's path made absolute, as a run stores them:
        ``--resume`` then works from any working directory."""
        def absolute(path: str | None) -> str | None:
            if path is None or path == "imagenet" or path.startswith("torchvision:"):
                return path
            return str(Path(path).resolve())
        return replace(self, train=absolute(self.train), val=absolute(self.val),
                       proposals=absolute(self.proposals), init=absolute(self.init),
                       init_weights=absolute(self.init_weights))


@dataclass
class RunResult:
    out: Path
    iterations: int
    model_path: Path
    val_map: float | None = None
    resumed_from: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    stopped_early: str | None = None  # why a run ended before its schedule (train.patience)


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


def data_fingerprint(ann) -> dict[str, Any]:
    """What a run stores of a dataset it trains or validates on (``RUN/config.yaml``'s
    ``data``), so that ``--resume`` can tell when it changed: its classes, its image count and
    a digest of its images' ids and file names."""
    digest = hashlib.sha1()
    for im in ann.images:
        digest.update(f"{im['id']}\t{im['file_name']}\n".encode())
    return {"classes": [{"id": c["id"], "name": c["name"]} for c in ann.classes],
            "images": len(ann.images), "digest": digest.hexdigest()}


def open_run_data(args: RunArgs, recipe: Recipe) -> tuple[Any, Any, dict[str, Any]]:
    """The training and validation sets of a run, read as training reads them (every rule of
    :func:`frcnn_cli.data.usable.open_dataset`; the validation set's classes matched to the
    training set's), and their fingerprints (:func:`data_fingerprint`): ``(train, val or None,
    {"train": ..., "val": ...})``."""
    from frcnn_cli.data.usable import match_classes, open_dataset

    train = open_dataset(args.train, "train", recipe)
    val = open_dataset(args.val, "val") if args.val else None
    if val is not None:
        match_classes(train.classes, val)
    return train, val, {"train": data_fingerprint(train),
                        "val": data_fingerprint(val) if val else None}


def refuse_changed_data(run_dir: Path, now: dict[str, dict[str, Any] | None]) -> None:
    """InputError naming what changed when a dataset of the run in ``run_dir`` is not the one
    it started with (``now``: ``{"train": fingerprint, "val": ...}``). Runs that stored
    none (older ones) are not checked."""
    stored = _read_yaml(Path(run_dir) / "config.yaml").get("data") or {}
    for which, fingerprint in now.items():
        then = stored.get(which)
        if not then or not fingerprint or then == fingerprint:
            continue
        named = {"train": "training set", "val": "validation set"}[which]
        old = {c["name"] for c in then["classes"]}
        new = {c["name"] for c in fingerprint["classes"]}
        if then["classes"] != fingerprint["classes"]:
            what = "its classes changed"
            if old != new:
                what += " (" + "; ".join(
                    part for part in (_listed_names("added", new - old),
                                      _listed_names("removed", old - new)) if part) + ")"
        else:
            what = (f"its images changed ({then['images']} when the run started, "
                    f"{fingerprint['images']} now)" if then["images"] != fingerprint["images"]
                    else "its images changed (ids or file names)")
        raise InputError(f"cannot resume {run_dir}: the {named} is not the one it started "
                         f"with: {what}. A run continues only on its own data: restore the "
                         "file, or start a new run in another --out")


def _listed_names(verb: str, names: set[str]) -> str:
    return f"{verb} {', '.join(repr(n) for n in sorted(names))}" if names else ""


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_config(run_dir: str | Path) -> tuple[RunArgs, dict[str, Any]]:
    """The arguments and resolved recipe stored in ``RUN/config.yaml``."""
    path = Path(run_dir) / "config.yaml"
    if not Path(run_dir).is_dir():
        raise InputError(f"run folder not found: {run_dir}")
    if not path.is_file():
        held = _contents(Path(run_dir))
        if "model.pt" in held:
            raise InputError(f"{run_dir} is not a run folder: it holds {_listed(held)} but no "
                             "config.yaml or last.pt, so there is nothing to resume; evaluate "
                             f"the model with frcnn eval {Path(run_dir) / 'model.pt'}, or start "
                             "a new run in an empty --out")
        raise InputError(f"{run_dir} is not a run folder (no config.yaml"
                         + (f"; it holds {_listed(held)})" if held else "; it is empty)"))
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


# --------------------------------------------------------------------------- the run folder


def claim_run_folder(out: Path, command: str, resume: bool) -> FolderLock:
    """Lock ``out`` for this run: a new run takes only a missing or empty folder, a resumed
    one the folder of its run. Refused with InputError when another process holds it (see
    :func:`frcnn_cli.files.lock_folder`) or the folder does not suit; nothing is created in
    a folder that is refused."""
    if resume:
        _require_resumable(out)
    else:
        refuse_unless_empty(out, command)
    lock = lock_folder(out, "run folder", f"frcnn {command}")
    try:  # another run may have started, or finished, between the check and the lock
        if resume:
            _require_resumable(out, live=False)
        else:
            refuse_unless_empty(out, command, live=False)
    except BaseException:
        lock.release()
        raise
    return lock


def refuse_unless_empty(out: Path, command: str, live: bool = True) -> None:
    """InputError saying what ``out`` holds and what to do, unless it is missing or empty
    (``live``: first, whether a live run holds it; not once this process has locked it)."""
    held = _contents(out)
    if not held:
        return
    if live:
        _refuse_if_live(out)
    if "config.yaml" in held and "last.pt" in held:
        raise InputError(f"{out} already holds a run; resume it with frcnn "
                         f"{_stored_command(out, command)} --resume {out} or choose another "
                         "--out")
    if "config.yaml" in held:
        raise InputError(f"{out} holds a run that stopped before its first checkpoint "
                         f"({_listed(held)}; no last.pt): there is nothing to resume; delete "
                         "the folder or choose another --out")
    if "model.pt" in held:
        raise InputError(f"{out} holds {_listed(held)} but no run (no config.yaml or last.pt): "
                         "there is nothing to resume, and a new run starts only in a missing "
                         "or empty folder; move model.pt away or choose another --out")
    raise InputError(f"{out} is not empty (it holds {_listed(held)}); a new run starts only in "
                     "a missing or empty folder, so nothing there is written over: choose "
                     "another --out")


def _refuse_if_live(out: Path) -> None:
    """InputError naming the process when a live run holds ``out``: what it holds is that
    run's, however unfinished it looks."""
    holder = folder_holder(out)
    if holder is not None:
        raise InputError(f"run folder {out} is in use by {holder}; wait for it to end or stop "
                         "it, or choose another --out")


def _require_resumable(out: Path, live: bool = True) -> None:
    if live:
        _refuse_if_live(out)
    if not (out / "last.pt").is_file():
        raise InputError(f"{out} holds a run that stopped before its first checkpoint (no "
                         "last.pt): there is nothing to resume; start it again in an empty "
                         "--out")


def _contents(folder: Path) -> list[str]:
    """The names in ``folder`` (folders with a trailing /), its lock file aside."""
    if not folder.is_dir():
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                  if p.name != LOCK_NAME)


def _listed(names: list[str], most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _stored_command(out: Path, default: str) -> str:
    try:
        return read_config(out)[0].command
    except InputError:
        return default
