"""The loop's two plugin protocols: a `Strategy` shapes training, a `RunObserver` receives the results.

The trainer (metaplastic_vit.loop.trainer) owns the loop, testing and checkpoints. A strategy (the baselines
in metaplastic_vit.strategies, and per-task state) is called inside training; an observer (the result sinks in
metaplastic_vit.sinks) hears of the run's progress and never changes it. Every hook is optional. Hooks receive
what they need explicitly (a `TaskContext`, a batch, the record) instead of reaching into the trainer.

Hook order, the same whether each epoch is tested in the loop or beside the next epoch's training: for task i,
`before_task(i)`, then for every epoch its training (`train_batches`, and per batch `loss`, `before_step`,
`after_step`) followed by the observers' `epoch` once it is tested and checkpointed; after the task's last
epoch `after_task(i)`, then that epoch's `epoch`, then `task_end`; only then `before_task(i + 1)`. (Beside
training, an epoch's `epoch` comes after the next epoch of the same task has trained.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ..data import Batch, TaskSet
    from ..record import EpochRecord, RunRecord


@dataclass(frozen=True)
class TaskContext:
    """What a strategy may use while task `index` is learned (or right after, in `after_task`)."""

    index: int
    data: TaskSet
    model: nn.Module
    optimizer: torch.optim.Optimizer
    # the model's logits for inputs, under the run's precision (no output mask)
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    # the training loss's view of logits: masked to each sample's task in the task scenario
    train_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batch_size: int
    seed: int
    generator: torch.Generator  # shuffles the training data


class Strategy:
    """Hooks into training, all optional. `name` keys the strategy's state in the checkpoint."""

    name = "strategy"

    def before_task(self, ctx: TaskContext) -> None:
        """A task starts (not called again when a run resumes in the middle of it)."""

    def train_batches(self, ctx: TaskContext, batches: Iterator[Batch]) -> Iterator[Batch]:
        """The stream of training batches of one epoch; a strategy may replace or extend it."""
        return batches

    def loss(self, ctx: TaskContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        """An extra term of the training loss for this batch (logits unmasked), or None."""
        return None

    def before_step(self, ctx: TaskContext) -> None:
        """Gradients are computed; the optimizer has not stepped yet."""

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        """The optimizer stepped on `batch`."""

    def after_task(self, ctx: TaskContext) -> None:
        """Task `ctx.index` has been learned (its last epoch trained and its test started)."""

    def task_state(self, task: int, model: nn.Module) -> AbstractContextManager | None:
        """A context in which `model` (the trained model, or a copy of it under test) holds what the trained
        model had for `task` (task-aware testing), or None when its live state is the task's own."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep to resume this strategy exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s output."""


class RunObserver:
    """Receives the run's results (the sinks: files, console, W&B), all hooks optional; never changes the run."""

    def start(self, record: RunRecord, resumed: bool) -> None:
        """The run starts or resumes; `record` holds everything so far."""

    def epoch(self, epoch: EpochRecord, record: RunRecord) -> None:
        """An epoch was tested and checkpointed."""

    def task_end(self, record: RunRecord) -> None:
        """A task ended (after `epoch` for its last epoch)."""

    def finish(self, record: RunRecord) -> None:
        """The run completed, failed or was interrupted (record.status says which)."""

    def close(self) -> None:
        """Always called last, whatever happened."""
