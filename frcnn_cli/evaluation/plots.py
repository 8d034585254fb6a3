"""PNG figures of evaluation results: precision-recall per class, proposal recall vs IoU.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch),
so this works on machines without a display and leaves other users of matplotlib alone.
Files are written atomically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from frcnn_cli.files import atomic_open

if TYPE_CHECKING:
    from frcnn_cli.evaluation.evaluate import EvalResult
    from frcnn_cli.evaluation.recall import RecallResult


def _figure(width: float = 5.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    return path


def safe_name(name: str) -> str:
    """A class name as a file name part: letters, digits, ``-`` and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "class"


def plot_pr_curves(result: EvalResult, folder: str | os.PathLike) -> list[Path]:
    """Write ``pr_<class>.png`` for every class with objects and ``pr_all.png`` with all of
    them on one chart; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    where = "IoU 0.5" if result.metric == "coco" else "IoU > 0.5"
    written, used = [], set()
    for name, curve in result.curves.items():
        fig = _figure()
        ax = fig.add_subplot()
        ax.plot(curve.recall, curve.precision, drawstyle="steps-post", color="tab:blue")
        _pr_axes(ax, f"{name}: AP {result.per_class[name]:.4f} ({result.metric})", where)
        stem = safe_name(name)
        while stem in used:  # two names that differ only in punctuation
            stem += "_"
        used.add(stem)
        written.append(_save(fig, folder / f"pr_{stem}.png"))

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
