"""The command-line contract, through the real entry point: exit codes, one-line errors, reruns, sweeps, kills."""

import contextlib
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY, read_results, run, tiny
from helpers import epochs_recorded, start_cli, wait_until


def test_a_run_prints_its_table_writes_its_results_and_is_not_retrained(cli):
    proc = cli(*tiny("logger.console.progress=lines"), check=True)
    (results,) = cli.out.glob("runs/*/results.json")
    res = read_results(results.parent)
    assert res["status"] == "completed" and res["format"] == 3
    assert "task 2/2 epoch 2" in proc.stdout  # one plain line per epoch when not on a terminal
    assert "tested without the task id (domain scenario)" in proc.stdout and "task-aware" in proc.stdout
    assert "validation ACC" in proc.stdout
    cli(*tiny("logger.console.progress=lines"), check=True)  # the same command again: resumes, nothing to do
    again = read_results(results.parent)
    assert again["epochs"] == res["epochs"] and again["resumes"] == [{"task": 2, "epoch": 0}]


@pytest.mark.parametrize("overrides, message", [
    (["net=foo"], "Could not find 'net/foo'; Available options in 'net': bnn, bnn_ln, bvit,"),
    (["+epoch_per_task=5"], "unknown config key 'epoch_per_task'; did you mean epochs_per_task?"),
])
def test_bad_input_is_one_error_line_and_exit_2(cli, overrides, message):
    proc = cli(*tiny(*overrides))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not list(cli.out.rglob("results.json"))


def test_headline_multirun(cli):
    """`python run.py -m net=bvit meta=0,0.5,1,1.35` with tiny overrides: four jobs, four results."""
    proc = cli("-m", "net=bvit", "meta=0,0.5,1,1.35", *TINY, check=True)
    results = sorted(cli.out.glob("multirun/*/*/results.json"))
    assert len(results) == 4, proc.stdout
    assert sorted(read_results(p.parent)["meta"] for p in results) == [0, 0.5, 1, 1.35]
    assert all(read_results(p.parent)["status"] == "completed" for p in results)
    names = {p.parent.name for p in results}  # job directories are named after their overrides
    assert all(any(f"meta={m}," in n for n in names) for m in ("0", "0.5", "1", "1.35"))


def test_nan_loss_fails_cleanly_with_exit_3(cli, tmp_path):
    run_dir = tmp_path / "run"
    proc = cli(*TINY, "lr=1e30", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 3 and "NaN or inf" in proc.stderr and "Traceback" not in proc.stderr
    res = read_results(run_dir)
    assert res["status"] == "failed" and "NaN or inf" in res["reason"]
    assert not (run_dir / "checkpoint.pt").exists()  # no epoch finished: nothing good to keep


def _run_and_kill(args, run_dir, after_records, delay):
    """Start run.py, SIGKILL it once metrics.csv has `after_records` rows (plus `delay` seconds)."""
    proc = start_cli([*args, f"hydra.run.dir={run_dir}"], run_dir.parent, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    with contextlib.suppress(AssertionError):  # a run that ends first is reported, not waited for
        wait_until(lambda: epochs_recorded(run_dir) >= after_records, f"epoch {after_records}", proc=proc,
                   interval=0.02)
    time.sleep(delay)
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return finished


def test_kill_minus_nine_then_same_command_resumes_to_identical_results(tmp_path):
    """SIGKILL right after an epoch's checkpoint and 30 ms into a later epoch; the same run again (here in this
    process, with the same single thread) ends with the uninterrupted run's results."""
    args = tiny("epochs_per_task=10", "net=bvit")  # 20 epochs: long enough to be killed mid-run
    expected = run(tmp_path / "reference", *args)
    for k, (after, delay) in enumerate([(1, 0.0), (8, 0.03)]):
        run_dir = tmp_path / f"killed{k}"
        assert not _run_and_kill(args, run_dir, after, delay), "the run ended before it could be killed"
        assert read_results(run_dir)["status"] == "running"  # a killed run never claims success
        resumed = run(run_dir, *args)
        assert resumed.status == "completed" and resumed.resumes, resumed.resumes
        assert resumed.epochs == expected.epochs and resumed.acc_matrix == expected.acc_matrix


def test_the_command_line_exits_after_its_exit_handlers_without_the_interpreters_teardown():
    """exit_now: exit handlers run, buffered output is written, the code is kept; the interpreter's own teardown
    (object finalizers) is skipped, which the __del__ below would reveal."""
    script = ("import atexit\n"
              "from metaplastic_vit.cli import exit_now\n"
              "class Finalized:\n"
              "    def __del__(self): print('finalized')\n"
              "kept = Finalized()\n"
              "atexit.register(print, 'exit handler ran')\n"
              "print('buffered', end=' ')\n"
              "exit_now(5)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout == "buffered exit handler ran\n"


def test_the_command_line_waits_for_a_running_thread_before_it_exits(monkeypatch):
    """With a non-daemon thread still running, exit_now leaves the exit to the interpreter (which joins it)."""
    import threading

    from metaplastic_vit import cli

    monkeypatch.setattr(cli.os, "_exit", lambda code: pytest.fail("exited without waiting for the thread"))
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        with pytest.raises(SystemExit) as exited:
            cli.exit_now(3)
        assert exited.value.code == 3
    finally:
        release.set()
        worker.join()
