"""The continual-learning loop: learn tasks in sequence, test every task after every epoch, checkpoint.

The trainer owns the loop only. Strategies (baselines, per-task state, the diagnostics' task starts) shape
training through their hooks, a tester (`evaluate.py`) tests each epoch in the loop or beside the next epoch's
training, the checkpointer (`checkpoint.py`) keeps the training state after every tested epoch, and the
observers (sinks) receive the record. Running again in the same directory resumes from the last finished
epoch and ends with the same results as an uninterrupted run.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer

from .. import seeds
from ..data import Batch, TaskSet
from ..data.boundaries import Boundaries, gradual
from ..diagnostics import HiddenWeightMonitor
from ..errors import EnvironmentFaultError, RunPruned
from ..models import uses_batch_statistics
from ..record import EpochRecord, RunRecord
from ..runtime import InterruptedRunError, process_age
from .checkpoint import Checkpointer, History, Trainables
from .epoch import NonFiniteLossError, train_epoch
from .evaluate import BackgroundTester, Evaluation, Evaluator, Tester, Trained
from .hooks import RunObserver, Strategy, TaskContext
from .precision import ModelLogits, Precision, forward_in

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """What the loop needs beyond the model, the data, the optimizer and the plugins."""

    epochs_per_task: int
    batch_size: int
    eval_batch_size: int = 1000
    gamma: float = 1.0  # task i learns with lr * gamma ** (-i)
    fresh_optimizer: bool = True  # a new optimizer (fresh moments) at every task, as in the paper
    precision: Precision = Precision.fp32  # resolved (not auto)
    seed: int = 0
    eval_threads: int | None = None  # CPU threads while testing (large batches); None: those of training
    test_beside_training: bool = False  # each epoch tested on a copy of the model while the next one trains
    compile: bool = False  # the trainer's own passes (training, testing) through torch.compile; plugins' stay eager


class ContinualTrainer:
    """Trains `model` on `data.tasks` in order and measures every task after every epoch.

    `make_optimizer(model, task)` builds the optimizer of a task (at every task when `fresh_optimizer`);
    `strategies` get the training hooks in order, `observers` the results; `template` holds the record's fixed
    fields (config, net, meta, ...); `stop_check()` is called between batches and raises to stop the run.
    """

    def __init__(self, model: nn.Module, data: TaskSet, make_optimizer: Callable[[nn.Module, int], Optimizer],
                 strategies: Sequence[Strategy], observers: Sequence[RunObserver], settings: TrainSettings,
                 checkpointer: Checkpointer, template: RunRecord, stop_check: Callable[[], None] | None = None
                 ) -> None:
        self.model, self.data, self.make_optimizer, self.s = model, data, make_optimizer, settings
        self.observers = list(observers)
        self.diagnostics = HiddenWeightMonitor(model)
        hooks = [*strategies, self.diagnostics]
        if len({h.name for h in hooks}) != len(hooks):
            raise ValueError(f"strategy names must be unique, got {[h.name for h in hooks]}")
        self.checkpointer, self.template = checkpointer, template
        self.stop_check = stop_check or (lambda: None)
        self.device = next(model.parameters()).device
        self.forward = forward_in(settings.precision, self.device)
        self.logits = ModelLogits(model, self.forward, settings.compile)
        scaler = torch.amp.GradScaler(self.device.type) if settings.precision == Precision.fp16 else None
        self.base_lr = 0.0
        self.parts = Trainables(model, self._optimizer(0), scaler, hooks,  # built now: bad settings fail early
                                seeds.generator(settings.seed, seeds.Stream.shuffle))
        evaluator = Evaluator(data, settings.eval_batch_size, not uses_batch_statistics(model), hooks,
                              settings.eval_threads)
        beside = settings.test_beside_training and not settings.compile  # a compiled model is tested in the loop
        self.tester = (BackgroundTester(evaluator, self.logits, self.forward) if beside
                       else Tester(evaluator, self.logits))
        self.history = History()
        self.resumed = False
        self.position = (0, 0)  # the epoch being trained, (task, epoch)
        self.startup_s: float | None = None

    def _optimizer(self, task: int) -> Optimizer:
        optimizer = self.make_optimizer(self.model, task)
        self.base_lr = optimizer.defaults["lr"]
        return optimizer

    def _context(self, task: int) -> TaskContext:
        return TaskContext(task, self.data, self.model, self.parts.optimizer, self.forward, self.data.train_logits,
                           self.s.batch_size, self.s.seed, self.parts.generator)

    def restore(self) -> bool:
        """Load the checkpoint, if there is one; a checkpoint of another experiment is refused (UserError)."""
        history = self.checkpointer.restore(self.parts, self._optimizer, len(self.data.tasks))
        if history is not None:
            self.history, self.resumed = history, True
        return self.resumed

    def run(self) -> RunRecord:
        """Train every task from where `restore` left off and return the record; observers are closed after."""
        try:
            return self._run()
        finally:
            self.tester.close()
            for observer in self.observers:
                observer.close()

    def _run(self) -> RunRecord:
        self.startup_s = process_age()
        h = self.history
        if self.resumed:
            h.resumes.append({"task": h.next_task, "epoch": h.next_epoch})
            log.info("resuming from %s at task %d epoch %d", self.checkpointer.path, h.next_task + 1,
                     h.next_epoch + 1)
        for observer in self.observers:
            observer.start(self.record("running"), self.resumed)
        try:
            try:
                if h.initial_acc is None:
                    evaluation, seconds = self.tester.test_now(self.model)  # random-init accuracy, for FWT
                    h.initial_acc, h.eval_time = evaluation.test, h.eval_time + seconds
                for task, epoch in self._schedule():
                    self._epoch(task, epoch)
            finally:
                self._record(self.tester.settle())  # an epoch tested beside the one that failed or stopped is kept
        except RunPruned as exc:
            record = self.record("pruned", str(exc))
            for observer in self.observers:
                observer.finish(record)
            return record
        except NonFiniteLossError as exc:
            self._finish("failed", f"{exc}; the last good checkpoint is kept")
            raise
        except InterruptedRunError as exc:
            self._finish("interrupted", f"stopped by {exc} {self._where()}; run the same command again to resume")
            raise
        except OSError as exc:
            what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
            reason = f"{what} {self._where()}; free space or fix permissions, then run the same command again"
            self._finish("failed", reason)
            raise EnvironmentFaultError(reason) from exc
        record = self.record("completed")
        for observer in self.observers:
            observer.finish(record)
        return record

    def _schedule(self) -> Iterator[tuple[int, int]]:
        """(task, epoch) of every epoch left to train, from where the history resumes."""
        for task in range(self.history.next_task, len(self.data.tasks)):
            first = self.history.next_epoch if task == self.history.next_task else 0
            yield from ((task, epoch) for epoch in range(first, self.s.epochs_per_task))

    def _epoch(self, i: int, e: int) -> None:
        """Train epoch `e` of task `i` and hand it to the tester; record the epoch tested before it. Without
        announced boundaries (data.boundaries none or gradual) the learner is not told that a task begins or
        ends: no new optimizer, no task hooks but the diagnostics' (which only measure)."""
        self.position = (i, e)
        told = self.data.boundaries == Boundaries.hard
        if e == 0:
            self._record(self.tester.settle())  # the previous task is recorded before the next one begins
            if i > 0 and self.s.fresh_optimizer and told:
                self.parts.optimizer = self._optimizer(i)
        for group in self.parts.optimizer.param_groups:
            group["lr"] = self.base_lr * self.s.gamma ** (-i)
        ctx = self._context(i)
        hooked = [s for s in self.parts.strategies if told or s is self.diagnostics]
        if e == 0:
            for strategy in hooked:
                strategy.before_task(ctx)
        start = time.perf_counter()
        loss, acc = train_epoch(ctx, self.parts, self.logits, self.stop_check, self._stream(i, e))
        train_s = time.perf_counter() - start
        self._record(self.tester.settle())
        last = e == self.s.epochs_per_task - 1
        trained = Trained(i, e, loss, acc, train_s, self.diagnostics.measure(self.parts.optimizer, last), None)
        self.tester.submit(trained, self.model)
        if last:
            for strategy in hooked:
                strategy.after_task(ctx)
        if self.tester.beside and self.checkpointer.enabled:  # the state this epoch ended with, for its checkpoint
            trained.training_state = copy.deepcopy(self.checkpointer.capture(self.parts))
        if not self.tester.beside:
            self._record(self.tester.settle())

    def _stream(self, i: int, e: int) -> Callable[[Iterator[Batch]], Iterator[Batch]] | None:
        """How task `i`'s batches of epoch `e` are mixed with its neighbours' (gradual boundaries), or None."""
        if self.data.boundaries != Boundaries.gradual:
            return None
        return functools.partial(gradual, self.data, i, e, self.s.epochs_per_task, self.s.batch_size,
                                 self.data.transition, generator=self.parts.generator)

    def _record(self, settled: tuple[Trained, Evaluation, float] | None) -> None:
        """Record a tested epoch: its record in the history, the checkpoint, then the observers."""
        if settled is None:
            return
        done, ev, seconds = settled
        h, i = self.history, done.task
        h.eval_time, h.train_time = h.eval_time + seconds, h.train_time + done.train_s
        last = done.epoch == self.s.epochs_per_task - 1
        seen = ev.test[:i + 1]  # the columns learned so far (a stream has one)
        epoch = EpochRecord(i, done.epoch, done.loss, done.acc, ev.test, ev.task_aware, ev.val, sum(seen) / len(seen),
                            self.base_lr * self.s.gamma ** (-i), done.diagnostics)
        h.add(epoch, last)
        if self.checkpointer.enabled:
            self.checkpointer.save(h, done.training_state or self.checkpointer.capture(self.parts))
        record = self.record("running")
        for observer in self.observers:
            observer.epoch(epoch, record)
        for observer in self.observers if last else ():
            observer.task_end(record)

    def record(self, status: str, reason: str | None = None) -> RunRecord:
        """The run's results so far."""
        return self.history.record(self.template, status=status, reason=reason, startup_s=self.startup_s,
                                   tasks=[t.task.name for t in self.data.tasks], scenario=self.data.scenario.value,
                                   precision=self.s.precision.value, columns=self.data.column_names,
                                   stream=self.data.stream)

    def _finish(self, status: str, reason: str) -> None:
        """Tell the observers how the run ended, as far as the disk allows (a full disk may refuse even that)."""
        record = self.record(status, reason)
        for observer in self.observers:
            try:
                observer.finish(record)
            except OSError as exc:
                log.warning("could not record that the run %s (%s)", status, exc)

    def _where(self) -> str:
        """Where the run stopped and which checkpoint is kept, in words (1-based)."""
        task, epoch = self.position
        last = self.checkpointer.kept
        kept = f"the checkpoint after task {last.task + 1} epoch {last.epoch + 1}" if last else "no checkpoint yet"
        return f"at task {task + 1} epoch {epoch + 1} ({kept})"
