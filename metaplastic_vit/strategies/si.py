"""Synaptic intelligence (Zenke, Poole & Ganguli 2017): importance from the path integral of the gradient.

During a task, omega accumulates -g * delta-theta at every step (the loss decrease each parameter is credited
with). At the task's end Omega += max(0, omega / (Delta^2 + xi)), with Delta the parameter's change over the
task (clipped at 0 so that no parameter is pushed away from its anchor), and the anchor moves to the current
parameters. The penalty is c * sum Omega (theta - theta*)^2. Per-task modules are not penalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import Batch
from ..errors import UserError
from . import register_strategy
from .base import Plugin, TaskContext, shared_parameters


@register_strategy("si")
@dataclass
class SIConfig:
    """strategy=si: SI's settings."""

    _target_: str = "metaplastic_vit.strategies.si.SI"
    _partial_: bool = True
    strength: float = 1.0  # c
    damping: float = 0.1  # xi

    def __post_init__(self) -> None:
        if not self.strength >= 0:
            raise UserError(f"strategy.strength must be >= 0, got {self.strength}")
        if not self.damping > 0:
            raise UserError(f"strategy.damping must be > 0, got {self.damping}")


class SI(Plugin):
    """Synaptic intelligence over the model's shared parameters."""

    name = "si"

    def __init__(self, model: nn.Module, strength: float = 1.0, damping: float = 0.1) -> None:
        self.params = shared_parameters(model)
        self.strength = strength
        self.damping = damping
        self.importance = [torch.zeros_like(p) for p in self.params]
        self.anchor: list[torch.Tensor] | None = None
        self.path = [torch.zeros_like(p) for p in self.params]
        self.task_start = [p.detach().clone() for p in self.params]
        self._grads: list[torch.Tensor] = []
        self._before: list[torch.Tensor] = []

    def before_task(self, ctx: TaskContext) -> None:  # noqa: D102
        self.path = [torch.zeros_like(p) for p in self.params]
        self.task_start = [p.detach().clone() for p in self.params]

    def loss(self, ctx: TaskContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:  # noqa: D102
        if self.anchor is None:
            return None
        diffs = torch._foreach_sub(self.params, self.anchor)
        terms = [(o * d * d).sum() for o, d in zip(self.importance, diffs, strict=True)]
        return self.strength * torch.stack(terms).sum()

    def before_step(self, ctx: TaskContext) -> None:  # noqa: D102
        self._grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]
        self._before = [p.detach().clone() for p in self.params]

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        """omega -= g * (theta_after - theta_before)."""
        delta = torch._foreach_sub([p.detach() for p in self.params], self._before)
        torch._foreach_mul_(delta, self._grads)
        torch._foreach_sub_(self.path, delta)

    def after_task(self, ctx: TaskContext) -> None:
        """Omega += max(0, omega / (Delta^2 + xi)); the anchor moves to the current parameters."""
        total = torch._foreach_sub([p.detach() for p in self.params], self.task_start)
        torch._foreach_mul_(total, total)
        torch._foreach_add_(total, self.damping)
        gained = torch._foreach_div(self.path, total)
        torch._foreach_clamp_min_(gained, 0.0)
        torch._foreach_add_(self.importance, gained)
        self.anchor = [p.detach().clone() for p in self.params]

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"importance": self.importance, "anchor": self.anchor, "path": self.path, "start": self.task_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.importance, self.anchor = state["importance"], state["anchor"]
        self.path, self.task_start = state["path"], state["start"]
