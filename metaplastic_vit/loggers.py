"""Result sinks: local files (results.json, metrics.csv, PNG plots), progress output, and W&B."""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path
from typing import Any

from . import plots
from .atomic import atomic_write, write_json
from .trainer import Sink, describe

log = logging.getLogger(__name__)

RESULTS = "results.json"
METRICS = "metrics.csv"


def csv_rows(records: list[dict[str, Any]], n_tasks: int) -> list[dict[str, Any]]:
    """Flatten per-epoch records into CSV rows (one column per tested task and per layer diagnostic)."""
    rows = []
    for rec in records:
        row = {k: rec[k] for k in ("task", "epoch", "train_loss", "train_acc", "mean_seen_acc", "lr")}
        row.update({f"test_acc_task{j}": rec["test_acc"][j] for j in range(n_tasks)})
        for layer, values in rec["diagnostics"].items():
            row.update({f"{layer}/{k}": v for k, v in values.items()})
        rows.append(row)
    return rows


class LocalSink(Sink):
    """Writes results.json and metrics.csv after every epoch (atomically) and the plots at the end."""

    def __init__(self, run_dir: str | Path, plots_enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.plots_enabled = plots_enabled

    def start(self, results: dict[str, Any], resumed: bool) -> None:  # noqa: D102
        write_json(self.run_dir / RESULTS, results)

    def epoch(self, record: dict[str, Any], results: dict[str, Any]) -> None:  # noqa: D102
        write_json(self.run_dir / RESULTS, results)
        rows = csv_rows(results["epochs"], len(results["tasks"]))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.run_dir / METRICS, lambda fh: fh.write(buf.getvalue().encode()))

    def finish(self, results: dict[str, Any]) -> None:  # noqa: D102
        if self.plots_enabled and results["epochs"]:
            results["plots"] = [p.name for p in plots.run_figures(results, self.run_dir)]
        write_json(self.run_dir / RESULTS, results)


class ProgressSink(Sink):
    """A progress bar on a terminal, one plain line per epoch otherwise (Slurm logs), then the table."""

    def __init__(self, mode: str = "auto", total_epochs: int = 0, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.mode = ("bar" if self.stream.isatty() else "lines") if mode == "auto" else mode
        self.total = total_epochs
        self.bar = None

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        elif self.mode != "none":
            print(line, file=self.stream, flush=True)

    def start(self, results: dict[str, Any], resumed: bool) -> None:  # noqa: D102
        if self.mode == "bar":
            from tqdm import tqdm

            done = len(results["epochs"])
            self.bar = tqdm(total=self.total, initial=done, unit="epoch", file=self.stream, dynamic_ncols=True)

    def epoch(self, record: dict[str, Any], results: dict[str, Any]) -> None:  # noqa: D102
        tests = " ".join(f"{a:.1f}" for a in record["test_acc"])
        text = (f"task {record['task'] + 1}/{len(results['tasks'])} epoch {record['epoch'] + 1} "
                f"loss {record['train_loss']:.4f} train {record['train_acc']:.1f}% test [{tests}] "
                f"seen-mean {record['mean_seen_acc']:.1f}%")
        if self.bar is not None:
            self.bar.set_postfix_str(f"task {record['task'] + 1} loss {record['train_loss']:.3f} "
                                     f"seen {record['mean_seen_acc']:.1f}%")
            self.bar.update(1)
        elif self.mode == "lines":
            self._write(text)

    def finish(self, results: dict[str, Any]) -> None:  # noqa: D102
        self.close()
        if self.mode != "none" and results["status"] == "completed":
            describe(results, self._write)

    def close(self) -> None:  # noqa: D102
        if self.bar is not None:
            self.bar.close()
            self.bar = None
