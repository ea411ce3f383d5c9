import json
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, read_results

from metaplastic_vit.errors import UserError
from metaplastic_vit.report import build_report, load_runs, main, wandb_report


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A small real sweep on the embedded data: bvit x meta {0, 1.35} x two seeds."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("sweep")
    run_cli(["-m", "net=bvit", "meta=0,1.35", "seed=0,1", *TINY], out, check=True)
    (sweep_dir,) = out.glob("multirun/*")
    return sweep_dir


def test_report_table_plots_and_html(sweep, tmp_path):
    # a partial sweep: one more run that never finished
    unfinished = sweep / "unfinished"
    unfinished.mkdir()
    (unfinished / "results.json").write_text(json.dumps({"status": "running"}))
    done = build_report([sweep], tmp_path / "report")
    rows = {(r["net"], r["meta"]): r for r in done["rows"]}
    assert set(rows) == {("bvit", "0"), ("bvit", "1.35")}
    runs = [read_results(p.parent) for p in sweep.glob("*/results.json") if p.parent != unfinished]
    for meta, key in ((0, "0"), (1.35, "1.35")):
        mine = [r for r in runs if r["meta"] == meta]
        row = rows[("bvit", key)]
        assert row["seeds"] == 2
        assert row["avg_acc"] == pytest.approx(sum(r["avg_acc"] for r in mine) / 2)
        assert row["forgetting"] == pytest.approx(sum(r["forgetting"] for r in mine) / 2)
        assert row["first_task"] == pytest.approx(sum(r["acc_matrix"][-1][0] for r in mine) / 2)
    assert [(p.parent.name, s) for p, s in done["skipped"]] == [("unfinished", "running")]
    for name in ("acc_vs_meta.png", "task1_accuracy.png", "acc_matrices.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "src=\"http" not in page  # readable offline
    assert "Skipped 1 runs" in page
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| bvit | 1.35 | 2 |" in md and "![acc_vs_meta](acc_vs_meta.png)" in md


def test_report_command_line(sweep, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metaplastic_vit.report", str(sweep), "--out", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "| bvit | 0 | 2 |" in proc.stdout and (tmp_path / "r" / "report.html").exists()


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
    assert {tuple(p.y) for p in plots} == {("test/mean_seen_acc",), ("test/acc_task0",)}
    assert any(isinstance(p, wr.RunComparer) for p in grid.panels)
