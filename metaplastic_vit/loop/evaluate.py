"""Testing: every task three ways after every epoch, in the loop or on a copy of the model beside training.

`Evaluator` computes the three tests of every task (the run's scenario, task-aware, and the validation splits)
in as few large batches as the test batch size allows. A tester owns the epoch that has trained and waits for
its test: `Tester` tests it at once, in the loop; `BackgroundTester` tests a copy of the model in a second
thread while the next epoch trains (the same results, for a CPU with a core to spare). Either way the trainer
hands an epoch over with `submit` and takes it back, tested, with `settle`.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import Scenario, TaskSet
from ..data.loader import EvalSet
from ..record import Diagnostics
from .hooks import Strategy
from .precision import threads

Logits = Callable[[torch.Tensor], torch.Tensor]
States = dict[int, contextlib.AbstractContextManager | None]


@dataclass
class Evaluation:
    """One test of every task: under the run's scenario, task-aware, and on the validation splits."""

    test: list[float]
    task_aware: list[float]
    val: list[float]


@dataclass
class Trained:
    """An epoch that has trained and waits for its test: what its record and checkpoint need besides it."""

    task: int
    epoch: int
    loss: float
    acc: float
    train_s: float
    diagnostics: Diagnostics
    training_state: dict[str, Any] | None  # what the checkpoint keeps, copied at the epoch's end; None: live


class Evaluator:
    """The three tests of every task, given each task's per-task state from the strategies."""

    def __init__(self, data: TaskSet, batch_size: int, mix_tasks: bool, strategies: Sequence[Strategy],
                 eval_threads: int | None = None) -> None:
        self.data = data
        self.masks = data.task_masks
        # whether a task's output mask leaves every output (the domain scenario): then masked and unmasked
        # predictions are one computation, and the task-aware test of a task without per-task state is the
        # scenario's test
        self.masks_change_nothing = bool(self.masks.all())
        self.has_val = all(len(t.splits["val"]) for t in data.tasks)
        self.eval_set = EvalSet(data.tasks, batch_size, mix_tasks=mix_tasks)
        self.strategies = list(strategies)
        self.eval_threads = eval_threads

    def task_states(self, model: nn.Module) -> States:
        """For every task, the context in which `model` (the trained model or a copy) holds what the trained
        model had for it (the strategies' per-task state); None where the live state is the task's own."""
        return {j: next((state for s in self.strategies if (state := s.task_state(j, model)) is not None), None)
                for j in range(len(self.data.tasks))}

    def _count(self, segments: list[tuple[int, str]], logits_of: Logits) -> tuple[list[int], list[int]]:
        """Correct predictions of `logits_of` on each (task, split) segment, without and with each task's
        output mask, in as few batches as the test batch size allows (one count where masks change nothing)."""
        device = self.masks.device
        plain = torch.zeros(len(segments), dtype=torch.long, device=device)
        masked = plain if self.masks_change_nothing else torch.zeros_like(plain)
        for batch, segment in self.eval_set.chunks(segments):
            logits = logits_of(batch.x)
            plain.index_add_(0, segment, (logits.argmax(1) == batch.y).long())
            if masked is not plain:
                hits = logits.masked_fill(~self.masks[batch.task], float("-inf")).argmax(1) == batch.y
                masked.index_add_(0, segment, hits.long())
        counts = plain.tolist()
        return counts, counts if masked is plain else masked.tolist()

    def _percent(self, correct: int, task: int, split: str) -> float:
        return 100.0 * correct / max(len(self.data.tasks[task].splits[split]), 1)

    @torch.inference_mode()
    def test(self, logits_of: Logits, states: States) -> Evaluation:
        """The three tests of every task through `logits_of` (the model in eval mode), given each task's
        per-task state (None: the live one).

        Without the task id (domain, class) every task is tested with the live state and no mask, all tasks
        in one pass; the task-aware test masks the outputs to the task's classes, and tasks whose per-task
        state differs from the live one are passed again with it restored. Only the tasks of the matrices'
        columns are tested (a stream's parts share one whole test set, tested once with the live state).
        """
        with threads(self.eval_threads):
            tasks = self.data.columns
            states = {j: None for j in tasks} if self.data.stream else states
            splits = ("test", "val") if self.has_val else ("test",)
            aware_scenario = self.data.scenario == Scenario.task
            live = [(j, split) for j in tasks for split in splits if not (aware_scenario and states[j] is not None)]
            own = {}  # (task, split) -> correct with the task's own state and mask
            plain, masked = self._count(live, logits_of)
            for j in tasks:
                if states[j] is not None:
                    segments = [(j, split) for split in (splits if aware_scenario else ("test",))]
                    with states[j]:
                        own.update(zip(segments, self._count(segments, logits_of)[1], strict=True))
            result = {seg: (p, m) for seg, p, m in zip(live, plain, masked, strict=True)}
            for (j, split), (_, m) in result.items():
                own.setdefault((j, split), m)
        aware = [self._percent(own[(j, "test")], j, "test") for j in tasks]
        if aware_scenario:
            test = aware
            val = [self._percent(own[(j, "val")], j, "val") for j in tasks] if self.has_val else []
        else:
            test = [self._percent(result[(j, "test")][0], j, "test") for j in tasks]
            val = [self._percent(result[(j, "val")][0], j, "val") for j in tasks] if self.has_val else []
        return Evaluation(test, aware, val)


