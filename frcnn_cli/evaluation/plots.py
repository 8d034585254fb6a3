"""PNG figures of evaluation results: precision-recall per class, proposal recall vs IoU, the
comparison of proposal methods (recall vs IoU and vs the number of proposals), and the
confusion matrix of the error analysis.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch),
so this works on machines without a display and leaves other users of matplotlib alone.
Files are written atomically, tagged (PNG Software text) so that a later run may replace them
and nothing else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from frcnn_cli.files import atomic_open, prepare_output_file
from frcnn_cli.outputs import PLOT, PLOT_SOFTWARE

if TYPE_CHECKING:
    from frcnn_cli.evaluation.confusion import Confusion
    from frcnn_cli.evaluation.evaluate import EvalResult
    from frcnn_cli.proposals.recall import ProposalComparison, RecallResult


def _figure(width: float = 5.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as PNG, tagged as frcnn's plot; a file there that is not an earlier plot
    is refused (InputError) and left alone."""
    prepare_output_file(path, PLOT, what="plot")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", bbox_inches="tight", metadata={"Software": PLOT_SOFTWARE})
    return path


def safe_name(name: str) -> str:
    """A class name as a file name part: letters, digits, ``-`` and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "class"


def pr_plot_names(class_names: list[str]) -> list[str]:
    """The files :func:`plot_pr_curves` writes for these classes: ``pr_<class>.png`` each, in
    order, then ``pr_all.png``; a class named ``all`` (or a name that differs from another
    only in punctuation) gets underscores until its file is its own."""
    names, used = [], {"all"}
    for name in class_names:
        stem = safe_name(name)
        while stem in used:  # two names that differ only in punctuation
            stem += "_"
        used.add(stem)
        names.append(f"pr_{stem}.png")
    return [*names, "pr_all.png"]


def plot_pr_curves(result: EvalResult, folder: str | os.PathLike) -> list[Path]:
    """Write ``pr_<class>.png`` for every class with objects and ``pr_all.png`` with all of
    them on one chart (:func:`pr_plot_names`); returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    where = "IoU 0.5" if result.metric == "coco" else "IoU > 0.5"
    written = []
    for (name, curve), file in zip(result.curves.items(), pr_plot_names(list(result.curves)),
                                   strict=False):
        fig = _figure()
        ax = fig.add_subplot()
        ax.plot(curve.recall, curve.precision, drawstyle="steps-post", color="tab:blue")
        _pr_axes(ax, f"{name}: AP {result.per_class[name]:.4f} ({result.metric})", where)
        written.append(_save(fig, folder / file))

    many = len(result.curves) > 6
    fig = _figure(8.0 if many else 6.0, 5.0)
    ax = fig.add_subplot()
    if len(result.curves) > 10:  # tab10 would repeat colours
        from matplotlib import colormaps

        ax.set_prop_cycle(color=[colormaps["tab20"](i % 20) for i in range(len(result.curves))])
    for name, curve in result.curves.items():
        ax.plot(curve.recall, curve.precision, drawstyle="steps-post",
                label=f"{name} ({result.per_class[name]:.3f})")
    _pr_axes(ax, f"mAP {result.mAP:.4f} ({result.metric})", where)
    if many:  # beside the chart, where it hides no curve
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5),
                  ncol=1 if len(result.curves) <= 20 else 2)
    elif result.curves:
        ax.legend(fontsize="small", loc="lower left")
    written.append(_save(fig, folder / "pr_all.png"))
    return written


def _pr_axes(ax, title: str, where: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"recall ({where})")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3)


