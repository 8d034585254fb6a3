"""The files ``frcnn eval`` writes: each checked before any work (it may be replaced only when
frcnn wrote it, and is no input), written at the end.

``--json`` holds an eval result, or with ``--proposals`` a proposal recall result (by
default ``recall.json`` beside the checkpoint), or with ``--compare-proposals`` a proposal
comparison; ``--plot`` the precision-recall curves (``recall.png``, the comparison's two
plots); ``--save-detections`` the model's detections; ``--analyze`` the error analysis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frcnn_cli.files import prepare_output_dir, prepare_output_file, require_file, write_result
from frcnn_cli.outputs import (
    DETECTIONS,
    EVAL_RESULT,
    PLOT,
    PROPOSAL_COMPARISON,
    RECALL_RESULT,
    OutputKind,
)


class EvalOutputs:
    """The output files of one ``frcnn eval`` (see the module doc)."""

    def __init__(self, args, inputs: list[Any]) -> None:
        self.args, self.inputs = args, inputs
        self.json: Path | None = Path(args.json_out) if args.json_out is not None else None
        self.kind: OutputKind = EVAL_RESULT
        self.png: Path | None = None
        if args.compare is not None:
            self.kind = PROPOSAL_COMPARISON
        elif args.recall:
            folder = Path(args.checkpoint).parent
            self.json = self.json or folder / "recall.json"
            self.png = Path(args.plot or folder) / "recall.png"
            self.kind = RECALL_RESULT

    @classmethod
    def plan(cls, args) -> EvalOutputs:
        """Check the inputs exist and the outputs may be written, before the dataset is read."""
        from frcnn_cli.evaluation.plots import COMPARISON_PLOTS

        require_file(args.data, "dataset")
        for path, what in ((args.checkpoint, "checkpoint"), (args.detections, "detections file"),
                           (args.proposal_file, "--proposal-file")):
            if path is not None:
                require_file(path, what)
        inputs = [p for p in (args.checkpoint, args.data, args.detections, args.proposal_file,
                              *(args.compare or [])) if p is not None]
        outputs = cls(args, inputs)
        if outputs.json is not None:
            prepare_output_file(outputs.json, outputs.kind, inputs, "--json file")
        if outputs.png is not None:
            prepare_output_file(outputs.png, PLOT, inputs, "recall plot")
        if args.save_detections is not None:
            prepare_output_file(args.save_detections, DETECTIONS, inputs,
                                "--save-detections file")
        if args.plot is not None and outputs.png is None:
            names = COMPARISON_PLOTS if args.compare is not None else ()
            prepare_output_dir(args.plot, inputs, "--plot folder",
                               writes=[(n, PLOT) for n in names])
        return outputs

    def check_dataset(self, ann) -> None:
        """Once the dataset is read: its images are inputs too, the PR plots get their
        class names, and ``--analyze`` its drawings' names."""
        for path, kind, what in ((self.json, self.kind, "--json file"),
                                 (self.args.save_detections, DETECTIONS,
                                  "--save-detections file")):
            if path is not None:
                prepare_output_file(path, kind, ann.image_files(), what)
        if self.args.plot is not None and self.kind is EVAL_RESULT:
            from frcnn_cli.evaluation.evaluate import class_names
            from frcnn_cli.evaluation.plots import pr_plot_names

            prepare_output_dir(self.args.plot, self.inputs, "--plot folder",
                               writes=[(n, PLOT) for n in pr_plot_names(class_names(ann))])
        if self.args.analyze is not None:
            from frcnn_cli.evaluation.analysis import check_outputs

            check_outputs(self.args.analyze, ann, self.inputs)

    def write_result(self, result) -> list[Path]:
        """An eval result's JSON and precision-recall plots."""
        written = []
        if self.json is not None:
            written.append(write_result(self.json, EVAL_RESULT, result.to_dict()))
        if self.args.plot is not None:
            from frcnn_cli.evaluation.plots import plot_pr_curves

            written += plot_pr_curves(result, self.args.plot)
        return written

    def write_recall(self, recall) -> list[Path]:
        from frcnn_cli.evaluation.plots import plot_recall_curve

        return [write_result(self.json, RECALL_RESULT, {
                    "checkpoint": str(self.args.checkpoint), "data": str(self.args.data),
                    **recall.to_dict()}),
                plot_recall_curve(recall, self.png)]

    def write_comparison(self, comparison) -> list[Path]:
        written = []
        if self.json is not None:
            written.append(write_result(self.json, PROPOSAL_COMPARISON,
                                        {"data": str(self.args.data), **comparison.to_dict()}))
        if self.args.plot is not None:
            from frcnn_cli.evaluation.plots import plot_proposal_comparison

            written += plot_proposal_comparison(comparison, self.args.plot)
        return written
