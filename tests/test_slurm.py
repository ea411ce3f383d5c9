"""Sweeps through the submitit launcher on a real Slurm cluster (scripts/slurm-local.sh up).

They skip when no cluster is reachable, except in CI (CI set), where a missing Slurm is a failure.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, read_results, run
from helpers import epochs_recorded, run_cli, start_cli, wait_until

pytestmark = pytest.mark.slurm

# A node without GPUs and little memory: the local test cluster. The tests folder is on the jobs' PYTHONPATH
# for the HoldFirstAttempt sink (tests/helpers.py).
SLURM_ENV = {"METAPLASTIC_SLURM_GPUS": "0", "METAPLASTIC_SLURM_CPUS": "1", "METAPLASTIC_SLURM_MEM_GB": "1",
             "METAPLASTIC_SLURM_TIMEOUT_MIN": "10", "PYTHONPATH": str(ROOT / "tests")}
# the first attempt of a job waits after its second epoch until the scheduler signals it
HOLD = "+logger.hold={_target_:helpers.HoldFirstAttempt,_partial_:true,after:2}"
# the debug preset's tiny bvit on two permuted digits tasks; epochs_per_task sets how long a job trains
RUN = ["+preset=debug", "net=bvit"]


def _cluster_up() -> str | None:
    """None when a Slurm controller answers, else why not."""
    if not shutil.which("sinfo"):
        return "Slurm client tools are not installed (scripts/slurm-local.sh up installs and starts a cluster)"
    if not os.environ.get("SLURM_CONF") and not Path("/etc/slurm/slurm.conf").exists():
        return "SLURM_CONF is not set: run eval \"$(scripts/slurm-local.sh up)\""
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 or not proc.stdout.strip():
        return f"no Slurm controller answers ({proc.stderr.strip() or 'no nodes'})"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    reason = _cluster_up()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI needs a Slurm cluster: {reason}")
    if reason:
        pytest.skip(reason)


def _job_logs(out: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(out.rglob(".submitit/*/*_log.*")))


def test_two_job_sweep_runs_as_slurm_jobs(tmp_path):
    proc = run_cli(["-m", "hydra/launcher=slurm", *RUN, "meta=0,1.35", "epochs_per_task=2"], tmp_path,
                   env=SLURM_ENV, check=True)
    results = sorted(tmp_path.glob("multirun/*/*/results.json"))
    assert len(results) == 2, proc.stdout + proc.stderr
    assert sorted(read_results(p.parent)["meta"] for p in results) == [0, 1.35]
    assert all(read_results(p.parent)["status"] == "completed" for p in results)
    job_dirs = sorted(p.name for p in tmp_path.glob("multirun/*/.submitit/*_*") if p.is_dir())
    assert len(job_dirs) == 2  # one Slurm array task per job, named <jobid>_<index>
    job_id = job_dirs[0].split("_")[0]
    acct = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    sacct = subprocess.run(["sacct", "-n", "-X", "-j", job_id, "-o", "JobName%30,State"], capture_output=True,
                           text=True)
    assert "mvit-adhoc" in acct.stdout + sacct.stdout
    assert "Exiting after successful completion" in _job_logs(tmp_path)


def _held_job(out: Path, proc) -> str:
    """Wait for the sweep's (single) job to be held after its second epoch; return its Slurm id."""
    def held():
        metrics = list(out.glob("multirun/*/*/metrics.csv"))
        dirs = [p for p in out.glob("multirun/*/.submitit/*") if p.is_dir()]
        return dirs[0].name if metrics and dirs and epochs_recorded(metrics[0].parent) >= 2 else None
    return wait_until(held, "the Slurm job's second epoch", timeout=180, proc=proc, interval=0.1)


def _restarts(job: str) -> int:
    """How many times Slurm restarted (requeued) a job, from its record (kept MinJobAge seconds after it ends)."""
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    (count,) = re.findall(r"\bRestarts=(\d+)", shown)
    return int(count)


def _reference(tmp_path, extra=()):
    """The same experiment uninterrupted, in this process on one thread (as a Slurm job with 1 CPU runs it)."""
    return run(tmp_path / "reference", *RUN, *extra, "threads=1").to_dict()


