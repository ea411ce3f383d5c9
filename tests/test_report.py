import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import ROOT, run, tiny

from metaplastic_vit.errors import UserError
from metaplastic_vit.report import (
    build_report,
    distinct_labels,
    load_runs,
    main,
    mean_interval,
    size_series,
    wandb_report,
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Small real runs on the embedded data: bvit x meta {0, 1.35} x seeds {0, 1}, meta 1 once, and one EWC run."""
    out = tmp_path_factory.mktemp("sweep")
    for meta in (0, 1.35):
        for seed in (0, 1):
            run(out / f"meta={meta},seed={seed}", *tiny("net=bvit", f"meta={meta}", f"seed={seed}"))
    run(out / "meta=1,seed=0", *tiny("net=bvit", "meta=1", "seed=0"))
    run(out / "ewc", *tiny("net=bvit", "meta=0", "seed=0", "strategy=ewc", "strategy.fisher_samples=64"))
    return out


def test_groups_differ_in_every_scientific_key_but_the_seed(sweep, tmp_path):
    (sweep / "unfinished").mkdir(exist_ok=True)
    unfinished = json.loads((sweep / "ewc" / "results.json").read_text())
    (sweep / "unfinished" / "results.json").write_text(json.dumps({**unfinished, "status": "running"}))
    (sweep / "malformed").mkdir(exist_ok=True)
    (sweep / "malformed" / "results.json").write_text(json.dumps([1, 2, 3]))
    done = build_report([sweep, sweep / "meta=0,seed=0"], tmp_path / "report")  # one run reachable twice
    assert done["keys"] == ["meta", "strategy._target_"]
    groups = {g.key: g for g in done["groups"]}
    naive = "metaplastic_vit.strategies.naive.Naive"
    ewc = "metaplastic_vit.strategies.ewc.EWC"
    assert set(groups) == {("0", naive), ("1", naive), ("1.35", naive), ("0", ewc)}  # naive and EWC never merge
    assert len(groups[("0", naive)].runs) == 2 and groups[("0", naive)].seeds == [0, 1]  # counted once
    assert len(groups[("0", ewc)].runs) == 1
    runs = [json.loads((sweep / f"meta=0,seed={s}" / "results.json").read_text()) for s in (0, 1)]
    mean, half = groups[("0", naive)].stats["avg_acc"]
    assert mean == pytest.approx(sum(r["avg_acc"] for r in runs) / 2)
    assert half == pytest.approx(12.706 * abs(runs[0]["avg_acc"] - runs[1]["avg_acc"]) / 2, rel=1e-3)
    assert groups[("0", ewc)].stats["avg_acc"][1] is None  # a single run has no interval
    assert groups[("0", naive)].stats["first_task"][0] == pytest.approx(sum(r["acc_matrix"][-1][0] for r in runs) / 2)
    assert groups[("0", naive)].stats["val_avg_acc"][0] == pytest.approx(sum(r["val_avg_acc"] for r in runs) / 2)
    assert groups[("0", naive)].consolidated == [None, None]  # meta 0: nothing is metaplastic
    assert groups[("1.35", naive)].consolidated == [0.0, 0.0]
    skipped = {p.parent.name: why for p, why in done["skipped"]}
    assert skipped == {"unfinished": "running", "malformed": "unreadable: not a JSON object but list"}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| meta | strategy | tested | runs | seeds | ACC | ACC task-aware |" in md
    assert "| 0 | EWC | no task id | 1 | 1 |" in md and "| 0 | Naive | no task id | 2 | 2 |" in md
    # every meta that consolidated nothing is named, in one note
    assert ("No measurable effect on this budget: meta 1 (strategy Naive) and meta 1.35 (strategy Naive) "
            "consolidated under 0.5%") in md
    assert "consolidated at task ends | parameters | binary weights | metaplastic weights | fan-in |" in md
    assert "Groups with fewer than 3 seeds" in md and "without the task id (domain scenario)" in md
    for name in ("acc_vs_meta.png", "task1_accuracy.png", "acc_matrices.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "src=\"http" not in page  # readable offline
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert len(summary) == 4 and {"mean", "ci95"} == set(summary[0]["avg_acc"])
    record = json.loads((sweep / "meta=0,seed=0" / "results.json").read_text())
    assert summary[0]["binary_weights"] == record["binary_weights"] == sum(
        p for name, p in _binary_numel(record).items())


def _binary_numel(record):
    """Hidden weights per binary layer of the tiny bvit: (fan-out x fan-in) from the record's fan-in."""
    d, hidden = 16, 64  # arch.embed_dim=16, mlp_ratio 4
    out = {"blocks.0.mlp.fc1": hidden, "blocks.0.mlp.fc2": d, "head": 10}
    assert set(record["fan_in"]) == set(out)
    return {name: out[name] * record["fan_in"][name] for name in out}


def test_transductive_batchnorm_is_labelled_as_a_use_of_the_task_identity(tmp_path):
    for transductive in ("false", "true"):
        run(tmp_path / transductive, *tiny("net=bnn", "net.hidden=[16]", f"net.transductive_bn={transductive}"))
    done = build_report([tmp_path], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    tested = {g.key[0]: g.runs[0].record.tested for g in done["groups"]}
    assert tested == {"False": "no task id", "True": "task id via transductive BN"}
    assert "normalise each test batch, which holds a single task, with its own statistics" in md
    assert "with the task identity through task-pure test batches (transductive BatchNorm, domain scenario)" in md


def test_meta_0_and_meta_0_point_0_are_one_setting(sweep, tmp_path):
    """...and a run of a seed already counted (another directory, same settings) is counted once."""
    run(tmp_path / "float", *tiny("net=bvit", "meta=0.0", "seed=1"))
    done = build_report([sweep / "meta=0,seed=0", sweep / "meta=0,seed=1", tmp_path / "float"], tmp_path / "report")
    (group,) = done["groups"]
    assert group.seeds == [0, 1] and len(group.runs) == 2 and len(group.repeats) == 1
    assert group.stats["avg_acc"] == mean_interval([r.record.avg_acc for r in group.runs])
    assert "Counted once, as they repeat the settings and seed of another run: " in (
        tmp_path / "report" / "report.md").read_text()


def test_runs_with_different_task_counts_are_separate_groups(sweep, tmp_path):
    run(tmp_path / "three", *tiny("net=bvit", "meta=0", "task_sequence=[pdigits,pdigits,pdigits]"))
    done = build_report([sweep / "meta=0,seed=0", tmp_path / "three"], tmp_path / "report")
    assert done["keys"] == ["task_sequence"] and len(done["groups"]) == 2


def test_student_t_interval():
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / 3**0.5, rel=1e-3)
    assert mean_interval([5.0]) == (5.0, None)


def test_report_command_line(sweep, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metaplastic_vit.report", str(sweep), "--out", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "| 1.35 | Naive | no task id | 2 | 2 |" in proc.stdout and (tmp_path / "r" / "report.html").exists()


def test_no_results_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(UserError, match="no completed results.json under"):
        load_runs([tmp_path])
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no completed results.json")


def test_wandb_report_structure_without_network():
    import wandb_workspaces.reports.v2 as wr

    report = wandb_report("lab", "metaplastic-vit", group="meta_grid-2026", nets=["bvit", "bnn"])
    assert (report.entity, report.project) == ("lab", "metaplastic-vit")
    (grid,) = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    (runset,) = grid.runsets
    assert runset.groupby == ["config.meta"]
    assert runset.filters == "Metric(\"Group\") == 'meta_grid-2026' and Config(\"net\") in ['bvit', 'bnn']"
    plots = [p for p in grid.panels if isinstance(p, wr.LinePlot)]
    assert {tuple(p.y) for p in plots} == {("test/mean_seen_acc",), ("test/acc_task0",), ("val/acc_task0",)}
    assert any(isinstance(p, wr.RunComparer) for p in grid.panels)


def test_a_capacity_study_is_drawn_against_binary_weights(tmp_path):
    for hidden in (8, 16, 32):
        for meta in (0, 5):
            run(tmp_path / f"h{hidden}m{meta}", *tiny("net=bnn_ln", f"net.hidden=[{hidden}]", f"meta={meta}"))
    done = build_report([tmp_path], tmp_path / "report")
    series = size_series(done["groups"])
    assert set(series) == {("bnn_ln", True), ("bnn_ln", False)}
    sizes = [g.runs[0].record.binary_weights for g in series[("bnn_ln", False)]]
    assert sizes == [64 * 8 + 8 * 10, 64 * 16 + 16 * 10, 64 * 32 + 32 * 10]  # 8x8 inputs, hidden, 10 outputs
    assert (tmp_path / "report" / "retention_vs_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    build_report([tmp_path / "h8m0", tmp_path / "h16m0"], tmp_path / "r2")
    assert not (tmp_path / "r2" / "retention_vs_size.png").exists()  # two sizes: no size figure


def test_a_figure_names_its_lines_by_what_differs_among_them():
    keys = ["net", "meta", "lr"]
    lines = [SimpleNamespace(key=("bnn_ln", "0", "0.005")), SimpleNamespace(key=("bnn_ln", "58.19", "0.005"))]
    assert distinct_labels(keys, lines) == ["meta 0", "meta 58.19"]
    assert distinct_labels(keys, lines[:1]) == [""]
