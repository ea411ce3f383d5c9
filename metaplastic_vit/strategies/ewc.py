"""Elastic weight consolidation: a quadratic penalty weighted by the diagonal Fisher information.

- `separate` (Kirkpatrick et al. 2017): one anchor theta*_t and one Fisher F_t per earlier task t; the penalty
  is sum_t lambda/2 * sum F_t (theta - theta*_t)^2.
- `online` (Schwarz et al. 2018): one running Fisher F* <- fisher_decay * F* + F_t and the latest anchor; the penalty
  is lambda/2 * sum F* (theta - theta*)^2. With `every_steps` K it is refreshed every K steps on the batch just
  trained as well (the boundary-free variant: no task's end is needed).

F_t is the mean over samples of the squared gradient of one sample's log-likelihood (never the square of a
batch-mean gradient), computed per sample in batches with vmapped backward passes. `fisher` picks the
labels: `exact` takes the expectation over the model's predictive distribution (every class, weighted by its
probability), `sampled` draws one label from it, `empirical` uses the true label. Which parameters are
protected: see `protected_parameters` (per-task modules only in the task scenario). For binary layers the
parameters are the hidden weights, and the gradients are those of the straight-through estimator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from .. import seeds
from ..data import Batch, Scenario, TaskSet
from ..data.loader import batch_bounds
from ..errors import UserError
from ..loop.hooks import Strategy, TaskContext
from ..models import uses_batch_statistics
from . import StrategyConfig, protected_parameters, register_strategy


class EWCMode(StrEnum):
    """One anchor and Fisher per task (Kirkpatrick et al.) or one running Fisher (Schwarz et al.)."""

    separate = "separate"
    online = "online"


class FisherLabels(StrEnum):
    """Which labels the Fisher's log-likelihood gradients use."""

    exact = "exact"
    sampled = "sampled"
    empirical = "empirical"


@register_strategy("ewc")
@dataclass
class EWCConfig(StrategyConfig):
    """strategy=ewc: EWC's settings."""

    _target_: str = "metaplastic_vit.strategies.ewc.EWC"
    _partial_: bool = True
    strength: float = 100.0  # lambda
    mode: EWCMode = EWCMode.separate
    fisher_decay: float = 1.0  # online EWC's gamma, the running Fisher's decay (ignored by separate)
    fisher: FisherLabels = FisherLabels.exact
    fisher_samples: int = 512  # training samples of each task used for its Fisher
    # online only: also refresh the Fisher and anchor every this many steps, on the batch just trained (the
    # boundary-free variant, for data.boundaries none or gradual); null: only at a task's end
    every_steps: int | None = None

    def __post_init__(self) -> None:
        if not self.strength >= 0:
            raise UserError(f"strategy.strength must be >= 0, got {self.strength}")
        if not 0 <= self.fisher_decay <= 1:
            raise UserError(f"strategy.fisher_decay must lie in [0, 1], got {self.fisher_decay}")
        if self.fisher_samples < 1:
            raise UserError(f"strategy.fisher_samples must be >= 1, got {self.fisher_samples}")
        if self.every_steps is not None and (self.every_steps < 1 or self.mode != EWCMode.online):
            raise UserError(f"strategy.every_steps refreshes online EWC's Fisher (>= 1 steps, strategy.mode=online)"
                            f", got {self.every_steps} with mode {self.mode.value}")

    def without_boundaries(self) -> str | None:  # noqa: D102
        if self.every_steps is None:
            return ("EWC takes its Fisher at a task's end: without task boundaries use its boundary-free variant, "
                    "strategy.mode=online strategy.every_steps=<K>")
        return None


# per-sample gradients held at once: samples x labels x parameters stays under this many numbers
_PER_SAMPLE_BUDGET = 2**25


@contextmanager
def _unfused_attention(model: nn.Module) -> Iterator[None]:
    """timm attention without the fused kernel, which has no vmap rule (the math is the same)."""
    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    for m, _ in fused:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, value in fused:
            m.fused_attn = value


