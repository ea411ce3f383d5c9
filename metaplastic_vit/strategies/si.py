"""Synaptic intelligence (Zenke, Poole & Ganguli 2017), as its reference code (ganguli-lab/pathint) computes it.

During a task, omega accumulates -g * delta-theta at every step, where g is the gradient of the task loss
alone (not of SI's own penalty, nor of any other term) at the parameters before the step and delta-theta is
the change the optimizer made. At the task's end Omega <- max(0, Omega + omega / (Delta^2 + xi)), with Delta
the parameter's change over the task: the clip acts on the running total, as in the reference, so a
task whose path integral is negative can lower an importance but never below zero. The anchor moves to the
current parameters. The penalty is c * sum Omega (theta - theta*)^2; its gradient, 2c Omega (theta - theta*),
is added to the task loss's gradient after the path integral has read it. Which parameters are protected:
see `protected_parameters`. With `every_steps` K it also consolidates every K steps (a new path starts), the
boundary-free variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import Batch, TaskSet
from ..errors import UserError
from ..loop.hooks import Strategy, TaskContext
from . import StrategyConfig, protected_parameters, register_strategy


@register_strategy("si")
@dataclass
class SIConfig(StrategyConfig):
    """strategy=si: SI's settings."""

    _target_: str = "metaplastic_vit.strategies.si.SI"
    _partial_: bool = True
    strength: float = 1.0  # c
    damping: float = 0.1  # xi
    # also consolidate every this many steps (the importance and anchor of the path so far, then a new path): the
    # boundary-free variant, for data.boundaries none or gradual; null: only at a task's end
    every_steps: int | None = None

    def __post_init__(self) -> None:
        if not self.strength >= 0:
            raise UserError(f"strategy.strength must be >= 0, got {self.strength}")
        if not self.damping > 0:
            raise UserError(f"strategy.damping must be > 0, got {self.damping}")
        if self.every_steps is not None and self.every_steps < 1:
            raise UserError(f"strategy.every_steps must be >= 1, got {self.every_steps}")

    def without_boundaries(self) -> str | None:  # noqa: D102
        if self.every_steps is None:
            return ("SI consolidates at a task's end: without task boundaries use its boundary-free variant, "
                    "strategy.every_steps=<K>")
        return None


class SI(Strategy):
    """Synaptic intelligence over the parameters every task is tested with."""

    name = "si"

    def __init__(self, model: nn.Module, data: TaskSet, strength: float = 1.0, damping: float = 0.1,
                 every_steps: int | None = None) -> None:
        self.params = protected_parameters(model, data.scenario)
        self.strength = strength
        self.damping = damping
        self.every_steps = every_steps
        self.steps = 0  # steps trained, for every_steps
        self.importance = [torch.zeros_like(p) for p in self.params]
        self.anchor: list[torch.Tensor] | None = None
        self.path = [torch.zeros_like(p) for p in self.params]
        self.task_start = [p.detach().clone() for p in self.params]
        self._grads: list[torch.Tensor] = []
        self._before: list[torch.Tensor] = []

    def before_task(self, ctx: TaskContext) -> None:  # noqa: D102
        self.path = [torch.zeros_like(p) for p in self.params]
        self.task_start = [p.detach().clone() for p in self.params]

    def before_step(self, ctx: TaskContext) -> None:
        """Keep the task loss's gradient and the parameters for the path integral, then add the penalty's
        gradient 2c Omega (theta - theta*) to the gradient the optimizer steps on."""
        self._grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]
        self._before = [p.detach().clone() for p in self.params]
        if self.anchor is None:
            return
        for p, o, a in zip(self.params, self.importance, self.anchor, strict=True):
            pull = (p.detach() - a).mul_(o).mul_(2 * self.strength)
            if p.grad is None:
                p.grad = pull
            else:
                p.grad.add_(pull)

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        """omega -= g * (theta_after - theta_before), g the task loss's gradient; with every_steps, consolidate
        every K steps as at a task's end and start a new path."""
        delta = torch._foreach_sub([p.detach() for p in self.params], self._before)
        torch._foreach_mul_(delta, self._grads)
        torch._foreach_sub_(self.path, delta)
        self.steps += 1
        if self.every_steps and self.steps % self.every_steps == 0:
            self.after_task(ctx)
            self.before_task(ctx)

    def after_task(self, ctx: TaskContext) -> None:
        """Omega <- max(0, Omega + omega / (Delta^2 + xi)); the anchor moves to the current parameters."""
        total = torch._foreach_sub([p.detach() for p in self.params], self.task_start)
        torch._foreach_mul_(total, total)
        torch._foreach_add_(total, self.damping)
        torch._foreach_add_(self.importance, torch._foreach_div(self.path, total))
        torch._foreach_clamp_min_(self.importance, 0.0)
        self.anchor = [p.detach().clone() for p in self.params]

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"importance": self.importance, "anchor": self.anchor, "path": self.path, "start": self.task_start,
                "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.importance, self.anchor = state["importance"], state["anchor"]
        self.path, self.task_start, self.steps = state["path"], state["start"], state["steps"]
