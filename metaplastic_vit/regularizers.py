"""Baselines that protect earlier tasks with a quadratic penalty: EWC and SI.

Both act on the trainable parameters, which for binary layers are the hidden weights W_h.
- EWC (Kirkpatrick et al. 2017): after each task, the diagonal empirical Fisher information of that
  task's data is added to the importance; the penalty is lambda/2 * sum F (theta - theta*)^2.
- SI (Zenke et al. 2017): during a task, w accumulates -g * delta-theta along the path travelled;
  at its end the importance grows by max(0, w / (Delta^2 + xi)) (clipped so that no weight is pushed away
  from its anchor); the penalty is c * sum Omega (theta - theta*)^2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, targets) -> mean loss of the model


class Regularizer:
    """A quadratic penalty around the parameters at the end of the previous task."""

    def __init__(self, model: nn.Module, strength: float) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.strength = strength
        self.importance = [torch.zeros_like(p) for p in self.params]
        self.anchor: list[torch.Tensor] | None = None

    def penalty(self) -> torch.Tensor | None:
        """The term added to the loss (None before the first task ends)."""
        if self.anchor is None:
            return None
        diffs = torch._foreach_sub(self.params, self.anchor)
        weighted = torch._foreach_mul(torch._foreach_mul(diffs, diffs), self.importance)
        return self.scale() * torch.stack([w.sum() for w in weighted]).sum()

    def scale(self) -> float:
        """The factor in front of sum importance * (theta - theta*)^2."""
        return self.strength

    def before_step(self) -> None:
        """Called after backward, before the optimizer step."""

    def after_step(self) -> None:
        """Called after the optimizer step."""

    def begin_task(self) -> None:
        """Called when a task starts."""

    def end_task(self, batches: Batches, loss_fn: LossFn) -> None:
        """Update the importance from the task just learned and move the anchor to the current weights."""
        self.anchor = [p.detach().clone() for p in self.params]

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"importance": self.importance, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.importance = [t.to(p.device) for t, p in zip(state["importance"], self.params, strict=True)]
        self.anchor = None if state["anchor"] is None else [t.to(p.device) for t, p in
                                                             zip(state["anchor"], self.params, strict=True)]


class EWC(Regularizer):
    """Elastic weight consolidation with the diagonal empirical Fisher, summed over past tasks."""

    def __init__(self, model: nn.Module, strength: float, fisher_samples: int = 512) -> None:
        super().__init__(model, strength)
        self.model = model
        self.fisher_samples = fisher_samples

    def scale(self) -> float:  # noqa: D102
        return self.strength / 2

    def fisher(self, batches: Batches, loss_fn: LossFn
               ) -> list[torch.Tensor]:
        """Mean over samples of the squared gradient of the sample's loss (-log p(y|x)), one sample at a time
        (a batch of b > 1 samples counts as b samples of its mean gradient, for batch-statistics norms)."""
        fisher = [torch.zeros_like(p) for p in self.params]
        seen = 0
        for x, y in batches:
            if seen >= self.fisher_samples:
                break
            self.model.zero_grad(set_to_none=True)
            loss_fn(x, y).backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            torch._foreach_add_(fisher, torch._foreach_mul(grads, grads), alpha=len(y))
            seen += len(y)
        self.model.zero_grad(set_to_none=True)
        torch._foreach_div_(fisher, max(seen, 1))
        return fisher

    def end_task(self, batches: Batches, loss_fn: LossFn) -> None:
        """Add this task's Fisher to the importance and anchor at the current weights."""
        torch._foreach_add_(self.importance, self.fisher(batches, loss_fn))
        super().end_task(batches, loss_fn)


class SI(Regularizer):
    """Synaptic intelligence: importance from the path integral of the gradient along training."""

    def __init__(self, model: nn.Module, strength: float, damping: float = 0.1) -> None:
        super().__init__(model, strength)
        self.damping = damping
        self.path = [torch.zeros_like(p) for p in self.params]
        self.start = [p.detach().clone() for p in self.params]
        self._before: list[torch.Tensor] = []
        self._grads: list[torch.Tensor] = []

    def begin_task(self) -> None:  # noqa: D102
        self.path = [torch.zeros_like(p) for p in self.params]
        self.start = [p.detach().clone() for p in self.params]

    def before_step(self) -> None:  # noqa: D102
        self._grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]
        self._before = [p.detach().clone() for p in self.params]

    def after_step(self) -> None:
        """w -= g * (theta_after - theta_before): the loss decrease this step attributes to each weight."""
        delta = torch._foreach_sub([p.detach() for p in self.params], self._before)
        torch._foreach_mul_(delta, self._grads)
        torch._foreach_sub_(self.path, delta)

    def end_task(self, batches: Batches, loss_fn: LossFn) -> None:
        """Omega += max(0, w / (Delta^2 + xi)), with Delta the change of each weight over the task."""
        total = torch._foreach_sub([p.detach() for p in self.params], self.start)
        torch._foreach_mul_(total, total)
        torch._foreach_add_(total, self.damping)
        gained = torch._foreach_div(self.path, total)
        torch._foreach_clamp_min_(gained, 0.0)
        torch._foreach_add_(self.importance, gained)
        super().end_task(batches, loss_fn)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {**super().state_dict(), "path": self.path, "start": self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        super().load_state_dict(state)
        self.path = [t.to(p.device) for t, p in zip(state["path"], self.params, strict=True)]
        self.start = [t.to(p.device) for t, p in zip(state["start"], self.params, strict=True)]
