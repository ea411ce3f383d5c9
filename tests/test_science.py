"""The paper's effect, end to end (slow: run with `make test-all` or `pytest -m slow`).

A regression that silently disables metaplasticity (the seed's code multiplied meta by 0) fails here.
"""

import pytest
from conftest import run

pytestmark = pytest.mark.slow


def _first_and_newest(tmp_path, net, meta, *extra):
    record = run(tmp_path / f"{net}-{meta}", f"net={net}", f"meta={meta}", "seed=0", "logger.files.plots=false",
                 "logger.console.progress=none", *extra)
    return record.acc_matrix[-1][0], record.acc_matrix[-1][-1]


def test_strong_meta_keeps_the_first_task_in_the_paper_bnn(tmp_path):
    """bnn 64-512-512-10, three permuted digits tasks, 20 epochs each, no task id at test: meta 50 vs 0."""
    plain_first, _ = _first_and_newest(tmp_path, "bnn", 0, "net.hidden=[512,512]")
    meta_first, meta_newest = _first_and_newest(tmp_path, "bnn", 50, "net.hidden=[512,512]")
    assert plain_first < 40  # without metaplasticity the first task is forgotten
    assert meta_first > plain_first + 30  # with it, it is kept
    assert meta_newest > 70  # and the newest task is still learned
