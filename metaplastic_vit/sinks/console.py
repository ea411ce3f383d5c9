"""Progress on the console (a bar on a terminal, one line per epoch otherwise) and the final table."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..loop.hooks import RunObserver
from ..record import EpochRecord, RunRecord
from . import register_sink


class Progress(StrEnum):
    """auto: a bar on a terminal, one line per epoch otherwise (Slurm logs)."""

    auto = "auto"
    bar = "bar"
    lines = "lines"
    none = "none"


@register_sink("console")
@dataclass
class ConsoleSinkConfig:
    """logger.console: progress output."""

    _target_: str = "metaplastic_vit.sinks.console.ConsoleSink"
    _partial_: bool = True
    progress: Progress = Progress.auto


def describe(record: RunRecord, write: Callable[[str], None]) -> None:
    """Write the accuracy matrix and the summary metrics, each labelled with how it was tested."""
    names, columns = record.tasks, record.columns or record.tasks
    width = max(8, *(len(n) for n in [*names, *columns]))
    what = "column = the whole test set" if record.stream else "column = tested task"
    write(f"accuracy matrix (%), tested {record.protocol}: row = after training task, {what}")
    write(" " * width + "".join(f"{n:>{width + 1}}" for n in columns))
    for name, row in zip(names, record.acc_matrix, strict=False):
        write(f"{name:<{width}}" + "".join(f"{a:>{width + 1}.1f}" for a in row))

    def fmt(value: float | None, signed: bool = True) -> str:
        return "n/a" if value is None else f"{value:+.2f}" if signed else f"{value:.2f}"

    write(f"ACC {fmt(record.avg_acc, False)}  BWT {fmt(record.bwt)}  forgetting {fmt(record.forgetting, False)}  "
          f"FWT {fmt(record.fwt)}")
    if record.scenario != "task" and not record.stream:
        write(f"task-aware (tested with the task id): ACC {fmt(record.avg_acc_task_aware, False)}  "
              f"BWT {fmt(record.bwt_task_aware)}  forgetting {fmt(record.forgetting_task_aware, False)}")
    if record.val_avg_acc is not None:
        write(f"validation ACC {fmt(record.val_avg_acc, False)} (choose hyper-parameters on this, not on the test)")


class ConsoleSink(RunObserver):
    """Progress while training; the table when the run completes."""


    def __init__(self, run_dir: str | Path, progress: Progress | str = Progress.auto, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        progress = Progress(progress)
        if progress == Progress.auto:
            progress = Progress.bar if self.stream.isatty() else Progress.lines
        self.mode = progress
        self.bar = None

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        elif self.mode != Progress.none:
            print(line, file=self.stream, flush=True)

    def _quiet(self) -> None:
        """The reader went away (`python run.py | head -1`): training goes on without console output, and the
        stream is pointed at /dev/null so that closing it at exit raises nothing either."""
        self.mode, self.bar = Progress.none, None
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        except (OSError, ValueError):  # a stream without a file descriptor
            pass

    def start(self, record: RunRecord, resumed: bool) -> None:  # noqa: D102
        if self.mode == Progress.bar:
            from tqdm import tqdm

            total = record.config["epochs_per_task"] * len(record.tasks)
            self.bar = tqdm(total=total, initial=len(record.epochs), unit="epoch", file=self.stream,
                            dynamic_ncols=True)

    def epoch(self, epoch: EpochRecord, record: RunRecord) -> None:  # noqa: D102
        try:
            self._progress(epoch, record)
        except BrokenPipeError:
            self._quiet()

    def _progress(self, epoch: EpochRecord, record: RunRecord) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"task {epoch.task + 1} loss {epoch.train_loss:.3f} "
                                     f"seen {epoch.mean_seen_acc:.1f}%")
            self.bar.update(1)
        elif self.mode == Progress.lines:
            tests = " ".join(f"{a:.1f}" for a in epoch.test_acc)  # one per column
            self._write(f"task {epoch.task + 1}/{len(record.tasks)} epoch {epoch.epoch + 1} "
                        f"loss {epoch.train_loss:.4f} train {epoch.train_acc:.1f}% test [{tests}] "
                        f"seen-mean {epoch.mean_seen_acc:.1f}%")

    def finish(self, record: RunRecord) -> None:  # noqa: D102
        self.close()
        if self.mode != Progress.none and record.status == "completed":
            try:
                describe(record, self._write)
            except BrokenPipeError:
                self._quiet()

    def close(self) -> None:  # noqa: D102
        if self.bar is not None:
            self.bar.close()
            self.bar = None
