"""Task sequences: parse tokens such as ``pdigits``, ``mnist-5`` or ``cifar10-animals`` into tasks.

Grammar (one token may expand to several tasks):
- ``p<dataset>``: one permuted-pixel task with its own fixed permutation (repeat the token for more);
- ``<dataset>-<N>``: the dataset's classes split into N equal tasks;
- ``<dataset>``: the whole dataset as one task; ``cifar10-animals`` / ``cifar10-vehicles``: the paper's halves;
- ``stream:<dataset>:<N>``: the paper's stream learning: the dataset's training set cut into N equal,
  class-balanced parts learned one after another, every part tested on the whole test set (one test, shared).
Scenarios (van de Ven, Tuytelaars & Tolias 2022): ``domain`` (labels shared across tasks, one head of the
task size, no task id at test), ``class`` (one head over every task's classes, no task id at test; permuted
and whole tasks each get their own block of outputs) and ``task`` (the same head, and the task id at test:
logits masked to the task's outputs, per-task state restored).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from ..errors import UserError
from ..seeds import Stream, derive
from .sources import DATASETS, DatasetInfo

BY_TOKEN: dict[str, DatasetInfo] = {d.token: d for d in DATASETS.values()}
SUBSETS: dict[str, tuple[str, tuple[int, ...]]] = {
    "cifar10-vehicles": ("cifar10", (0, 1, 8, 9)),  # airplane, automobile, ship, truck
    "cifar10-animals": ("cifar10", (2, 3, 4, 5, 6, 7)),  # bird, cat, deer, dog, frog, horse
}


# How tasks share the output layer and whether the task id is known at test (auto: from the tokens). Built
# with the functional API because "class" is a keyword; config values are member names.
Scenario = StrEnum("Scenario", {name: name for name in ("auto", "domain", "class", "task")})

KIND_SCENARIO = {"permuted": Scenario.domain, "whole": Scenario.domain, "split": Scenario["class"],
                 "subset": Scenario["class"], "stream": Scenario.domain}


@dataclass(frozen=True)
class Task:
    """One task: a dataset, the classes it holds, and an optional pixel permutation."""

    name: str
    dataset: str  # name in sources.DATASETS
    kind: str  # permuted | split | whole | subset | stream
    classes: tuple[int, ...]  # the dataset's labels that belong to this task
    permutation_seed: int | None = None  # pixel permutation of a permuted task
    part: tuple[int, int] | None = None  # a stream's part: (k, N), the k-th of N parts of the training set


def _token_help() -> str:
    names = ", ".join(BY_TOKEN)
    return (f"use p<dataset>, <dataset>, <dataset>-<N>, stream:<dataset>:<N> or {', '.join(SUBSETS)}, with "
            f"<dataset> one of {names}")


def parse_task_sequence(tokens: Sequence[str], seed: int = 0, class_order_seed: int | None = None) -> list[Task]:
    """Expand task tokens into tasks; unknown tokens and bad splits are a UserError."""
    tasks: list[Task] = []
    permuted_count = 0
    for token in tokens:
        token = str(token).strip()
        if token in SUBSETS:
            dataset, classes = SUBSETS[token]
            tasks.append(Task(token, dataset, "subset", classes))
            continue
        if token in BY_TOKEN:
            info = BY_TOKEN[token]
            tasks.append(Task(token, info.name, "whole", tuple(range(info.num_classes))))
            continue
        stream = re.fullmatch(r"stream:(\w+):(-?\d+)", token)
        if stream and stream.group(1) in BY_TOKEN:
            info, parts = BY_TOKEN[stream.group(1)], int(stream.group(2))
            if parts < 1:
                raise UserError(f"task token {token!r}: a stream needs N >= 1 parts, got {parts}")
            tasks += [Task(f"{info.token}:{k + 1}/{parts}", info.name, "stream", tuple(range(info.num_classes)),
                           part=(k, parts)) for k in range(parts)]
            continue
        if token.startswith("p") and token[1:] in BY_TOKEN:
            info = BY_TOKEN[token[1:]]
            # each occurrence gets its own permutation, derived from the run's seed
            tasks.append(Task(f"{token}{permuted_count}", info.name, "permuted", tuple(range(info.num_classes)),
                              permutation_seed=derive(seed, Stream.permutation, permuted_count)))
            permuted_count += 1
            continue
        match = re.fullmatch(r"(\w+)-(-?\d+)", token)
        if match and match.group(1) in BY_TOKEN:
            info, parts = BY_TOKEN[match.group(1)], int(match.group(2))
            n = info.num_classes
            if parts < 1 or n % parts:
                divisors = [d for d in range(1, n + 1) if n % d == 0]
                raise UserError(f"task token {token!r}: {n} classes cannot be split into {parts} equal tasks; "
                                f"N must be one of {divisors}")
            order = list(range(n))
            if class_order_seed is not None:
                random.Random(class_order_seed).shuffle(order)
            per = n // parts
            for k in range(parts):
                tasks.append(Task(f"{token}:{k}", info.name, "split", tuple(order[k * per:(k + 1) * per])))
            continue
        raise UserError(f"unknown task token {token!r}; {_token_help()}")
    if any(t.kind == "stream" for t in tasks) and len(tokens) > 1:
        raise UserError("a stream (stream:<dataset>:<N>) is a whole task sequence: give it as the only token")
    return tasks


def resolve_scenario(tasks: Sequence[Task], scenario: Scenario | str) -> Scenario:
    """The scenario to use: the explicit one, or the default of the tokens' kind (which must agree)."""
    scenario = Scenario(scenario)
    if scenario != Scenario.auto:
        return scenario
    defaults = {KIND_SCENARIO[t.kind] for t in tasks}
    if len(defaults) > 1:
        raise UserError("the task sequence mixes permuted/whole tasks (domain-incremental by default) with "
                        "split tasks (class-incremental by default); set data.scenario to domain, class or task")
    return defaults.pop()


def _block_key(task: Task) -> str:
    """Tasks with the same key share one block of outputs in the class and task scenarios: a split task uses
    its dataset's block (its classes in place), a permuted or whole task gets a block of its own."""
    return task.dataset if task.kind in ("split", "subset") else task.name


def task_outputs(tasks: Sequence[Task], scenario: Scenario) -> tuple[int, list[list[int]]]:
    """The head size and, per task, the output index of each of its classes (in the task's class order).

    Domain: one head of the largest task's size, class k of every task on output k. Class and task: one
    head over every block (see `_block_key`), each class on its own output.
    """
    if scenario == Scenario.domain:
        return max(len(t.classes) for t in tasks), [list(range(len(t.classes))) for t in tasks]
    offsets: dict[str, int] = {}
    total = 0
    for t in tasks:
        if _block_key(t) not in offsets:
            offsets[_block_key(t)] = total
            total += DATASETS[t.dataset].num_classes
    return total, [[offsets[_block_key(t)] + c for c in t.classes] for t in tasks]
