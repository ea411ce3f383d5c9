"""Experience replay (Chaudhry et al. 2019, "On tiny episodic memories in continual learning").

A buffer of `buffer_size` training examples is filled by reservoir sampling over the stream of every training
batch; each training batch is concatenated with as many examples drawn uniformly from the buffer (once it
holds any), and the loss is taken over both. The buffer keeps references (task, position in the task's
training split) to examples of the in-memory datasets, which is the same as keeping the examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import seeds
from ..data import Batch, TaskSet
from ..errors import UserError
from ..loop.hooks import Strategy, TaskContext
from . import StrategyConfig, register_strategy
from .joint import concat


@register_strategy("replay")
@dataclass
class ReplayConfig(StrategyConfig):
    """strategy=replay: the buffer and how much of it each batch replays."""

    _target_: str = "metaplastic_vit.strategies.replay.Replay"
    _partial_: bool = True
    buffer_size: int = 200  # examples kept, over all tasks
    replay_batch_size: int | None = None  # examples replayed per batch; null: the training batch size

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise UserError(f"strategy.buffer_size must be >= 1, got {self.buffer_size}")
        if self.replay_batch_size is not None and self.replay_batch_size < 1:
            raise UserError(f"strategy.replay_batch_size must be >= 1, got {self.replay_batch_size}")


class Replay(Strategy):
    """Reservoir buffer of (task, position) references, replayed into every training batch."""

    name = "replay"

    def __init__(self, model: nn.Module, data: TaskSet, buffer_size: int = 200,
                 replay_batch_size: int | None = None) -> None:
        self.capacity = buffer_size
        self.replay_batch_size = replay_batch_size
        self.tasks: list[int] = []
        self.positions: list[int] = []
        self.seen = 0  # stream examples offered to the reservoir so far
        self.generator: torch.Generator | None = None
        self._stream = 0  # how many leading samples of the current batch come from the stream

    def _rng(self, ctx: TaskContext) -> torch.Generator:
        if self.generator is None:
            self.generator = seeds.generator(ctx.seed, seeds.Stream.replay)
        return self.generator

    def train_batches(self, ctx: TaskContext, batches: Iterator[Batch]) -> Iterator[Batch]:  # noqa: D102
        rng = self._rng(ctx)
        for batch in batches:
            self._stream = len(batch)
            k = min(self.replay_batch_size or ctx.batch_size, len(self.tasks))
            if k == 0:
                yield batch
                continue
            chosen = torch.randperm(len(self.tasks), generator=rng)[:k].tolist()
            by_task: dict[int, list[int]] = {}
            for slot in chosen:
                by_task.setdefault(self.tasks[slot], []).append(self.positions[slot])
            device = batch.y.device
            replayed = [ctx.data.tasks[t].batch_at("train", torch.tensor(pos, device=device))
                        for t, pos in sorted(by_task.items())]
            yield concat([batch, *replayed])

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        """Offer the stream part of the batch to the reservoir."""
        rng = self._rng(ctx)
        tasks = batch.task[:self._stream].tolist()
        positions = batch.index[:self._stream].tolist()
        draws = torch.rand(len(tasks), generator=rng).tolist()
        for t, pos, u in zip(tasks, positions, draws, strict=True):
            self.seen += 1
            if len(self.tasks) < self.capacity:
                self.tasks.append(t)
                self.positions.append(pos)
            else:
                slot = int(u * self.seen)
                if slot < self.capacity:
                    self.tasks[slot], self.positions[slot] = t, pos

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"tasks": self.tasks, "positions": self.positions, "seen": self.seen,
                "generator": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.tasks, self.positions, self.seen = list(state["tasks"]), list(state["positions"]), state["seen"]
        if state["generator"] is not None:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
