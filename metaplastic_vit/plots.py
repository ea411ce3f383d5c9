"""Figures of one run (accuracy over training, accuracy matrices, hidden weights); helpers for reports.

matplotlib is imported when a figure is drawn, not when the package loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .record import EpochRecord, RunRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG and close it (figures laid out by matplotlib are not trimmed again)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches=None if fig.get_layout_engine() else "tight")
    pyplot().close(fig)
    return path


def task_boundaries(ax: Axes, epochs: Sequence[EpochRecord]) -> None:
    """Dashed lines where a new task begins, labelled with the task number."""
    for k, e in enumerate(epochs):
        if e.epoch == 0 and e.task > 0:
            ax.axvline(k + 0.5, color="grey", linestyle="--", linewidth=0.8)
    for task in sorted({e.task for e in epochs}):
        xs = [k + 1 for k, e in enumerate(epochs) if e.task == task]
        ax.text((xs[0] + xs[-1]) / 2, 1.01, f"task {task + 1}", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8, color="grey")


def accuracy_curves(record: RunRecord) -> Figure:
    """Test accuracy of every task after every epoch (the run's own protocol), task boundaries marked."""
    fig, ax = pyplot().subplots(figsize=(7, 4))
    xs = np.arange(1, len(record.epochs) + 1)
    for j, name in enumerate(record.columns or record.tasks):
        ax.plot(xs, [e.test_acc[j] for e in record.epochs], label=name, linewidth=1.5)
    task_boundaries(ax, record.epochs)
    ax.set_xlabel("epoch (all tasks, in training order)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0.5, len(record.epochs) + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(title="tested task", fontsize=8, loc="lower left")
    ax.set_title(f"every task during training, tested {record.protocol}", pad=16, fontsize=10)
    return fig


def matrix_heatmap(ax: Axes, matrix: Sequence[Sequence[float]], names: Sequence[str], title: str | None = None,
                   columns: Sequence[str] | None = None) -> Any:
    """Draw an accuracy matrix into `ax`, one cell per (trained task, tested column: a task, or a stream's whole
    test set); returns the image."""
    r = np.array(matrix, dtype=float)
    im = ax.imshow(r, vmin=0, vmax=100, cmap="viridis")
    for i in range(r.shape[0]):
        for j in range(r.shape[1]):
            ax.text(j, i, f"{r[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if r[i, j] < 60 else "black")
    ax.set_xticks(range(r.shape[1]), columns or names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(r.shape[0]), names[:r.shape[0]], fontsize=8)
    ax.set_xlabel("tested task")
    ax.set_ylabel("after training task")
    if title:
        ax.set_title(title, fontsize=9)
    return im


def accuracy_matrices(record: RunRecord) -> Figure:
    """The run's accuracy matrix beside the task-aware one (one panel in the task scenario, where they agree)."""
    panels = [(record.acc_matrix, f"tested {record.protocol}")]
    if record.scenario != "task":
        panels.append((record.acc_matrix_task_aware, "task-aware (tested with the task id)"))
    t = len(record.tasks)
    fig, axes = pyplot().subplots(1, len(panels), figsize=((1.2 * t + 2.5) * len(panels), 1.0 * t + 2), squeeze=False)
    for k, (ax, (matrix, title)) in enumerate(zip(axes.flat, panels, strict=True)):
        im = matrix_heatmap(ax, matrix, record.tasks, title=title, columns=record.columns or record.tasks)
        if k:  # the rows are the same tasks: named once, on the left
            ax.set_ylabel("")
            ax.set_yticklabels([])
    fig.colorbar(im, ax=axes.ravel().tolist(), label="test accuracy (%)")
    return fig


def weight_histograms(record: RunRecord) -> Figure:
    """Hidden-weight distribution of each layer at the end of each task."""
    from matplotlib import ticker

    hists = record.histograms
    names = list(hists)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False, layout="tight")
    for ax, name in zip(axes.flat, names, strict=False):
        for h in hists[name]:
            ax.stairs(h["counts"], np.array(h["edges"]), label=f"after task {h['task'] + 1}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("hidden weight $W_h$")
        ax.set_ylabel("count")
        ax.set_yscale("log")
        ax.yaxis.set_minor_locator(ticker.NullLocator())  # log axes' minor ticks make drawing slow
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("hidden-weight distributions per layer")
    return fig


def run_figures(record: RunRecord) -> dict[str, Figure]:
    """Every figure of one run, by file stem."""
    figures = {"accuracy_curves": accuracy_curves(record)}
    if record.acc_matrix:
        figures["accuracy_matrix"] = accuracy_matrices(record)
    if record.histograms:
        figures["weight_histograms"] = weight_histograms(record)
    return figures