def fisher_diagonal(model: nn.Module, params: Sequence[nn.Parameter], batches: Sequence[Batch],
                    forward: Callable[[Callable, torch.Tensor], torch.Tensor], masks: torch.Tensor,
                    labels: FisherLabels, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Diagonal Fisher of `params`: mean over the samples of `batches` of (d log p(y|x) / d theta)^2.

    Per-sample gradients come from torch.func (vmap of grad or jacrev over single samples), so each is the
    gradient of one sample's log-likelihood. `forward(fn, x)` computes logits (the run's precision),
    `masks[t]` are the outputs task t may use. With transductive BatchNorm no sample has a likelihood of
    its own, and each sample's gradient is taken inside its batch.
    """
    ids = {id(p) for p in params}
    names = [n for n, p in model.named_parameters() if id(p) in ids]
    values = {n: p.detach() for n, p in model.named_parameters() if id(p) in ids}
    if uses_batch_statistics(model):
        return _fisher_in_batch(model, params, batches, forward, masks, labels, generator)

    def logp(vals: dict[str, torch.Tensor], x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        logits = forward(lambda inp: functional_call(model, vals, (inp,)), x[None])[0]
        return F.log_softmax(logits.masked_fill(~keep, float("-inf")), dim=0)

    def nll(vals: dict[str, torch.Tensor], x: torch.Tensor, keep: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return -(logp(vals, x, keep).masked_fill(~keep, 0.0) * onehot).sum()

    fisher = {n: torch.zeros_like(v) for n, v in values.items()}
    numel = sum(v.numel() for v in values.values())
    seen = 0
    # torch.func.grad ignores an outer no_grad; the outer autograd must not record the other parameters' use
    with _unfused_attention(model), torch.no_grad():
        for batch in batches:
            keep = masks[batch.task]
            classes = keep.shape[1] if labels == FisherLabels.exact else 1
            chunk = max(1, _PER_SAMPLE_BUDGET // max(numel * classes, 1))
            for start in range(0, len(batch), chunk):
                x, k = batch.x[start:start + chunk], keep[start:start + chunk]
                if labels == FisherLabels.exact:
                    probs = vmap(logp, in_dims=(None, 0, 0))(values, x, k).exp()
                    jac = vmap(jacrev(logp), in_dims=(None, 0, 0))(values, x, k)
                    for n in names:
                        fisher[n] += torch.einsum("bc,bc...->...", probs, jac[n].nan_to_num().square())
                    continue
                if labels == FisherLabels.sampled:
                    probs = vmap(logp, in_dims=(None, 0, 0))(values, x, k).exp().cpu()
                    y = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(x.device)
                else:
                    y = batch.y[start:start + chunk]
                onehot = F.one_hot(y, keep.shape[1]).to(x.dtype)
                grads = vmap(grad(nll), in_dims=(None, 0, 0, 0))(values, x, k, onehot)
                for n in names:
                    fisher[n] += grads[n].square().sum(0)
            seen += len(batch)
    by_id = dict(zip(names, fisher.values(), strict=True))
    result = [by_id[n] for n, p in model.named_parameters() if id(p) in ids]
    return [f / max(seen, 1) for f in result]


def _fisher_in_batch(model: nn.Module, params: Sequence[nn.Parameter], batches: Sequence[Batch],
                     forward: Callable[[Callable, torch.Tensor], torch.Tensor], masks: torch.Tensor,
                     labels: FisherLabels, generator: torch.Generator | None) -> list[torch.Tensor]:
    """The Fisher with each sample's gradient taken inside its batch (vmapped backward passes)."""
    fisher = [torch.zeros_like(p) for p in params]
    seen = 0
    for batch in batches:
        logp = F.log_softmax(forward(model, batch.x).masked_fill(~masks[batch.task], float("-inf")), dim=1)
        n, c = logp.shape
        if labels == FisherLabels.exact:
            rows = torch.arange(n, device=logp.device).repeat_interleave(c)
            cols = torch.arange(c, device=logp.device).repeat(n)
            weights = logp.detach().exp().flatten()
        else:
            rows = torch.arange(n, device=logp.device)
            cols = (torch.multinomial(logp.detach().exp().cpu(), 1, generator=generator).squeeze(1).to(logp.device)
                    if labels == FisherLabels.sampled else batch.y)
            weights = torch.ones(n, device=logp.device)
        keep = weights > 0
        rows, cols, weights = rows[keep], cols[keep], weights[keep]
        losses = -logp[rows, cols]
        selector = torch.eye(len(losses), device=losses.device)
        grads = torch.autograd.grad(losses, params, grad_outputs=selector, is_grads_batched=True, allow_unused=True)
        for f, g in zip(fisher, grads, strict=True):
            if g is not None:
                f += torch.einsum("k,k...->...", weights, g.square())
        seen += n
    return [f / max(seen, 1) for f in fisher]


