"""Task boundaries: announced to the learner (hard), withheld (none), or blurred away (gradual).

- `hard` (the paper's protocol): each task starts with a fresh optimizer and the strategies hear when tasks
  begin and end (EWC's Fisher, SI's importance, per-task snapshots).
- `none`: the same sequence of data with no boundary information at all: one optimizer throughout, no task
  hooks, no per-task snapshots; strategies that need boundaries refuse, or run their boundary-free variant.
- `gradual` (van de Ven's task-free protocol): as `none`, and each training batch mixes the current task with
  its neighbour over a transition window around every boundary, the neighbour's share moving linearly from 0
  to 1 across it (each sample drawn from the neighbour with that probability), so no step ends a task.

Testing keeps its schedule (every task after every epoch-equivalent of steps), so the matrices of all three
compare directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum

import torch

from .loader import Batch, TaskSet, batch_bounds


class Boundaries(StrEnum):
    """Whether and how the learner is told where tasks change (see the module's doc)."""

    hard = "hard"
    none = "none"
    gradual = "gradual"


def steps_per_task(data: TaskSet, task: int, batch_size: int, epochs: int) -> int:
    """Training steps task `task` lasts: its epochs times its batches per epoch."""
    return epochs * len(batch_bounds(len(data.tasks[task].splits["train"]), batch_size))


def neighbour_share(step: int, steps: int, window: float) -> tuple[int, float]:
    """Which neighbour (-1: the previous task, +1: the next) a sample at `step` of a task of `steps` steps may come
    from, and with what probability: linear from 0 to 1 across a window of `window` x `steps` steps centred on
    each boundary, so 1/2 at the boundary itself."""
    half = window * steps / 2
    if half > 0 and step >= steps - half:
        return 1, (step - (steps - half)) / (2 * half)
    if half > 0 and step < half:
        return -1, 0.5 - step / (2 * half)
    return 0, 0.0


def gradual(data: TaskSet, task: int, epoch: int, epochs: int, batch_size: int, window: float,
            batches: Iterator[Batch], generator: torch.Generator) -> Iterator[Batch]:
    """Task `task`'s training batches of epoch `epoch`, each sample replaced, with the probability of
    `neighbour_share`, by a random training sample of the neighbouring task (none before the first task or
    after the last); draws from `generator` (the run's shuffling stream)."""
    steps = steps_per_task(data, task, batch_size, epochs)
    first = epoch * len(batch_bounds(len(data.tasks[task].splits["train"]), batch_size))
    for k, batch in enumerate(batches):
        side, share = neighbour_share(first + k, steps, window)
        other = task + side
        if share == 0 or not 0 <= other < len(data.tasks):
            yield batch
            continue
        swap = torch.rand(len(batch), generator=generator) < share
        positions = torch.randint(len(data.tasks[other].splits["train"]), (int(swap.sum()),), generator=generator)
        if len(positions) == 0:
            yield batch
            continue
        device = batch.y.device
        swap, positions = swap.to(device), positions.to(device)
        mixed = data.tasks[other].batch_at("train", positions)
        x, y, tasks, index = batch.x.clone(), batch.y.clone(), batch.task.clone(), batch.index.clone()
        x[swap], y[swap], tasks[swap], index[swap] = mixed.x, mixed.y, mixed.task, mixed.index
        yield Batch(x, y, tasks, index)
