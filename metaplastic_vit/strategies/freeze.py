"""A probe, not a baseline: after a given task, every weight tensor (>= 2 dimensions) stops learning.

What the following tasks still learn goes through the free 1-D parameters alone (norm scales and shifts,
biases, and in a ViT nothing else, since position embedding and class token are >= 2-D too): how much of a
new task a net can learn without touching the weights that hold the old ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..data import TaskSet
from ..errors import UserError
from ..loop.hooks import Strategy, TaskContext
from . import StrategyConfig, register_strategy


@register_strategy("freeze")
@dataclass
class FreezeConfig(StrategyConfig):
    """strategy=freeze: the task (1-based) after which every >= 2-D tensor is frozen."""

    _target_: str = "metaplastic_vit.strategies.freeze.FreezeWeights"
    _partial_: bool = True
    after_task: int = 1

    def __post_init__(self) -> None:
        if self.after_task < 1:
            raise UserError(f"strategy.after_task must be >= 1 (a task number), got {self.after_task}")

    def without_boundaries(self) -> str | None:  # noqa: D102
        return "the freeze probe acts at a task's end: it needs task boundaries"


class FreezeWeights(Strategy):
    """Sets requires_grad=False on every >= 2-D parameter once task `after_task` has been learned."""

    name = "freeze"

    def __init__(self, model: nn.Module, data: TaskSet, after_task: int = 1) -> None:
        self.weights = [p for p in model.parameters() if p.dim() >= 2 and p.requires_grad]
        self.last_free_task = after_task  # 1-based
        self.frozen = False

    def _freeze(self) -> None:
        for p in self.weights:
            p.requires_grad_(False)
            p.grad = None
        self.frozen = True

    def after_task(self, ctx: TaskContext) -> None:  # noqa: D102
        if ctx.index + 1 == self.last_free_task:
            self._freeze()

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"frozen": self.frozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        if state["frozen"]:
            self._freeze()
