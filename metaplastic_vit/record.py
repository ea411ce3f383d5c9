"""The results record of one run (results.json): typed, versioned, written and read here only.

The trainer builds a `RunRecord` after every epoch; sinks receive it and never change it. Accuracy
matrices R are T x T in percent: row i after training task i, column j the tested task j.

- `acc_matrix`: tested as the run's scenario says: without the task id in `domain` and `class` (live state,
  no output mask), with it in `task`. One exception, named by `protocol`: with transductive BatchNorm each
  test batch holds one task and is normalised with its own statistics, which carries the task's identity.
- `acc_matrix_task_aware`: the same network tested with the task id (each task's per-task state restored
  and the outputs masked to its classes); equal to `acc_matrix` in the task scenario.
- `val_acc_matrix`: `acc_matrix`'s protocol on each task's validation split (held out from training):
  choose hyper-parameters on it, never on the test matrices.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import metrics
from .atomic import atomic_write

FORMAT = 3
# The files a run writes into its directory, and those a search writes into its sweep directory
RESULTS = "results.json"  # the record
METRICS = "metrics.csv"  # the record's epochs as a table
CHECKPOINT = "checkpoint.pt"  # the training state, to resume
SEARCH = "search.json"  # a search's objectives, directions, budget, seeds and space (hydra/sweeper=optuna)
TRIALS = "trials.json"  # a search's trials: values, objectives and their standard errors, run directories
STATUSES = ("running", "completed", "pruned", "failed", "interrupted")
# The record's validation metrics: what a search may optimise (the test metrics are only reported)
VALIDATION_METRICS = ("val_avg_acc", "val_old_acc", "val_new_acc")
# the record's end-of-run numbers (RunRecord fields), as W&B's run summary carries them
SUMMARY_METRICS = ("avg_acc", "bwt", "forgetting", "fwt", "avg_acc_task_aware", "bwt_task_aware",
                   "forgetting_task_aware", "val_avg_acc")


class MalformedRecordError(ValueError):
    """A results file that is not a record of this format (the reason is the message)."""


@dataclass
class Diagnostics:
    """The hidden weights after an epoch, as metaplastic_vit.diagnostics measures them."""

    attenuated: float | None = None  # share of metaplastic hidden weights with f_meta < 0.5 (None: no meta)
    layers: dict[str, dict[str, float]] = field(default_factory=dict)  # per layer: attenuated, flipped, mean_abs
    histograms: dict[str, dict[str, list[float]]] | None = None  # per layer, at a task's last epoch


@dataclass
class EpochRecord:
    """One epoch: its training loss and accuracy, every task's accuracies, and the diagnostics."""

    task: int
    epoch: int
    train_loss: float
    train_acc: float
    test_acc: list[float]  # every task, under the run's scenario
    test_acc_task_aware: list[float]  # every task, tested with its task id
    val_acc: list[float]  # every task's validation split, under the run's scenario (empty without one)
    mean_seen_acc: float  # mean test_acc over the tasks learned so far
    lr: float
    diagnostics: Diagnostics = field(default_factory=Diagnostics)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the record's own fields, not copies)."""
        return {**vars(self), "diagnostics": vars(self.diagnostics)}


def epoch_from_dict(data: dict[str, Any]) -> EpochRecord:
    """An EpochRecord from its plain data (`EpochRecord.to_dict`)."""
    return EpochRecord(**{**data, "diagnostics": Diagnostics(**data.get("diagnostics", {}))})


