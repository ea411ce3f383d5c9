"""The plugin protocol of the training loop.

The trainer (metaplastic_vit.trainer) owns the loop, testing and checkpoints; everything else is a plugin
whose hooks it calls with what they need: baselines (EWC, SI, replay, LwF, joint training), per-task state,
the diagnostics and the result sinks. Every hook is optional. Hooks receive the run's state explicitly (a
`TaskContext`, a batch, the record) instead of reaching into a shared trainer object.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..data import Scenario

if TYPE_CHECKING:
    from ..data import Batch, TaskSet
    from ..record import EpochRecord, RunRecord


@dataclass(frozen=True)
class TaskContext:
    """What a plugin may use while task `index` is learned (or right after, in `after_task`)."""

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


class Plugin:
    """Hooks called by the trainer, all optional. `name` keys the plugin's state in the checkpoint."""

    name = "plugin"

    def before_task(self, ctx: TaskContext) -> None:
        """A task starts (not called again when a run resumes in the middle of it)."""

    def train_batches(self, ctx: TaskContext, batches: Iterator[Batch]) -> Iterator[Batch]:
        """The stream of training batches of one epoch; a plugin may replace or extend it."""
        return batches

    def loss(self, ctx: TaskContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        """An extra term of the training loss for this batch (logits unmasked), or None."""
        return None

    def before_step(self, ctx: TaskContext) -> None:
        """Gradients are computed; the optimizer has not stepped yet."""

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        """The optimizer stepped on `batch`."""

    def after_task(self, ctx: TaskContext) -> None:
        """Task `ctx.index` has been learned (its last epoch tested, or its test started on a copy of the
        model beside the next epoch's training)."""

    def task_state(self, task: int, model: nn.Module) -> AbstractContextManager | None:
        """A context in which `model` (the trained model, or a copy of it under test) holds what the trained
        model had for `task` (task-aware testing), or None when its live state is the task's own."""
        return None

    def measure(self, ctx: TaskContext, task_end: bool) -> dict[str, Any]:
        """Fields this plugin adds to the epoch record (the diagnostics); `task_end` on a task's last epoch."""
        return {}

    def start(self, record: RunRecord, resumed: bool) -> None:
        """The run starts or resumes; `record` holds everything so far."""

    def epoch(self, epoch: EpochRecord, record: RunRecord) -> None:
        """An epoch ended and was checkpointed."""

    def task_end(self, record: RunRecord) -> None:
        """A task ended (after `epoch` for its last epoch)."""

    def finish(self, record: RunRecord) -> None:
        """The run completed, failed or was interrupted (record.status says which)."""

    def close(self) -> None:
        """Always called last, whatever happened."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep to resume this plugin exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s output."""


class Naive(Plugin):
    """No protection besides what meta gives (meta 0: plain fine-tuning, the lower bound)."""

    name = "naive"

    def __init__(self, model: nn.Module, data: TaskSet) -> None:
        pass


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether a module name matches any fnmatch pattern."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def protected_parameters(model: nn.Module, scenario: Scenario) -> list[nn.Parameter]:
    """The trainable parameters a weight-protection baseline (EWC, SI) guards: every one a task is tested with.

    Per-task modules are left out only in the task scenario, where each task is tested with its own copy put
    back; in the domain and class scenarios their live parameters serve every task, so they are protected like
    any other shared parameter.
    """
    patterns = getattr(getattr(model, "net_spec", None), "per_task", ()) if scenario == Scenario.task else ()
    per_task = {id(p) for n, m in model.named_modules() if n and matches(n, patterns) for p in m.parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in per_task]
