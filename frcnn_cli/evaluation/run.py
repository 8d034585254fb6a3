"""``frcnn eval`` as one library call.

    report = run_eval(EvalArgs(data="val.json", checkpoint="runs/a/model.pt", plot="p/"))
    report.result.mAP

:func:`run_eval` checks the arguments together, then every output, before any slow work;
reads the dataset through its door; loads the model (or the detections file) once; picks the
model's proposals once (its RPN, the search its checkpoint names, or ``--proposal-file``);
runs, scores, writes; and returns what there is to print. The CLI parses and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frcnn_cli.errors import InputError
from frcnn_cli.evaluation.evaluate import METRICS, EvalResult
from frcnn_cli.inference.tiled import TiledImage, Tiling
from frcnn_cli.progress import SILENT, Reporter

PathLike = str | os.PathLike
DETECTIONS_METRIC = "voc07"  # the metric of --detections unless --metric says otherwise


@dataclass
class EvalArgs:
    """What ``frcnn eval`` was asked (the options of its ``--help``). ``recall`` is
    ``--proposals``; ``compare`` the files of ``--compare-proposals``."""

    data: PathLike | None
    checkpoint: PathLike | None = None
    detections: PathLike | None = None
    metric: str | None = None
    json_out: PathLike | None = None
    plot: PathLike | None = None
    save_detections: PathLike | None = None
    recall: bool = False
    proposal_file: PathLike | None = None
    compare: list[PathLike] | None = None
    ignore_dataset_mismatch: bool = False
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 1
    tiling: Tiling | None = None
    max_pixels: int | None = None
    analyze: PathLike | None = None
    score_thresh: float | None = None
    max_dets: int | None = None

    def refuse_conflicts(self) -> None:
        """InputError for options that do not go together (see each message)."""
        if self.data is None:
            raise InputError("eval needs --data ANN.json, the dataset to evaluate on")
        if self.metric is not None and self.metric not in METRICS:
            raise InputError(f"unknown metric '{self.metric}'; choose one of "
                             f"{', '.join(METRICS)}")
        if self.ignore_dataset_mismatch and not (self.compare or self.proposal_file):
            raise InputError("--ignore-dataset-mismatch applies to proposal files: "
                             "--proposal-file or --compare-proposals")
        if self.score_thresh is not None and self.analyze is None:
            raise InputError("--score-thresh is the operating point of --analyze; add "
                             "--analyze DIR")
        if self.compare is not None:
            return self._compare_alone()
        if (self.checkpoint is None) == (self.detections is None):
            raise InputError("give a checkpoint or --detections DETS.json (exactly one of them)")
        runs_model = {"--proposals": self.recall, "--save-detections": self.save_detections,
                      "--precision": self.precision != "fp32", "--tile": self.tiling,
                      "--proposal-file": self.proposal_file, "--max-pixels": self.max_pixels}
        given = [flag for flag, value in runs_model.items() if value]
        if self.detections is not None and given:
            raise InputError(f"{given[0]} needs a checkpoint: it runs the model")
        if self.recall:
            only = {"--save-detections": self.save_detections, "--metric": self.metric,
                    "--tile": self.tiling, "--proposal-file": self.proposal_file,
                    "--analyze": self.analyze, "--max-dets": self.max_dets}
            extra = [flag for flag, value in only.items() if value is not None]
            if extra:
                raise InputError(f"--proposals reports the RPN's recall; drop {extra[0]}")
        if self.tiling is not None and self.batch_size != 1:
            raise InputError("with --tile, --tile-batch sets the tiles per forward pass; drop "
                             "--batch-size")

    def refuse_max_dets(self, metric: str) -> None:
        """InputError for ``--max-dets`` with a VOC metric, given or the default ``metric``
        (the checkpoint recipe's, voc07 for ``--detections``): before the model runs."""
        if self.max_dets is not None and metric != "coco":
            raise InputError(f"--max-dets caps pycocotools' detections per image; --metric "
                             f"{metric} scores every detection")

    def _compare_alone(self) -> None:
        if not self.compare:
            raise InputError("--compare-proposals needs the proposal files to compare "
                             "(made by frcnn propose)")
        others = {"--detections": self.detections, "--metric": self.metric,
                  "--save-detections": self.save_detections, "--proposals": self.recall,
                  "--proposal-file": self.proposal_file, "--tile": self.tiling,
                  "--precision": self.precision != "fp32", "--analyze": self.analyze,
                  "--max-dets": self.max_dets}
        given = [flag for flag, value in others.items() if value]
        if given:
            raise InputError(f"--compare-proposals compares proposal files; drop "
                             f"{', '.join(given)}")


@dataclass
class EvalReport:
    """What :func:`run_eval` did, for the CLI to print: one of ``result`` (mAP),
    ``recall`` (``--proposals``) or ``comparison`` (``--compare-proposals``), and with them
    the ``analysis`` (``--analyze``), the ``tiled`` images, the external proposal
    ``source`` that ran (its timing), the detections saved and the files ``written``."""

    data: Path
    result: EvalResult | None = None
    recall: Any = None
    comparison: Any = None
    analysis: Any = None
    tiled: list[TiledImage] = field(default_factory=list)
    source: Any = None
    score_thresh: float | None = None  # the model's, that its detections were kept at
    saved_detections: int | None = None
    written: list[Path] = field(default_factory=list)


def run_eval(args: EvalArgs, reporter: Reporter = SILENT) -> EvalReport | None:
    """Run ``frcnn eval`` as ``args`` says; see the module doc. Under torchrun every process
    checks the same inputs and outputs and runs its share of the images; the main process
    scores, writes and returns the report, the others return None."""
    from frcnn_cli import distributed

    args.refuse_conflicts()
    with distributed.processes(args.device) as (device, dist):
        report = _run(args, device, dist, reporter if dist.is_main else SILENT)
    return report if dist.is_main else None


def _run(args: EvalArgs, device, dist, reporter: Reporter) -> EvalReport:
    from frcnn_cli.data.usable import open_dataset
    from frcnn_cli.evaluation import eval_outputs

    if args.compare is not None or (args.detections is not None and not dist.is_main):
        # no model to run: the main process alone does the work
        return _compare(args, reporter) if dist.is_main else EvalReport(Path(args.data))
    outputs = eval_outputs.EvalOutputs.plan(args)  # before the dataset's images are read
    model = _load_model(args, device) if args.checkpoint is not None else None
    args.refuse_max_dets(args.metric or (model.recipe.eval.metric if model is not None
                                         else DETECTIONS_METRIC))
    ann = open_dataset(args.data, "eval" if model is not None else "score")
    outputs.check_dataset(ann)
    report = EvalReport(Path(args.data))
    if model is None:
        from frcnn_cli.evaluation.detections import read_detections

        dets = read_detections(args.detections, ann)
        return _score(args, ann, dets, outputs, report, reporter, str(args.detections))
    if args.recall:
        return _recall(args, model, device, ann, outputs, report, reporter, dist)
    from frcnn_cli.evaluation.inference import predict_dataset
    from frcnn_cli.proposals.sources import proposals_for

    report.source = proposals_for(model, args.proposal_file, ann, args.ignore_dataset_mismatch)
    report.score_thresh = model.recipe.roi_heads.score_thresh
    dets = predict_dataset(model, ann, device, reporter, args.batch_size,
                           precision=args.precision, proposals=report.source,
                           tiling=args.tiling, max_pixels=_max_pixels(args),
                           tiled_images=report.tiled, dist=dist)
    if not dist.is_main:
        return report
    if args.save_detections is not None:
        from frcnn_cli.evaluation.detections import save_detections

        report.written.append(save_detections(args.save_detections, dets))
        report.saved_detections = len(dets)
    return _score(args, ann, dets, outputs, report, reporter, "model detections",
                  model.recipe.eval.metric)


def _score(args: EvalArgs, ann, dets: list[dict], outputs, report: EvalReport,
           reporter: Reporter, source: str, default_metric: str = DETECTIONS_METRIC
           ) -> EvalReport:
    """Score ``dets``, analyse them (``--analyze``), write the JSON and the plots."""
    from frcnn_cli.evaluation.coco import MAX_DETS
    from frcnn_cli.evaluation.evaluate import evaluate_detections

    metric = args.metric or default_metric
    report.result = evaluate_detections(ann, dets, metric, source=source,
                                        max_dets=args.max_dets)
    if args.analyze is not None:
        from frcnn_cli.evaluation.analysis import SCORE_THRESH, analyze

        report.analysis = analyze(ann, dets, args.analyze,
                                  args.score_thresh if args.score_thresh is not None
                                  else SCORE_THRESH, max_dets=args.max_dets or MAX_DETS,
                                  reporter=reporter, source=source)
    report.written += outputs.write_result(report.result)
    return report


def _recall(args: EvalArgs, model, device, ann, outputs, report: EvalReport,
            reporter: Reporter, dist) -> EvalReport:
    from frcnn_cli.evaluation.inference import evaluate_proposals

    if model.proposal_source:
        raise InputError(f"{args.checkpoint} is a Fast R-CNN detector trained on "
                         f"{model.proposal_source['method']} proposals, without a trained RPN "
                         "to measure; compare proposal files with --compare-proposals")
    report.recall = evaluate_proposals(model, ann, device, reporter, args.batch_size,
                                       precision=args.precision,
                                       max_pixels=_max_pixels(args), dist=dist)
    if dist.is_main:
        report.written += outputs.write_recall(report.recall)
    return report


def _compare(args: EvalArgs, reporter: Reporter) -> EvalReport:
    from frcnn_cli.data.usable import open_dataset
    from frcnn_cli.evaluation import eval_outputs
    from frcnn_cli.files import require_file
    from frcnn_cli.proposals.recall import compare_proposal_files

    for file in args.compare:
        require_file(file, "proposals file")
    outputs = eval_outputs.EvalOutputs.plan(args)
    ann = open_dataset(args.data, "eval")
    outputs.check_dataset(ann)
    report = EvalReport(Path(args.data))
    report.comparison = compare_proposal_files(
        list(args.compare), ann, ignore_dataset_mismatch=args.ignore_dataset_mismatch)
    report.written += outputs.write_comparison(report.comparison)
    return report


def _load_model(args: EvalArgs, device):
    """The checkpoint's model (or the exported file's, run by its runtime) on ``device``, once
    the precision is known to run there (fp16 on a CPU is refused before any work)."""
    from frcnn_cli.devices import autocast

    autocast(device, args.precision)
    return load_detector(args.checkpoint, device, args.precision,
                         recall=args.recall, proposal_file=args.proposal_file)


def load_detector(path: PathLike, device, precision: str = "fp32", **needs: Any):
    """A checkpoint's model, or an exported file (ONNX, TorchScript: fp32 or INT8) as a
    detector with the same ``detect`` (:mod:`frcnn_cli.inference.exported`). An exported file
    is one graph at its own precision: InputError for what only a checkpoint can do
    (``needs``: ``recall`` for ``--proposals``, ``proposal_file``) and for ``--precision``."""
    from frcnn_cli import load_model
    from frcnn_cli.inference.exported import exported_format, load_exported_model

    if exported_format(path) is None:
        return load_model(path, device=device)
    refused = {"--precision": precision != "fp32", "--proposals": needs.get("recall"),
               "--proposal-file": needs.get("proposal_file")}
    flags = [flag for flag, value in refused.items() if value]
    if flags:
        raise InputError(f"{path} is an exported file, one graph at its own precision with its "
                         f"own RPN: {flags[0]} needs the checkpoint")
    return load_exported_model(path, device)


def _max_pixels(args: EvalArgs) -> int:
    from frcnn_cli.data.images import MAX_PIXELS

    return args.max_pixels or MAX_PIXELS
