"""results.json and metrics.csv after every epoch (atomically), PNG figures at the end."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import plots
from ..atomic import atomic_write
from ..loop.hooks import RunObserver
from ..record import METRICS, RESULTS, EpochRecord, RunRecord, write_record
from . import register_sink


@register_sink("files")
@dataclass
class LocalSinkConfig:
    """logger.files: the run directory's results files."""

    _target_: str = "metaplastic_vit.sinks.local.LocalSink"
    _partial_: bool = True
    plots: bool = True  # PNG figures when the run completes


def csv_rows(epochs: list[EpochRecord]) -> list[dict[str, Any]]:
    """Flatten epoch records into CSV rows: one column per tested task and protocol, and per layer diagnostic."""
    rows = []
    for e in epochs:
        row = {"task": e.task, "epoch": e.epoch, "train_loss": e.train_loss, "train_acc": e.train_acc,
               "mean_seen_acc": e.mean_seen_acc, "lr": e.lr, "attenuated": e.diagnostics.attenuated}
        for prefix, accs in (("test_acc", e.test_acc), ("test_acc_task_aware", e.test_acc_task_aware),
                             ("val_acc", e.val_acc)):
            row.update({f"{prefix}_task{j}": a for j, a in enumerate(accs)})
        for layer, values in e.diagnostics.layers.items():
            row.update({f"{layer}/{k}": v for k, v in values.items()})
        rows.append(row)
    return rows


class LocalSink(RunObserver):
    """Writes the record as results.json and the epochs as metrics.csv, and the figures at the end."""


    def __init__(self, run_dir: str | Path, plots: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.plots = plots

    def start(self, record: RunRecord, resumed: bool) -> None:  # noqa: D102
        write_record(self.run_dir / RESULTS, record)

    def epoch(self, epoch: EpochRecord, record: RunRecord) -> None:  # noqa: D102
        write_record(self.run_dir / RESULTS, record)
        rows = csv_rows(record.epochs)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.run_dir / METRICS, lambda fh: fh.write(buf.getvalue().encode()))

    def finish(self, record: RunRecord) -> None:  # noqa: D102
        if self.plots and record.status == "completed" and record.epochs:
            for stem, fig in plots.run_figures(record).items():
                plots.save(fig, self.run_dir / f"{stem}.png")
        write_record(self.run_dir / RESULTS, record)
