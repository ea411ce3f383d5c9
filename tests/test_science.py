"""The paper's effect, end to end (slow: run with `make test-all` or `pytest -m slow`).

A regression that silently disables metaplasticity (the seed's code multiplied meta by 0) fails here.
"""

import pytest
from conftest import read_results, run_cli

pytestmark = pytest.mark.slow


def _first_task_after_last(tmp_path, net, meta, extra=()):
    run_dir = tmp_path / f"{net}-{meta}"
    run_cli([f"net={net}", f"meta={meta}", "seed=0", *extra, f"hydra.run.dir={run_dir}", "logger.plots=false"],
            tmp_path, check=True, timeout=900)
    res = read_results(run_dir)
    return res["acc_matrix"][-1][0], res["acc_matrix"][-1][-1]


def test_strong_meta_keeps_the_first_task_in_the_paper_bnn(tmp_path):
    """bnn 64-512-512-10, three permuted digits tasks, 20 epochs each: meta 50 vs 0."""
    extra = ["net.hidden=[512,512]"]
    plain_first, plain_last = _first_task_after_last(tmp_path, "bnn", 0, extra)
    meta_first, meta_last = _first_task_after_last(tmp_path, "bnn", 50, extra)
    assert plain_first < 40  # without metaplasticity the first task is forgotten
    assert meta_first > plain_first + 40  # with it, it is kept
    assert meta_last > 70  # and the newest task is still learned


def test_meta_protects_the_first_task_in_the_binarized_vit(tmp_path):
    """bvit_full_ln (every linear map binary, per-task LayerNorm), the default net: meta 50 vs 0."""
    plain_first, _ = _first_task_after_last(tmp_path, "bvit_full_ln", 0)
    meta_first, _ = _first_task_after_last(tmp_path, "bvit_full_ln", 50)
    assert meta_first > plain_first + 15
