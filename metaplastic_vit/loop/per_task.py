"""Per-task state: modules whose parameters and buffers are kept once per task (the paper's per-task BatchNorm).

Training is the same with or without it: the live state is trained on every task. A copy is stored at the
end of each task and swapped in only when a task is tested with its identity known (the task-aware matrix,
and every test of the task scenario). Tests without the task id always see the live state.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .hooks import Strategy, TaskContext

State = dict[str, dict[str, torch.Tensor]]


class PerTaskState(Strategy):
    """Snapshots the modules matching `patterns` at each task's end; `task_state(j, model)` swaps task j's in."""

    name = "per_task"

    def __init__(self, model: nn.Module, patterns: Sequence[str]) -> None:
        self.names = [n for n, _ in model.named_modules() if n and any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not self.names:
            raise UserError(f"per_task patterns {list(patterns)} match no module of the model")
        self.model = model
        self.saved: list[State] = []

    def _modules(self, model: nn.Module) -> dict[str, nn.Module]:
        modules = dict(model.named_modules())
        return {n: modules[n] for n in self.names}

    def snapshot(self, model: nn.Module) -> State:
        """A detached copy of the current state of `model`'s per-task modules."""
        return {n: {k: v.detach().clone() for k, v in m.state_dict().items()}
                for n, m in self._modules(model).items()}

    def load(self, model: nn.Module, state: State) -> None:
        """Copy `state` into `model` in place (parameters keep their identity for the optimizer)."""
        for n, m in self._modules(model).items():
            m.load_state_dict(state[n])

    def after_task(self, ctx: TaskContext) -> None:  # noqa: D102
        del self.saved[ctx.index:]
        self.saved.append(self.snapshot(self.model))

    def task_state(self, task: int, model: nn.Module) -> Iterator[None] | None:  # noqa: D102
        if task >= len(self.saved):
            return None  # not learned yet, or the task being learned: the live state is its own
        return self._swapped(model, self.saved[task])

    @contextmanager
    def _swapped(self, model: nn.Module, state: State) -> Iterator[None]:
        live = self.snapshot(model)
        self.load(model, state)
        try:
            yield
        finally:
            self.load(model, live)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"saved": self.saved}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.saved = state["saved"]