@dataclass
class RunRecord:
    """Everything results.json holds about one run."""

    status: str
    config: dict[str, Any]
    tasks: list[str]  # the rows of the accuracy matrices: after training each task
    scenario: str
    net: str
    meta: float | list[float]
    seed: int
    strategy: str
    science: dict[str, Any] = field(default_factory=dict)  # the settings that change results, flat (config.science)
    # the matrices' columns, what was tested: every task, or a stream's whole test set (then the matrices are
    # one column: the accuracy after every part of the stream, a curve)
    columns: list[str] = field(default_factory=list)
    stream: bool = False
    run_dir: str = ""
    sweep: str | None = None  # <sweep_name>-<sweep dir> for a multirun job (the default W&B group)
    device: str = "cpu"
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES of the process (a launcher's GPU assignment)
    precision: str = "fp32"
    threads: int = 1
    parameters: int = 0
    binary_weights: int = 0  # hidden weights of the binary layers (computing with their sign)
    metaplastic_weights: int = 0  # weights the metaplastic rule acts on in this run (meta > 0, >= 2-D)
    fan_in: dict[str, int] = field(default_factory=dict)  # inputs per output of each binary layer
    reason: str | None = None
    acc_matrix: list[list[float]] = field(default_factory=list)
    acc_matrix_task_aware: list[list[float]] = field(default_factory=list)
    val_acc_matrix: list[list[float]] = field(default_factory=list)
    initial_acc: list[float] | None = None  # random init, under the run's scenario (for FWT)
    avg_acc: float | None = None
    avg_acc_task_aware: float | None = None
    val_avg_acc: float | None = None
    val_old_acc: float | None = None  # validation: mean of the earlier tasks after the last task
    val_new_acc: float | None = None  # validation: the newest task after the last task
    bwt: float | None = None
    bwt_task_aware: float | None = None
    forgetting: float | None = None
    forgetting_task_aware: float | None = None
    fwt: float | None = None
    epochs: list[EpochRecord] = field(default_factory=list)
    startup_s: float | None = None  # from the process's start to its first epoch (imports, data, model)
    train_time_s: float = 0.0
    # seconds the loop spent testing, or waiting for a test running beside training (the copy of the model
    # it tests included): what testing adds to the run
    eval_time_s: float = 0.0
    resumes: list[dict[str, int]] = field(default_factory=list)
    format: int = FORMAT

    @property
    def complete(self) -> bool:
        """Whether every task has its row in the accuracy matrix."""
        return bool(self.tasks) and len(self.acc_matrix) == len(self.tasks)

    @property
    def transductive(self) -> bool:
        """Whether BatchNorm normalised each test batch (all of one task) with that batch's own statistics."""
        return bool((self.config.get("net") or {}).get("transductive_bn"))

    @property
    def uses_task_identity(self) -> bool:
        """Whether `acc_matrix` was tested with the task identity: the task scenario, or task-pure test batches
        normalised with their own statistics (transductive BatchNorm)."""
        return self.scenario == "task" or self.transductive

    @property
    def protocol(self) -> str:
        """How `acc_matrix` was tested, in words (for consoles, figures, reports and W&B)."""
        if self.scenario == "task":
            return "with the task id (task scenario)"
        if self.transductive:
            return (f"with the task identity through task-pure test batches (transductive BatchNorm, "
                    f"{self.scenario} scenario)")
        return f"without the task id ({self.scenario} scenario)"

    @property
    def tested(self) -> str:
        """`protocol` in a few words (table columns, figure titles)."""
        if self.scenario == "task":
            return "task id"
        return "task id via transductive BN" if self.transductive else "no task id"

    @property
    def histograms(self) -> dict[str, list[dict[str, Any]]]:
        """Hidden-weight histograms per layer, one per finished task: {"task", "edges", "counts"}."""
        out: dict[str, list[dict[str, Any]]] = {}
        for e in self.epochs:
            for layer, h in (e.diagnostics.histograms or {}).items():
                out.setdefault(layer, []).append({"task": e.task, **h})
        return out

    def summarize(self) -> None:
        """Fill the summary metrics from the matrices (once every task has its row)."""
        if not self.complete:
            return
        own = metrics.summary(self.acc_matrix, self.initial_acc)
        aware = metrics.summary(self.acc_matrix_task_aware)
        self.avg_acc, self.bwt, self.forgetting, self.fwt = own["avg_acc"], own["bwt"], own["forgetting"], own["fwt"]
        self.avg_acc_task_aware, self.bwt_task_aware = aware["avg_acc"], aware["bwt"]
        self.forgetting_task_aware = aware["forgetting"]
        if self.val_acc_matrix and self.val_acc_matrix[-1]:
            last = self.val_acc_matrix[-1]
            self.val_avg_acc = sum(last) / len(last)
            self.val_new_acc = last[-1]
            self.val_old_acc = sum(last[:-1]) / (len(last) - 1) if len(last) > 1 else None

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as results.json holds it."""
        return dataclasses.asdict(self)


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as flat dotted keys (net.name, optimizer.meta_scale, ...)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        else:
            out[name] = value
    return out


def write_record(path: str | Path, record: RunRecord) -> None:
    """Write the record as results.json, atomically, one top-level key per line.

    The record grows with every epoch and is rewritten after each: it is encoded by the C JSON encoder
    (no indentation inside a value) straight from the dataclasses, without copying them first.
    """
    def plain(obj: Any) -> dict[str, Any]:
        if dataclasses.is_dataclass(obj):
            return vars(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON data")

    lines = [f"  {json.dumps(f.name)}: {json.dumps(getattr(record, f.name), default=plain, allow_nan=True)}"
             for f in dataclasses.fields(record)]
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    atomic_write(path, lambda fh: fh.write(text.encode()))


def _matrix_ok(value: Any, rows: int | None = None, cols: int | None = None) -> bool:
    return (isinstance(value, list) and (rows is None or len(value) <= rows)
            and all(isinstance(r, list) and (cols is None or len(r) == cols)
                    and all(isinstance(a, int | float) for a in r) for r in value))


def record_from_dict(data: Any) -> RunRecord:
    """A RunRecord from results.json's content; MalformedRecordError when it is not one of this format."""
    if not isinstance(data, dict):
        raise MalformedRecordError(f"not a JSON object but {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise MalformedRecordError(f"results format {data.get('format')!r}, this version reads {FORMAT}")
    names = {f.name for f in dataclasses.fields(RunRecord)}
    missing = sorted({"status", "config", "tasks", "scenario", "net", "meta", "seed", "strategy"} - set(data))
    if missing:
        raise MalformedRecordError(f"missing {', '.join(missing)}")
    if data["status"] not in STATUSES or not isinstance(data["tasks"], list) or not isinstance(data["config"], dict):
        raise MalformedRecordError("status, tasks or config has the wrong type")
    t, c = len(data["tasks"]), len(data.get("columns") or data["tasks"])
    for key in ("acc_matrix", "acc_matrix_task_aware", "val_acc_matrix"):
        if not _matrix_ok(data.get(key, []), t, c if key != "val_acc_matrix" or data.get(key) else None):
            raise MalformedRecordError(f"{key} is not a matrix of numbers with {c} columns")
    try:
        epochs = [epoch_from_dict(e) for e in data.get("epochs", [])]
        return RunRecord(**{k: v for k, v in data.items() if k in names and k != "epochs"}, epochs=epochs)
    except TypeError as exc:
        raise MalformedRecordError(f"unexpected fields ({exc})") from None


def read_record(path: str | Path) -> RunRecord:
    """Read results.json; OSError when unreadable, MalformedRecordError when not a record."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise MalformedRecordError(f"not JSON ({exc})") from None
    return record_from_dict(data)