def test_preempted_job_requeues_and_resumes_to_identical_results(tmp_path):
    """The job waits after its second epoch (HoldFirstAttempt) until it is sent what a preempting scheduler
    sends; requeued, it resumes and ends with the uninterrupted run's results."""
    out = tmp_path / "sweep"
    extra = ["meta=1.35", "epochs_per_task=4"]
    sweep = start_cli(["-m", "hydra/launcher=slurm", *RUN, *extra, HOLD], out, env=SLURM_ENV,
                      stderr=subprocess.STDOUT)
    job = _held_job(out, sweep)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what a preempting scheduler sends
    log, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, log
    (path,) = out.glob("multirun/*/*/results.json")
    res = read_results(path.parent)
    assert res["status"] == "completed" and res["resumes"] == [{"task": 0, "epoch": 2}]
    logs = _job_logs(out)
    # submitit logs "Requeued job" only after `scontrol requeue` returns, and Slurm may stop the attempt first:
    # the scheduler's own count of restarts is the record that cannot be lost
    assert "Caught signal SIGUSR2" in logs and "resuming from" in logs and "at task" in logs
    assert _restarts(job) == 1
    expected = _reference(tmp_path, extra)
    assert res["epochs"] == expected["epochs"] and res["acc_matrix"] == expected["acc_matrix"]


def test_timed_out_job_is_requeued_and_completes(tmp_path):
    """Time limit 1 min, USR2 asked 10 s before it: slurmctld checks limits every 30 s and sends the signal at the
    first check at or after limit - delay - 30 s, so 20-50 s into the attempt. The first attempt waits after its
    second epoch (HoldFirstAttempt) until that signal comes, whatever this machine's speed, so it is requeued as
    timed out and the second attempt resumes and completes. (That a resumed job ends with the uninterrupted
    results is checked against a reference by the preemption test above.)"""
    proc = run_cli(["-m", "hydra/launcher=slurm", *RUN, "meta=1.35", "epochs_per_task=3", HOLD,
                    "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=10"], tmp_path / "sweep",
                   env=SLURM_ENV, check=True, timeout=400)
    (path,) = (tmp_path / "sweep").glob("multirun/*/*/results.json")
    res = read_results(path.parent)
    assert res["status"] == "completed" and res["resumes"] == [{"task": 0, "epoch": 2}], proc.stdout
    assert len(res["epochs"]) == 6 and len(res["acc_matrix"]) == 2
    assert "this job is timed-out" in _job_logs(tmp_path / "sweep")


def test_a_search_runs_its_trials_as_slurm_jobs(tmp_path):
    proc = run_cli(["-m", "+search=meta", "hydra/launcher=slurm", "hydra.sweeper.n_trials=3",
                    "hydra.sweeper.seeds=[100]", "hydra.sweeper.n_jobs=2", *RUN, "epochs_per_task=1"], tmp_path,
                   env=SLURM_ENV, check=True)
    (trials_file,) = tmp_path.glob("search/search_meta/*/trials.json")
    trials = json.loads(trials_file.read_text())
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3, proc.stderr
    assert trials[0]["params"] == {"meta": 0}  # the zero arm first, then log-uniform draws
    assert all(1 <= t["params"]["meta"] <= 300 for t in trials[1:])
    assert len({p.name.split("_")[0] for p in tmp_path.glob("search/search_meta/*/.submitit/*_*")}) == 2  # arrays


def test_a_gpu_request_on_a_cluster_without_gpus_is_one_error_line(tmp_path):
    proc = run_cli(["-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=1", *RUN], tmp_path,
                   env=SLURM_ENV, timeout=200)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "Invalid generic resource (gres) specification" in line and "hydra.launcher.gpus_per_node=0" in line


def test_a_real_error_is_not_requeued(tmp_path):
    proc = run_cli(["-m", "hydra/launcher=slurm", "net=bvit", "lr=-1", "epochs_per_task=1"], tmp_path,
                   env=SLURM_ENV, timeout=200)
    assert proc.returncode == 2 and "lr must be > 0" in proc.stderr
    (job,) = [p.name for p in tmp_path.glob("multirun/*/.submitit/*") if p.is_dir()]
    assert _restarts(job) == 0 and "Requeued" not in _job_logs(tmp_path)
