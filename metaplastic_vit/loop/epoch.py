"""One epoch of training: a pass over a task's training stream as the strategies shape it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from ..data import Batch
from ..errors import TrainingFailedError
from .checkpoint import Trainables
from .hooks import TaskContext


class NonFiniteLossError(TrainingFailedError):
    """The training loss or the parameters became NaN or inf."""


def train_epoch(ctx: TaskContext, parts: Trainables, logits_of: Callable[[torch.Tensor], torch.Tensor],
                stop_check: Callable[[], None],
                stream: Callable[[Iterator[Batch]], Iterator[Batch]] | None = None) -> tuple[float, float]:
    """One pass over task `ctx.index`'s training stream (its batches, mixed by `stream` where tasks blend, then
    as the strategies shape them): per batch the strategies' extra loss terms and their hooks around the
    optimizer's step (through the gradient scaler in fp16). Returns the mean task loss (without extra terms) and
    the training accuracy (percent); `stop_check()` runs before every batch."""
    task, model = ctx.data.tasks[ctx.index], parts.model
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    batches: Iterator = task.batches("train", ctx.batch_size, parts.generator)
    if stream is not None:
        batches = stream(batches)
    for strategy in parts.strategies:
        batches = strategy.train_batches(ctx, batches)
    passes = getattr(model, "mc_samples_train", 1)  # weight samples per step (MESU): the loss averaged over them
    for batch in batches:
        stop_check()
        parts.optimizer.zero_grad(set_to_none=True)
        for _ in range(passes):
            logits = logits_of(batch.x)
            masked = ctx.train_logits(logits, batch.task)
            loss = total = F.cross_entropy(masked, batch.y)
            for strategy in parts.strategies:
                if (extra := strategy.loss(ctx, batch, logits)) is not None:
                    total = total + extra
            if passes > 1:
                total = total / passes
            if parts.scaler is not None:
                parts.scaler.scale(total).backward()
            else:
                total.backward()
        if parts.scaler is not None:
            parts.scaler.unscale_(parts.optimizer)
        for strategy in parts.strategies:
            strategy.before_step(ctx)
        if parts.scaler is not None:
            parts.scaler.step(parts.optimizer)
            parts.scaler.update()
        else:
            parts.optimizer.step()
        for strategy in parts.strategies:
            strategy.after_step(ctx, batch)
        loss_sum += loss.detach() * len(batch)
        correct += (masked.detach().argmax(1) == batch.y).sum()
        n += len(batch)
    loss = loss_sum.item() / n  # one host sync per epoch, none per step
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"training loss is {loss} on task {task.task.name}")
    if not torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all():
        raise NonFiniteLossError(f"parameters became NaN or inf on task {task.task.name}")
    return loss, 100.0 * correct.item() / n
