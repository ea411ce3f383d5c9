"""Learning without Forgetting (Li & Hoiem 2017): distillation on the previous model's outputs.

At the start of every task after the first, a frozen copy of the model is kept. While the new task is
learned, the loss adds lambda_o * the cross-entropy between the old model's and the current model's softened
outputs (temperature T) over the output units of the earlier tasks, on the new task's inputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Batch, TaskSet
from ..errors import UserError
from ..loop.hooks import Strategy, TaskContext
from . import StrategyConfig, register_strategy


@register_strategy("lwf")
@dataclass
class LwFConfig(StrategyConfig):
    """strategy=lwf: the distillation's weight and temperature."""

    _target_: str = "metaplastic_vit.strategies.lwf.LwF"
    _partial_: bool = True
    strength: float = 1.0  # lambda_o
    temperature: float = 2.0  # T

    def __post_init__(self) -> None:
        if not self.strength >= 0:
            raise UserError(f"strategy.strength must be >= 0, got {self.strength}")
        if not self.temperature > 0:
            raise UserError(f"strategy.temperature must be > 0, got {self.temperature}")

    def without_boundaries(self) -> str | None:  # noqa: D102
        return "LwF distils the model as it was when a task began: it needs task boundaries"


class LwF(Strategy):
    """Distils the model as it was at the start of the task into the model being trained."""

    name = "lwf"

    def __init__(self, model: nn.Module, data: TaskSet, strength: float = 1.0, temperature: float = 2.0) -> None:
        self.model = model
        self.strength = strength
        self.temperature = temperature
        self.old: nn.Module | None = None
        self.units: torch.Tensor | None = None  # output units of the earlier tasks

    def _freeze(self, state: dict[str, torch.Tensor]) -> None:
        self.old = copy.deepcopy(self.model)
        self.old.load_state_dict(state)
        self.old.eval().requires_grad_(False)

    def before_task(self, ctx: TaskContext) -> None:  # noqa: D102
        if ctx.index == 0:
            return
        self._freeze(ctx.model.state_dict())
        self.units = torch.cat([t.outputs for t in ctx.data.tasks[:ctx.index]]).unique()

    def loss(self, ctx: TaskContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:  # noqa: D102
        if self.old is None:
            return None
        with torch.no_grad():
            target = F.softmax(ctx.forward(self.old, batch.x).float()[:, self.units] / self.temperature, dim=1)
        log_pred = F.log_softmax(logits.float()[:, self.units] / self.temperature, dim=1)
        return self.strength * -(target * log_pred).sum(1).mean()

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"old": None if self.old is None else self.old.state_dict(), "units": self.units}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.units = state["units"]
        if state["old"] is not None:
            self._freeze(state["old"])
