"""W&B logging: offline runs are real run files, read back with wandb's own command-line tool."""

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

from conftest import read_results, run, tiny

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


def test_each_job_logs_its_own_offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = set()
    for meta in (0, 50):
        job = tmp_path / f"meta={meta}"
        run(job, *tiny("logger=wandb", "logger.wandb.mode=offline", "net=bvit", f"meta={meta}"))
        res = read_results(job)
        (run_file,) = job.glob("wandb/offline-run-*/run-*.wandb")  # exactly one run, in the job's own dir
        summary = _summary(run_file)
        assert summary["config"]["meta"] == meta and summary["config"]["net"] == "bvit"
        assert summary["config"]["task_sequence"] == ["pdigits", "pdigits"]
        assert summary["name"] == f"bvit-meta{res['meta']}-s0"
        assert summary["summary"]["avg_acc"] == res["avg_acc"] and summary["summary"]["status"] == "completed"
        assert summary["summary"]["avg_acc_task_aware"] == res["avg_acc_task_aware"]
        epochs = [h for h in _history(run_file) if "test/acc_task1" in h]
        assert [h["test/acc_task1"] for h in epochs] == [e["test_acc"][1] for e in res["epochs"]]
        assert [h["val/acc_task1"] for h in epochs] == [e["val_acc"][1] for e in res["epochs"]]
        assert [h["test_task_aware/acc_task0"] for h in epochs] == [e["test_acc_task_aware"][0] for e in res["epochs"]]
        assert any("meta/head/flipped" in h for h in epochs)
        ids.add(summary["run_id"])
        assert (job / "wandb_run_id.txt").read_text() == summary["run_id"]
    assert len(ids) == 2


def test_a_pruned_run_says_so_in_its_summary_and_tags(tmp_path, monkeypatch):
    """A search's pruned trial ends its W&B run marked `pruned`, with the reason, not as a finished success."""
    from metaplastic_vit.record import read_record
    from metaplastic_vit.sinks.wandb_sink import WandbSink

    monkeypatch.setenv("WANDB_SILENT", "true")
    run(tmp_path / "done", *tiny("net=bnn", "net.hidden=[16]"))
    record = read_record(tmp_path / "done" / "results.json")
    record.status, record.reason = "pruned", "pruned by the search's median pruner after task 1 epoch 2"
    sink = WandbSink(tmp_path / "pruned", mode="offline")
    (tmp_path / "pruned").mkdir()
    sink.start(record, resumed=False)
    sink.finish(record)
    sink.close()
    (run_file,) = (tmp_path / "pruned").glob("wandb/offline-run-*/run-*.wandb")
    summary = _summary(run_file)
    assert summary["summary"]["status"] == "pruned" and "median pruner" in summary["summary"]["reason"]
    assert "pruned" in summary["tags"]


def test_resume_continues_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = tiny("logger=wandb", "logger.wandb.mode=offline")
    run(tmp_path, *args)
    run(tmp_path, *args)  # resumes from the finished checkpoint
    runs = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    assert len({_summary(r)["run_id"] for r in runs}) == 1


def test_an_unreachable_server_costs_seconds_and_logs_offline(tmp_path, monkeypatch, caplog):
    """Credentials set, online mode, the server a closed port on this machine: the sink finds it unreachable with
    its probe (seconds) instead of waiting on wandb.init, and logs offline."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_SILENT", "true")
    caplog.set_level(logging.WARNING)
    record = run(tmp_path, *tiny("logger=wandb", "logger.wandb.mode=online"))
    assert record.status == "completed"
    warnings = [r.getMessage() for r in caplog.records if "W&B" in r.getMessage()]
    assert len(warnings) == 1 and "unreachable" in warnings[0] and "logging offline instead" in warnings[0]
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