class Tester:
    """Tests each trained epoch at once, in the loop, through `logits` (the trained model's, compiled or not)."""

    beside = False  # whether tests run beside training (the checkpoint then needs a copy of the state)

    def __init__(self, evaluator: Evaluator, logits: Logits) -> None:
        self.evaluator = evaluator
        self.logits = logits
        self._pending: tuple[Trained, Evaluation, float] | None = None

    def test_now(self, model: nn.Module) -> tuple[Evaluation, float]:
        """Test the live `model` in this thread; returns the evaluation and the seconds it took."""
        start = time.perf_counter()
        model.eval()
        evaluation = self.evaluator.test(self.logits, self.evaluator.task_states(model))
        return evaluation, time.perf_counter() - start

    def submit(self, trained: Trained, model: nn.Module) -> None:
        """Start testing `model` as it is after `trained`'s epoch."""
        self._pending = (trained, *self.test_now(model))

    def settle(self) -> tuple[Trained, Evaluation, float] | None:
        """The submitted epoch with its test and the seconds the loop spent on it (None: nothing pending)."""
        done, self._pending = self._pending, None
        return done

    def close(self) -> None:
        """Release what the tester holds."""


class BackgroundTester(Tester):
    """Tests a copy of the model in a second thread while the loop trains the next epoch, through `forward`
    (eager: a compiled model is tested in the loop); `logits` tests the live model in the loop (`test_now`)."""

    beside = True

    def __init__(self, evaluator: Evaluator, logits: Logits,
                 forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__(evaluator, logits)
        self.forward = forward
        self._executor = ThreadPoolExecutor(1, "tester")
        self._future: tuple[Trained, Future, float] | None = None

    def submit(self, trained: Trained, model: nn.Module) -> None:  # noqa: D102
        start = time.perf_counter()
        frozen = copy.deepcopy(model).eval()
        states = self.evaluator.task_states(frozen)  # taken now: the strategies' task-end work may store new ones
        model.eval()  # as after a test in this thread: the strategies' task-end work sees the same mode
        future = self._executor.submit(self.evaluator.test, lambda x: self.forward(frozen, x), states)
        self._future = (trained, future, time.perf_counter() - start)

    def settle(self) -> tuple[Trained, Evaluation, float] | None:  # noqa: D102
        pending, self._future = self._future, None
        if pending is None:
            return None
        trained, future, seconds = pending
        start = time.perf_counter()
        evaluation = future.result()
        return trained, evaluation, seconds + time.perf_counter() - start

    def close(self) -> None:  # noqa: D102
        self._executor.shutdown()
