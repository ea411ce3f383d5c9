"""Sweeps through the submitit launcher on a real Slurm cluster (scripts/slurm-local.sh up).

They skip when no cluster is reachable, except in CI (CI set), where a missing Slurm is a failure.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, read_results, run, run_cli

pytestmark = pytest.mark.slurm

# A node without GPUs and little memory: the local test cluster.
SLURM_ENV = {"METAPLASTIC_SLURM_GPUS": "0", "METAPLASTIC_SLURM_CPUS": "1", "METAPLASTIC_SLURM_MEM_GB": "1",
             "METAPLASTIC_SLURM_TIMEOUT_MIN": "10"}
# a tiny bvit on two permuted digits tasks; epochs_per_task sets how long a job trains
RUN = ["net=bvit", "task_sequence=[pdigits,pdigits]", "arch.embed_dim=16", "arch.depth=1",
       "batch_size=200", "logger.files.plots=false"]


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
    start = time.monotonic()
    proc = run_cli(["-m", "hydra/launcher=slurm", *RUN, "meta=0,1.35", "epochs_per_task=2"], tmp_path,
                   env=SLURM_ENV, check=True)
    elapsed = time.monotonic() - start
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
    print(f"two-job Slurm sweep: {elapsed:.1f} s")


def _running_job(out: Path, timeout: float = 120) -> str:
    """Wait for the sweep's (single) job to have finished two epochs; return its Slurm id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = list(out.glob("multirun/*/*/metrics.csv"))
        dirs = [p for p in out.glob("multirun/*/.submitit/*") if p.is_dir()]
        if metrics and dirs and len(metrics[0].read_text().splitlines()) >= 3:
            return dirs[0].name
        time.sleep(0.1)
    raise AssertionError("the Slurm job did not start training in time")


def _reference(tmp_path, extra=()):
    """The same experiment uninterrupted, in this process on one thread (as a Slurm job with 1 CPU runs it)."""
    return run(tmp_path / "reference", *RUN, *extra, "threads=1").to_dict()


def test_preempted_job_requeues_and_resumes_to_identical_results(tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, **SLURM_ENV, "METAPLASTIC_OUTPUT": str(out)}
    start = time.monotonic()
    extra = ["meta=1.35", "epochs_per_task=15"]  # seconds of training: time to be signalled mid-run
    sweep = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=slurm", *RUN, *extra],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = _running_job(out)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what a preempting scheduler sends
    log, _ = sweep.communicate(timeout=300)
    elapsed = time.monotonic() - start
    assert sweep.returncode == 0, log
    (path,) = out.glob("multirun/*/*/results.json")
    res = read_results(path.parent)
    assert res["status"] == "completed" and len(res["resumes"]) == 1
    logs = _job_logs(out)
    assert "Requeued job" in logs and "resuming from" in logs and "at task" in logs
    expected = _reference(tmp_path, extra)
    assert res["epochs"] == expected["epochs"] and res["acc_matrix"] == expected["acc_matrix"]
    print(f"preempt-resume cycle: {elapsed:.1f} s, resumed at {res['resumes']}")


def _epochs_for(tmp_path, seconds: float) -> int:
    """Epochs per task for which RUN trains about `seconds` on this machine (measured here, on one thread)."""
    probe = run(tmp_path / "probe", *RUN, "epochs_per_task=2", "threads=1").to_dict()
    per_epoch = (probe["train_time_s"] + probe["eval_time_s"]) / 4  # two tasks x two epochs
    return max(40, math.ceil(seconds / (2 * per_epoch)))


def test_timed_out_job_is_requeued_and_completes(tmp_path):
    # Time limit 1 min, USR2 asked 10 s before it. slurmctld checks limits every 30 s and sends the signal at
    # the first check at or after limit - delay - 30 s (measured here: asked @15 -> sent 30 s or 16 s into the
    # job, @20 -> 30 s, @30 -> 26 s), so each attempt is signalled 20-50 s after it starts and killed at the
    # first check after 60 s, >= 10 s later. (With @30 the signal could come at 0 s, before submitit had
    # installed its handler, and the job was killed instead of requeued.) The job trains ~70 s (sized on
    # this machine's speed), so the first attempt is still running at its signal even if it runs faster than
    # the probe, and it takes a few attempts. (That a resumed job ends with the uninterrupted results is
    # checked against a reference by the preemption test above.)
    epochs = _epochs_for(tmp_path, 70)
    proc = run_cli(["-m", "hydra/launcher=slurm", *RUN, "meta=1.35", f"epochs_per_task={epochs}",
                    "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=10"], tmp_path / "sweep",
                   env=SLURM_ENV, check=True, timeout=500)
    (path,) = (tmp_path / "sweep").glob("multirun/*/*/results.json")
    res = read_results(path.parent)
    assert res["status"] == "completed" and res["resumes"], proc.stdout
    assert len(res["epochs"]) == 2 * epochs and len(res["acc_matrix"]) == 2
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
    assert "Requeued" not in _job_logs(tmp_path)
