"""Checkpoints: a run's training state and history, saved atomically after every epoch, restored to resume.

A checkpoint belongs to one experiment: it carries the run's fingerprint (a hash of every setting that
changes results, `config.science`) and is refused under another, so running the same command again in the
same directory resumes from the last finished epoch and ends with the results of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import save_torch
from ..errors import UserError
from ..record import CHECKPOINT, EpochRecord, RunRecord, epoch_from_dict
from .hooks import Strategy

FORMAT = 3


@dataclass
class History:
    """What the run has measured so far and where it resumes: a checkpoint's state besides the training one."""

    next_task: int = 0
    next_epoch: int = 0
    epochs: list[EpochRecord] = field(default_factory=list)
    acc_matrix: list[list[float]] = field(default_factory=list)
    acc_matrix_task_aware: list[list[float]] = field(default_factory=list)
    val_acc_matrix: list[list[float]] = field(default_factory=list)
    initial_acc: list[float] | None = None
    train_time: float = 0.0
    eval_time: float = 0.0
    resumes: list[dict[str, int]] = field(default_factory=list)

    def add(self, epoch: EpochRecord, last: bool) -> None:
        """A tested epoch; the last of its task adds the task's rows to the matrices."""
        self.epochs.append(epoch)
        if last:
            self.acc_matrix.append(epoch.test_acc)
            self.acc_matrix_task_aware.append(epoch.test_acc_task_aware)
            self.val_acc_matrix.append(epoch.val_acc)
        self.next_task, self.next_epoch = (epoch.task + 1, 0) if last else (epoch.task, epoch.epoch + 1)

    def record(self, template: RunRecord, **fields: Any) -> RunRecord:
        """The run's record so far: `template`'s fixed fields, the history and `fields` (status, ...)."""
        record = dataclasses.replace(
            template, acc_matrix=self.acc_matrix, acc_matrix_task_aware=self.acc_matrix_task_aware,
            val_acc_matrix=self.val_acc_matrix, initial_acc=self.initial_acc, epochs=self.epochs,
            train_time_s=self.train_time, eval_time_s=self.eval_time, resumes=self.resumes, **fields)
        record.summarize()
        return record

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint (the epochs' own fields, not copies: it is written at once)."""
        return {**self.__dict__, "epochs": [e.to_dict() for e in self.epochs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:  # noqa: D102
        return cls(**{**data, "epochs": [epoch_from_dict(e) for e in data["epochs"]]})


@dataclass
class Trainables:
    """The live objects whose state a checkpoint keeps (the optimizer is replaced at a task's start)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    strategies: list[Strategy]
    generator: torch.Generator  # shuffles the training data


class Checkpointer:
    """Saves and restores `<run dir>/checkpoint.pt` (when `enabled`), tied to the run's `fingerprint`."""

    def __init__(self, run_dir: str | Path, fingerprint: str, enabled: bool = True) -> None:
        self.path = Path(run_dir) / CHECKPOINT
        self.fingerprint = fingerprint
        self.enabled = enabled
        self.kept: EpochRecord | None = None  # the epoch the checkpoint on disk was saved after

    @staticmethod
    def capture(parts: Trainables) -> dict[str, Any]:
        """The training state (live references: copy it to keep it past the next step)."""
        return {"model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
                "scaler": parts.scaler.state_dict() if parts.scaler else None,
                "strategies": {s.name: s.state_dict() for s in parts.strategies},
                "generator": parts.generator.get_state(), "torch_rng": torch.get_rng_state()}

    def save(self, history: History, training_state: dict[str, Any]) -> None:
        """Write the checkpoint atomically (a crash leaves the previous one)."""
        save_torch(self.path, {"format": FORMAT, "fingerprint": self.fingerprint, "history": history.to_dict(),
                               **training_state})
        self.kept = history.epochs[-1]

    def restore(self, parts: Trainables, optimizer_for: Callable[[int], torch.optim.Optimizer], tasks: int
                ) -> History | None:
        """Load the checkpoint into `parts` and return its history, or None without one (or when checkpoints are
        off). A checkpoint of another format or experiment is a UserError. Unless all `tasks` are done, the
        optimizer of the task the run resumes in is rebuilt with `optimizer_for(task)` and its state loaded."""
        if not self.enabled or not self.path.exists():
            return None
        device = next(parts.model.parameters()).device
        try:
            ckpt = torch.load(self.path, map_location=device, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
            raise UserError(f"cannot read checkpoint {self.path} ({type(exc).__name__}); delete it to start over"
                            ) from exc
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "fingerprint" not in ckpt:
            raise UserError(f"{self.path} is not a checkpoint of this version's format; delete it or use another run "
                            "directory")
        if ckpt["fingerprint"] != self.fingerprint:
            raise UserError(f"{self.path.parent} holds a checkpoint of a different experiment (its config differs); "
                            "refusing to resume: use another run directory (hydra.run.dir=...) or delete it")
        history = History.from_dict(ckpt["history"])
        self.kept = history.epochs[-1] if history.epochs else None
        parts.model.load_state_dict(ckpt["model"])
        parts.generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        for strategy in parts.strategies:
            strategy.load_state_dict(ckpt["strategies"][strategy.name])
        if parts.scaler is not None:
            parts.scaler.load_state_dict(ckpt["scaler"])
        if history.next_task < tasks:
            parts.optimizer = optimizer_for(history.next_task)
            parts.optimizer.load_state_dict(ckpt["optimizer"])
        return history
