"""Joint (interleaved) training: every batch mixes all tasks in equal parts; the upper bound.

It is the paper's interleaved baseline expressed as a task stream: during each task's epochs the plugin
replaces the task's batches with batches drawn from every task of the sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..data import Batch, TaskSet
from ..loop.hooks import Strategy, TaskContext
from . import StrategyConfig, register_strategy


@register_strategy("joint")
@dataclass
class JointConfig(StrategyConfig):
    """strategy=joint: no settings."""

    _target_: str = "metaplastic_vit.strategies.joint.Joint"
    _partial_: bool = True


def concat(batches: list[Batch]) -> Batch:
    """One batch made of several."""
    return Batch(*(torch.cat([getattr(b, f) for b in batches]) for f in ("x", "y", "task", "index")))


class Joint(Strategy):
    """Batches of batch_size // T samples of each of the T tasks, for as long as the smallest task lasts."""

    name = "joint"

    def __init__(self, model: nn.Module, data: TaskSet) -> None:
        pass

    def train_batches(self, ctx: TaskContext, batches: Iterator[Batch]) -> Iterator[Batch]:  # noqa: D102
        per_task = max(1, ctx.batch_size // len(ctx.data.tasks))
        streams = [t.batches("train", per_task, ctx.generator) for t in ctx.data.tasks]
        for parts in zip(*streams, strict=False):
            yield concat(list(parts))
