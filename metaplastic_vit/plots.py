"""Figures of one run (accuracy over training, accuracy matrix, hidden weights) and across runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _task_boundaries(ax: plt.Axes, records: Sequence[Mapping[str, Any]]) -> None:
    """Dashed lines where a new task begins, labelled with the task number."""
    for k, rec in enumerate(records):
        if rec["epoch"] == 0 and rec["task"] > 0:
            ax.axvline(k + 0.5, color="grey", linestyle="--", linewidth=0.8)
    for task in sorted({r["task"] for r in records}):
        xs = [k + 1 for k, r in enumerate(records) if r["task"] == task]
        ax.text((xs[0] + xs[-1]) / 2, 1.01, f"task {task + 1}", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8, color="grey")


def accuracy_curves(results: Mapping[str, Any], path: str | Path) -> Path:
    """Test accuracy of every task after every epoch, with task boundaries marked."""
    records = results["epochs"]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = np.arange(1, len(records) + 1)
    for j, name in enumerate(results["tasks"]):
        ax.plot(xs, [r["test_acc"][j] for r in records], label=name, linewidth=1.5)
    _task_boundaries(ax, records)
    ax.set_xlabel("epoch (all tasks, in training order)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0.5, len(records) + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(title="tested task", fontsize=8, loc="lower left")
    ax.set_title(results.get("title", "accuracy of every task during training"), pad=16)
    return _save(fig, path)


def matrix_heatmap(ax: plt.Axes, results: Mapping[str, Any], title: str | None = None) -> None:
    """Draw the accuracy matrix into `ax`, one cell per (trained task, tested task)."""
    r = np.array(results["acc_matrix"], dtype=float)
    names = results["tasks"]
    im = ax.imshow(r, vmin=0, vmax=100, cmap="viridis")
    for i in range(r.shape[0]):
        for j in range(r.shape[1]):
            ax.text(j, i, f"{r[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if r[i, j] < 60 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(r.shape[0]), names[:r.shape[0]], fontsize=8)
    ax.set_xlabel("tested task")
    ax.set_ylabel("after training task")
    if title:
        ax.set_title(title, fontsize=9)
    return im


def accuracy_matrix(results: Mapping[str, Any], path: str | Path) -> Path:
    """The accuracy matrix as a heatmap."""
    fig, ax = plt.subplots(figsize=(1.2 * len(results["tasks"]) + 2.5, 1.0 * len(results["tasks"]) + 2))
    im = matrix_heatmap(ax, results, title=results.get("title", "accuracy matrix (%)"))
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    return _save(fig, path)


def weight_histograms(results: Mapping[str, Any], path: str | Path) -> Path:
    """Hidden-weight distribution of each layer at the end of each task."""
    hists = results["histograms"]
    names = list(hists)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for h in hists[name]:
            edges = np.array(h["edges"])
            ax.stairs(h["counts"], edges, label=f"after task {h['task'] + 1}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("hidden weight $W_h$")
        ax.set_ylabel("count")
        ax.set_yscale("log")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("hidden-weight distributions per layer")
    fig.tight_layout()
    return _save(fig, path)


def run_figures(results: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """All figures of one run, as PNG files in `out_dir`."""
    out = Path(out_dir)
    paths = [accuracy_curves(results, out / "accuracy_curves.png")]
    if results["acc_matrix"]:
        paths.append(accuracy_matrix(results, out / "accuracy_matrix.png"))
    if results["histograms"]:
        paths.append(weight_histograms(results, out / "weight_histograms.png"))
    return paths
