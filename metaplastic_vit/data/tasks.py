"""Task sequences: parse tokens such as ``pdigits``, ``mnist-5`` or ``cifar10-animals`` into tasks.

Grammar (one token may expand to several tasks):
- ``p<dataset>``: one permuted-pixel task with its own fixed permutation (repeat the token for more);
- ``<dataset>-<N>``: the dataset's classes split into N equal tasks;
- ``<dataset>``: the whole dataset as one task; ``cifar10-animals`` / ``cifar10-vehicles``: the paper's halves.
Scenarios: ``domain`` (labels shared across tasks, one head of the task size), ``class`` (one head over
all classes, the seed's setting) and ``task`` (one head over all classes, logits masked to the task's).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import UserError

# token name -> dataset name in `sources.DATASETS` and its number of classes
DATASETS: dict[str, tuple[str, int]] = {
    "digits": ("digits", 10), "mnist": ("mnist", 10), "fmnist": ("fmnist", 10), "cifar10": ("cifar10", 10),
    "cifar100": ("cifar100", 100), "imgnet": ("tinyimagenet", 200),
}
SUBSETS: dict[str, tuple[str, tuple[int, ...]]] = {
    "cifar10-vehicles": ("cifar10", (0, 1, 8, 9)),  # airplane, automobile, ship, truck
    "cifar10-animals": ("cifar10", (2, 3, 4, 5, 6, 7)),  # bird, cat, deer, dog, frog, horse
}
KIND_SCENARIO = {"permuted": "domain", "whole": "domain", "split": "class", "subset": "class"}


@dataclass(frozen=True)
class Task:
    """One task: a dataset, the classes it holds, and an optional pixel permutation."""

    name: str
    dataset: str  # name in sources.DATASETS
    kind: str  # permuted | split | whole | subset
    classes: tuple[int, ...]  # the dataset's labels that belong to this task
    permutation_seed: int | None = None  # pixel permutation of a permuted task


def _token_help() -> str:
    names = ", ".join(DATASETS)
    return (f"use p<dataset>, <dataset>, <dataset>-<N> or {', '.join(SUBSETS)}, with <dataset> one of {names}")


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
        if token in DATASETS:
            dataset, n = DATASETS[token]
            tasks.append(Task(token, dataset, "whole", tuple(range(n))))
            continue
        if token.startswith("p") and token[1:] in DATASETS:
            dataset, n = DATASETS[token[1:]]
            # each occurrence gets its own permutation, derived from the run's seed
            tasks.append(Task(f"{token}{permuted_count}", dataset, "permuted", tuple(range(n)),
                              permutation_seed=seed * 1_000_003 + permuted_count))
            permuted_count += 1
            continue
        match = re.fullmatch(r"(\w+)-(-?\d+)", token)
        if match and match.group(1) in DATASETS:
            name, parts = match.group(1), int(match.group(2))
            dataset, n = DATASETS[name]
            if parts < 1 or n % parts:
                divisors = [d for d in range(1, n + 1) if n % d == 0]
                raise UserError(f"task token {token!r}: {n} classes cannot be split into {parts} equal tasks; "
                                f"N must be one of {divisors}")
            order = torch.arange(n)
            if class_order_seed is not None:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(class_order_seed))
            per = n // parts
            for k in range(parts):
                tasks.append(Task(f"{token}:{k}", dataset, "split", tuple(order[k * per:(k + 1) * per].tolist())))
            continue
        raise UserError(f"unknown task token {token!r}; {_token_help()}")
    return tasks


def resolve_scenario(tasks: Sequence[Task], scenario: str) -> str:
    """The scenario to use: the explicit one, or the default of the tokens' kind (which must agree)."""
    if scenario != "auto":
        return scenario
    defaults = {KIND_SCENARIO[t.kind] for t in tasks}
    if len(defaults) > 1:
        raise UserError("the task sequence mixes permuted/whole tasks (domain-incremental by default) with "
                        "split tasks (class-incremental by default); set data.scenario to domain, class or task")
    return defaults.pop()


@dataclass(frozen=True)
class LabelSpace:
    """How dataset labels map to the model's outputs under a scenario."""

    num_classes: int  # size of the head
    offsets: dict[str, int]  # dataset -> first output index (class and task scenarios)

    def outputs(self, task: Task, scenario: str) -> torch.Tensor:
        """Output indices of the task's classes, in the task's class order."""
        if scenario == "domain":
            return torch.arange(len(task.classes))
        return torch.tensor(task.classes) + self.offsets[task.dataset]


def dataset_classes(dataset: str) -> int:
    """The official number of classes of a dataset (by its name in sources.DATASETS)."""
    return next(n for d, n in DATASETS.values() if d == dataset)


def label_space(tasks: Sequence[Task], scenario: str) -> LabelSpace:
    """One head for the whole sequence: the largest task (domain) or every dataset's classes (class/task)."""
    if scenario == "domain":
        sizes = {len(t.classes) for t in tasks}
        return LabelSpace(max(sizes), {})
    offsets: dict[str, int] = {}
    total = 0
    for t in tasks:
        if t.dataset not in offsets:
            offsets[t.dataset] = total
            total += dataset_classes(t.dataset)
    return LabelSpace(total, offsets)
