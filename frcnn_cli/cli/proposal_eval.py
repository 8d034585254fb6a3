"""The proposal parts of ``frcnn eval`` and ``frcnn predict``: comparing proposal files
(``--compare-proposals``) and the time a detector's external proposals take against its
network (Selective Search, ``--proposal-file``)."""

from __future__ import annotations

from pathlib import Path

from frcnn_cli.cli import console
from frcnn_cli.errors import InputError


def compare(files: list[Path], data: Path, json_out: Path | None, plot: Path | None,
            ignore_dataset_mismatch: bool = False) -> None:
    """``eval --data ANN --compare-proposals A.pt B.pt ...``: recall at IoU 0.5 and 0.7 and
    AR for 100/300/1000/2000 proposals per image, a table per measure, and the JSON and
    plots."""
    from frcnn_cli.data.usable import open_dataset
    from frcnn_cli.evaluation.plots import COMPARISON_PLOTS
    from frcnn_cli.files import prepare_output_dir, prepare_output_file, require_file
    from frcnn_cli.outputs import PLOT, PROPOSAL_COMPARISON
    from frcnn_cli.proposals.recall import compare_proposal_files

    if not files:
        raise InputError("--compare-proposals needs the proposal files to compare "
                         "(made by frcnn propose)")
    require_file(data, "dataset")
    for file in files:
        require_file(file, "proposals file")
    inputs = [data, *files]
    if json_out is not None:
        prepare_output_file(json_out, PROPOSAL_COMPARISON, inputs, "--json file")
    if plot is not None:
        prepare_output_dir(plot, inputs, "--plot folder",
                           writes=[(name, PLOT) for name in COMPARISON_PLOTS])
    ann = open_dataset(data, "eval")
    if json_out is not None:  # the dataset's images are inputs too
        prepare_output_file(json_out, PROPOSAL_COMPARISON, ann.image_files(), "--json file")
    comparison = compare_proposal_files(files, ann,
                                        ignore_dataset_mismatch=ignore_dataset_mismatch)
    summary = comparison.to_dict()
    names = _names(files)
    counts = [str(n) for n in comparison.top_n]
    for key, title in (("0.5", "recall at IoU 0.5"), ("0.7", "recall at IoU 0.7"),
                       (None, "average recall, IoU 0.5:0.95")):
        rows = []
        for name, source in zip(names, summary["sources"], strict=True):
            values = source["recall"][key] if key else source["average_recall"]
            seconds = source["seconds_per_image"]
            rows.append([name, source["method"], *[values[n] for n in counts],
                         f"{seconds:.3g}" if seconds is not None else "n/a"])
        console.table(f"{title} on {data} ({summary['num_objects']} objects, "
                      f"{summary['num_images']} images), by proposals per image",
                      ["file", "method", *counts, "s/image"], rows)
    used = [f"{name} {source['proposals_per_image'][counts[-1]]:.0f}"
            for name, source in zip(names, summary["sources"], strict=True)]
    console.info(f"proposals per image at most (mean): {', '.join(used)}")
    if json_out is not None:
        from frcnn_cli.files import write_result

        write_result(json_out, PROPOSAL_COMPARISON, {"data": str(data), **summary})
        console.info(f"wrote {json_out}")
    if plot is not None:
        from frcnn_cli.evaluation.plots import plot_proposal_comparison

        written = plot_proposal_comparison(comparison, plot)
        console.info(f"wrote {', '.join(str(p) for p in written)}")


def _names(files: list[Path]) -> list[str]:
    """File names, with their folder when two share a name (runs/a/p.pt, runs/b/p.pt)."""
    names = [f.name for f in files]
    return [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name
            for f in files]


def timing(source) -> None:
    """Where the detector's proposals came from, and their seconds per image against the
    network's (``source``: an ``ExternalProposals`` that ran)."""
    if source is None or not source.images:
        return
    proposals, network = source.proposal_seconds_per_image, source.network_seconds_per_image
    console.info(f"proposals: {source.describe()}")
    console.result(f"seconds per image: proposals {proposals:.3f}, detector network "
                   f"{network:.3f}" + (f" (the proposals take {proposals / network:.1f}x "
                                       "the network's time)"
                                       if network > 0 and proposals > network else ""))
