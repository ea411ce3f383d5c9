"""Continual-learning metrics on the accuracy matrix R (row i: after training task i; column j: task j).

ACC is the mean of the last row; BWT (Lopez-Paz & Ranzato 2017) the mean change of earlier tasks since
they were learned; forgetting (Chaudhry et al. 2018) the mean drop from each earlier task's best;
FWT the mean accuracy on a task just before it is learned, over that task's random-init accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float]]


def _square(r: Matrix) -> int:
    t = len(r)
    if t == 0 or any(len(row) != t for row in r):
        raise ValueError(f"the accuracy matrix must be square and non-empty, got {[len(row) for row in r]}")
    return t


def average_accuracy(r: Matrix) -> float:
    """Mean accuracy over all tasks after the last task."""
    t = _square(r)
    return sum(r[-1]) / t


def backward_transfer(r: Matrix) -> float | None:
    """Mean over j < T of R[T, j] - R[j, j]; None with a single task."""
    t = _square(r)
    if t < 2:
        return None
    return sum(r[-1][j] - r[j][j] for j in range(t - 1)) / (t - 1)


def forgetting(r: Matrix) -> float | None:
    """Mean over j < T of max over earlier rows of R[., j] minus R[T, j]; None with a single task."""
    t = _square(r)
    if t < 2:
        return None
    return sum(max(r[i][j] for i in range(j, t - 1)) - r[-1][j] for j in range(t - 1)) / (t - 1)


def forward_transfer(r: Matrix, initial: Sequence[float]) -> float | None:
    """Mean over j > 0 of R[j-1, j] - b_j, with b_j the accuracy on task j at random init."""
    t = _square(r)
    if t < 2:
        return None
    if len(initial) != t:
        raise ValueError(f"need one random-init accuracy per task, got {len(initial)} for {t} tasks")
    return sum(r[j - 1][j] - initial[j] for j in range(1, t)) / (t - 1)


def summary(r: Matrix, initial: Sequence[float] | None = None) -> dict[str, float | None]:
    """ACC, BWT, forgetting and (with `initial`) FWT of an accuracy matrix; a matrix of one column (a stream:
    the whole test set after every part) has only ACC, its last value."""
    if r and all(len(row) == 1 for row in r) and len(r) > 1:
        return {"avg_acc": r[-1][0], "bwt": None, "forgetting": None, "fwt": None}
    return {
        "avg_acc": average_accuracy(r),
        "bwt": backward_transfer(r),
        "forgetting": forgetting(r),
        "fwt": forward_transfer(r, initial) if initial is not None else None,
    }
