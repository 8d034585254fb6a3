"""Training curves from ``metrics.jsonl``: ``plots/loss.png`` (with the validation loss) and
``plots/val_map.png``."""

from __future__ import annotations

import json
from pathlib import Path

LOSS_LABELS = {"loss": "total", "loss_rpn_cls": "RPN objectness", "loss_rpn_box": "RPN box",
               "loss_det_cls": "detector class", "loss_det_box": "detector box"}


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the run's loss and validation curves as PNG; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    records = read_metrics(run / "metrics.jsonl")
    written: list[Path] = []
    (run / "plots").mkdir(exist_ok=True)
    steps = [r for r in records if "loss" in r]
    if steps:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label in LOSS_LABELS.items():
            pts = [(r["iteration"], r[key]) for r in steps if key in r]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=label, linewidth=2 if key == "loss" else 1)
        val = [(r["iteration"], r["val_loss"]) for r in records if "val_loss" in r]
        if val:
            xs, ys = zip(*val, strict=True)
            ax.plot(xs, ys, "k--o", label="total, validation", linewidth=2, markersize=4)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.set_title(f"{run.name}: training losses")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        written.append(run / "plots" / "loss.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    vals = [(r["iteration"], r["val_mAP"]) for r in records if "val_mAP" in r]
    if vals:
        fig, ax = plt.subplots(figsize=(7, 4))
        xs, ys = zip(*vals, strict=True)
        ax.plot(xs, ys, marker="o")
        ax.set_xlabel("iteration")
        ax.set_ylabel("validation mAP")
        ax.set_ylim(0, 1)
        ax.set_title(f"{run.name}: validation mAP")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(run / "plots" / "val_map.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written
