"""The paper's effect, end to end, tested without the task id.

A regression that silently disables metaplasticity (the seed's code multiplied meta by 0) fails here: the
short check runs in every `make test`, the budget-sized ones with `make test-all` (`slow`).
"""

import pytest
from conftest import run


def test_metaplasticity_keeps_the_first_task_short(tmp_path):
    """bnn 64-128-128-10, two permuted digits tasks of 5 epochs: meta 50 keeps task 1, meta 0 forgets it."""
    first = {}
    for meta in (0, 50):
        record = run(tmp_path / f"meta{meta}", "net=bnn", "net.hidden=[128,128]", f"meta={meta}",
                     "epochs_per_task=5", "task_sequence=[pdigits,pdigits]", "logger.files.plots=false",
                     "logger.console.progress=none", "threads=1")
        assert record.scenario == "domain"  # no task id at test
        first[meta] = record.acc_matrix[-1][0]
        newest = record.acc_matrix[-1][-1]
    assert first[0] < 30 and first[50] > first[0] + 30, first
    assert newest > 70


def _first_and_newest(tmp_path, net, meta, *extra):
    record = run(tmp_path / f"{net}-{meta}", f"net={net}", f"meta={meta}", "seed=0", "logger.files.plots=false",
                 "logger.console.progress=none", *extra)
    return record.acc_matrix[-1][0], record.acc_matrix[-1][-1]


@pytest.mark.slow
def test_strong_meta_keeps_the_first_task_in_the_paper_bnn(tmp_path):
    """bnn 64-512-512-10, three permuted digits tasks, 20 epochs each, no task id at test: meta 50 vs 0."""
    plain_first, _ = _first_and_newest(tmp_path, "bnn", 0, "net.hidden=[512,512]")
    meta_first, meta_newest = _first_and_newest(tmp_path, "bnn", 50, "net.hidden=[512,512]")
    assert plain_first < 40  # without metaplasticity the first task is forgotten
    assert meta_first > plain_first + 30  # with it, it is kept
    assert meta_newest > 70  # and the newest task is still learned


@pytest.mark.slow
def test_the_studys_winner_keeps_the_first_task_without_task_identity(tmp_path):
    """bnn_ln (sweeps/candidates/bnn_ln.yaml) on the embedded budget, seeds 0-2, domain scenario: at its
    validated meta the first task stays >= 60% after the third while the newest reaches >= 80% (the study's
    goal, on the mean), and the first task is kept by a wide margin over meta 0."""
    first, newest, plain = [], [], []
    for seed in (0, 1, 2):
        for arm in ("validated", "no_meta"):
            record = run(tmp_path / f"{seed}-{arm}", "+candidate=bnn_ln", f"+arm={arm}", f"seed={seed}",
                         "logger.files.plots=false", "logger.console.progress=none")
            assert record.scenario == "domain"
            if arm == "validated":
                assert record.meta > 0
                first.append(record.acc_matrix[-1][0])
                newest.append(record.acc_matrix[-1][-1])
            else:
                plain.append(record.acc_matrix[-1][0])
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert mean(first) >= 60 and mean(newest) >= 80, (first, newest)
    assert mean(first) > mean(plain) + 25, (first, plain)