class EWC(Strategy):
    """Elastic weight consolidation over the parameters every task is tested with."""

    name = "ewc"

    def __init__(self, model: nn.Module, data: TaskSet, strength: float = 100.0,
                 mode: EWCMode | str = EWCMode.separate, fisher_decay: float = 1.0,
                 fisher: FisherLabels | str = FisherLabels.exact, fisher_samples: int = 512,
                 every_steps: int | None = None) -> None:
        self.model = model
        self.params = protected_parameters(model, data.scenario)
        self.strength = strength
        self.mode = EWCMode(mode)
        self.fisher_decay = fisher_decay
        self.labels = FisherLabels(fisher)
        self.fisher_samples = fisher_samples
        self.every_steps = every_steps
        self.steps = 0  # steps trained, for every_steps
        self.anchors: list[list[torch.Tensor]] = []  # one per task (separate) or the latest (online)
        self.fishers: list[list[torch.Tensor]] = []

    def loss(self, ctx: TaskContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:  # noqa: D102
        if not self.anchors:
            return None
        total = None
        for anchor, fisher in zip(self.anchors, self.fishers, strict=True):
            diffs = torch._foreach_sub(self.params, anchor)
            term = torch.stack([(f * d * d).sum() for f, d in zip(fisher, diffs, strict=True)]).sum()
            total = term if total is None else total + term
        return self.strength / 2 * total

    def after_step(self, ctx: TaskContext, batch: Batch) -> None:
        """With every_steps: refresh the Fisher and the anchor on the batch just trained, every K steps."""
        self.steps += 1
        if self.every_steps and self.steps % self.every_steps == 0:
            chunk = max(1, min(ctx.batch_size, 64))
            pieces = [Batch(batch.x[a:b], batch.y[a:b], batch.task[a:b], batch.index[a:b])
                      for a, b in batch_bounds(min(len(batch), self.fisher_samples), chunk)]
            self._consolidate(ctx, pieces, seeds.generator(ctx.seed, seeds.Stream.fisher, ctx.index, self.steps))

    def after_task(self, ctx: TaskContext) -> None:
        """Measure this task's Fisher on its training samples and add its anchor."""
        task = ctx.data.tasks[ctx.index]
        generator = seeds.generator(ctx.seed, seeds.Stream.fisher, ctx.index)
        chunk = max(1, min(ctx.batch_size, 64))
        positions = torch.randperm(len(task.splits["train"]), generator=generator)[:self.fisher_samples]
        positions = positions.to(task.splits["train"].idx.device)
        self._consolidate(ctx, [task.batch_at("train", positions[a:b])
                                for a, b in batch_bounds(len(positions), chunk)], generator)

    def _consolidate(self, ctx: TaskContext, batches: list[Batch], generator: torch.Generator) -> None:
        """The Fisher of `batches` at the current parameters, and the anchor: a new pair (separate) or the running
        Fisher decayed and added to (online)."""
        was_training = self.model.training
        self.model.eval()
        masks = ctx.data.task_masks  # the likelihood the model is trained on: masked only in the task scenario
        if ctx.data.scenario != Scenario.task:
            masks = torch.ones_like(masks)
        fisher = fisher_diagonal(self.model, self.params, batches, ctx.forward, masks, self.labels, generator)
        self.model.train(was_training)
        anchor = [p.detach().clone() for p in self.params]
        if self.mode == EWCMode.separate or not self.fishers:
            self.anchors.append(anchor)
            self.fishers.append(fisher)
        else:
            torch._foreach_mul_(self.fishers[0], self.fisher_decay)
            torch._foreach_add_(self.fishers[0], fisher)
            self.anchors[0] = anchor

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"anchors": self.anchors, "fishers": self.fishers, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.anchors, self.fishers, self.steps = state["anchors"], state["fishers"], state["steps"]