def plot_recall_curve(result: RecallResult, path: str | os.PathLike) -> Path:
    """Recall against IoU threshold for each top-N, like Figure 4 of the paper."""
    fig = _figure()
    ax = fig.add_subplot()
    styles = ["-", "--", ":", "-."]  # curves that coincide (few proposals) stay visible
    for i, n in enumerate(result.top_n):
        ax.plot(result.iou_thresholds, result.recall[n], marker="o", markersize=3,
                linestyle=styles[i % len(styles)],
                label=f"top {n}: {result.mean_proposals[n]:.0f} per image, "
                      f"AR {result.average_recall[n]:.3f}")
    ax.set_xlim(float(result.iou_thresholds[0]), float(result.iou_thresholds[-1]))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("IoU")
    ax.set_ylabel("recall")
    ax.set_title(f"proposal recall, {result.num_objects} objects in {result.num_images} images",
                 fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, Path(path))


# the files plot_proposal_comparison writes
COMPARISON_PLOTS = ("recall_vs_iou.png", "recall_vs_proposals.png")


def plot_proposal_comparison(comparison: ProposalComparison, folder: str | os.PathLike,
                             top_n: int = 300) -> list[Path]:
    """Write ``recall_vs_iou.png`` (recall against IoU for the top ``top_n`` proposals of each
    source, the paper's Figure 4) and ``recall_vs_proposals.png`` (recall against the number
    of proposals at IoU 0.5 and 0.7); returns the paths written."""
    from frcnn_cli.proposals.recall import COMPARE_IOUS

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [_source_name(s) for s in comparison.sources]

    fig = _figure(6.0, 4.5)
    ax = fig.add_subplot()
    for name, result in zip(names, comparison.results, strict=True):
        if top_n not in result.recall:
            raise ValueError(f"recall was not computed for the top {top_n}")
        ax.plot(result.iou_thresholds, result.recall[top_n], marker="o", markersize=3,
                label=f"{name}: AR {result.average_recall[top_n]:.3f}")
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("IoU")
    ax.set_ylabel("recall")
    ax.set_title(f"recall of the top {top_n} proposals per image", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    written = [_save(fig, folder / COMPARISON_PLOTS[0])]

    fig = _figure(10.0, 4.5)
    for k, iou in enumerate(COMPARE_IOUS):
        ax = fig.add_subplot(1, len(COMPARE_IOUS), k + 1)
        for name, result in zip(names, comparison.results, strict=True):
            counts = sorted(result.top_n)
            ax.plot(counts, [result.recall_at(n, iou) for n in counts], marker="o",
                    markersize=3, label=name)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("proposals per image")
        ax.set_ylabel(f"recall at IoU {iou}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    if comparison.results:
        first = comparison.results[0]
        fig.suptitle(f"proposal recall, {first.num_objects} objects in {first.num_images} "
                     "images", fontsize="medium")
    written.append(_save(fig, folder / COMPARISON_PLOTS[1]))
    return written


def _source_name(source) -> str:
    """``method (file name[, s/image])`` for a legend."""
    speed = (f", {source.seconds_per_image:.3g} s/image"
             if source.seconds_per_image is not None else "")
    return f"{source.method} ({Path(source.file).name}{speed})"


def plot_confusion(confusion: Confusion, path: str | os.PathLike) -> Path:
    """The confusion matrix as a heat map, rows ground truth and columns detections: each
    cell coloured by its share of its row (where that class's objects went, or for the
    background row, where the unmatched detections are) and labelled with its count when
    the classes are few enough to read."""
    import numpy as np

    from frcnn_cli.evaluation.tide import FG_IOU

    matrix = confusion.matrix
    labels = [*confusion.names, "background"]
    rows = matrix.sum(axis=1, keepdims=True)
    share = matrix / np.maximum(rows, 1)
    side = min(16.0, 3.0 + 0.45 * len(labels))
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize="small")
    ax.set_yticks(range(len(labels)), labels, fontsize="small")
    ax.set_xlabel("detection")
    ax.set_ylabel("ground truth")
    if len(labels) <= 30:
        size = "small" if len(labels) <= 12 else "x-small"
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=size,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(f"confusion at score >= {confusion.score_thresh:g}, IoU >= {FG_IOU:g}",
                 fontsize="medium")
    return _save(fig, Path(path))
