"""W&B logging through the real entry point: offline runs are real run files, read back with wandb's CLI."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import TINY, read_results

WANDB = str(Path(sys.executable).parent / "wandb")


def _summary(run_file: Path) -> dict:
    out = subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", str(run_file)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def _history(run_file: Path) -> list[dict]:
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(run_file)], capture_output=True, text=True,
                         check=True)
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def test_multirun_logs_one_offline_run_per_job(cli):
    cli("-m", "logger=wandb", "logger.wandb.mode=offline", "net=bvit", "meta=0,50", *TINY, check=True)
    jobs = sorted(p.parent for p in cli.out.glob("multirun/*/*/results.json"))
    assert len(jobs) == 2
    ids = set()
    for job in jobs:
        res = read_results(job)
        (run_file,) = job.glob("wandb/offline-run-*/run-*.wandb")  # exactly one run, in the job's own dir
        summary = _summary(run_file)
        assert summary["config"]["meta"] == res["meta"]  # the job's own config: no cross-job mix-up
        assert summary["config"]["net"] == "bvit" and summary["config"]["task_sequence"] == ["pdigits", "pdigits"]
        assert summary["name"] == f"bvit-meta{res['meta']}-s0"
        assert summary["summary"]["avg_acc"] == res["avg_acc"] and summary["summary"]["status"] == "completed"
        epochs = [h for h in _history(run_file) if "test/acc_task1" in h]
        assert [h["test/acc_task1"] for h in epochs] == [e["test_acc"][1] for e in res["epochs"]]
        assert any("meta/head/flipped" in h for h in epochs)
        ids.add(summary["run_id"])
        assert (job / "wandb_run_id.txt").read_text() == summary["run_id"]
    assert len(ids) == 2


def test_resume_continues_the_same_run(cli, tmp_path):
    run_dir = tmp_path / "run"
    args = ["logger=wandb", "logger.wandb.mode=offline", *TINY, f"hydra.run.dir={run_dir}"]
    cli(*args, check=True)
    cli(*args, check=True)  # resumes from the finished checkpoint
    runs = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    assert len({_summary(r)["run_id"] for r in runs}) == 1


def test_unreachable_wandb_never_stops_training(cli):
    env = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40, "WANDB_MODE": ""}
    proc = cli("logger=wandb", "logger.wandb.mode=online", "logger.wandb.init_timeout=5", *TINY, env=env,
               timeout=240)
    assert proc.returncode == 0, proc.stderr
    (path,) = cli.out.glob("runs/*/results.json")
    assert read_results(path.parent)["status"] == "completed"
    warnings = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "W&B" in ln and "failed" in ln]
    assert len(warnings) == 1 and "training goes on" in warnings[0]
