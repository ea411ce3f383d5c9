"""Every fault ends cleanly: one error line, a non-zero exit, a record that says why, the last checkpoint kept."""

import errno
import os
import signal

import pytest
import torch
from conftest import config, read_results, run, tiny
from helpers import epochs_recorded, start_cli, wait_until

from metaplastic_vit import atomic, experiment
from metaplastic_vit.errors import DataError, EnvironmentFaultError, UserError
from metaplastic_vit.loop.hooks import RunObserver
from metaplastic_vit.runtime import InterruptedRunError, Interrupts, RunDirectory, RunDirectoryBusyError

# ------------------------------------------------------------------ one run per directory


def test_a_second_run_in_an_owned_directory_is_refused_at_once(tmp_path):
    run_dir = tmp_path / "run"
    with RunDirectory(run_dir):  # this test process owns it, as a running experiment would
        proc = start_cli([*tiny(), f"hydra.run.dir={run_dir}"], tmp_path)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {run_dir} is in use by pid {os.getpid()} on ") and "wait for that run" in line
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # Hydra and the run wrote nothing


def test_a_refused_resume_leaves_hydras_record_untouched(tmp_path):
    run_dir = tmp_path / "run"
    first = start_cli([*tiny("epochs_per_task=1"), f"hydra.run.dir={run_dir}"], tmp_path)
    assert first.wait(timeout=120) == 0
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert run_dir / ".hydra" / "config.yaml" in before and run_dir / ".hydra" / "overrides.yaml" in before
    refused = start_cli([*tiny("epochs_per_task=1", "lr=0.01"), f"hydra.run.dir={run_dir}"], tmp_path)
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2 and "holds a checkpoint of a different experiment" in err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_the_owner_is_named_and_the_lock_is_released_after_the_run(tmp_path):
    with RunDirectory(tmp_path), pytest.raises(RunDirectoryBusyError, match=f"in use by pid {os.getpid()}"):
        run(tmp_path, *tiny())
    assert run(tmp_path, *tiny()).status == "completed"  # free again once its owner is done
    assert run(tmp_path, *tiny()).resumes  # and the same run again resumes


def test_leftovers_of_killed_writes_are_removed_by_the_next_run(tmp_path):
    run(tmp_path, *tiny("epochs_per_task=1"))
    leftovers = [tmp_path / n for n in (".checkpoint.pt-x1y2.tmp", ".results.json-ab.tmp", ".metrics.csv-cd.tmp")]
    for p in leftovers:
        p.write_bytes(b"partial")
    run(tmp_path, *tiny("epochs_per_task=1"))
    assert not any(p.exists() for p in leftovers)


# ------------------------------------------------------------------ signals


class SendSignal(RunObserver):
    """Sends `signum` to this process after `after` epochs (a sink added through the config's logger dict)."""

    def __init__(self, run_dir, signum, after):
        self.signum, self.after, self.seen = signum, after, 0

    def epoch(self, epoch, record):
        self.seen += 1
        if self.seen == self.after:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_at_the_next_batch_and_the_run_resumes_exactly(tmp_path, signum):
    args = tiny("epochs_per_task=3")
    reference = run(tmp_path / "reference", *args)
    sender = f"+logger.signal={{_target_:test_faults.SendSignal,_partial_:true,signum:{int(signum)},after:2}}"
    with Interrupts() as interrupts, pytest.raises(InterruptedRunError) as info:
        experiment.run_experiment(config(*args, sender), tmp_path / "run", interrupts=interrupts)
    assert info.value.signum == signum
    stopped = read_results(tmp_path / "run")
    assert stopped["status"] == "interrupted" and signal.Signals(signum).name in stopped["reason"]
    assert "run the same command again to resume" in stopped["reason"] and len(stopped["epochs"]) == 2
    resumed = run(tmp_path / "run", *args)
    assert resumed.epochs == reference.epochs and resumed.resumes == [{"task": 0, "epoch": 2}]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_command_line_says_how_to_resume_after_a_signal(tmp_path, signum, code):
    run_dir = tmp_path / "run"
    proc = start_cli([*tiny("epochs_per_task=10"), f"hydra.run.dir={run_dir}"], tmp_path)
    wait_until(lambda: epochs_recorded(run_dir) >= 2, "the run's second epoch", proc=proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: interrupted by {signal.Signals(signum).name}: the last checkpoint is kept; run the "
                      "same command again to resume"] and "Traceback" not in err
    assert read_results(run_dir)["status"] == "interrupted" and (run_dir / "checkpoint.pt").exists()


# ------------------------------------------------------------------ the machine fails the run


def test_a_full_disk_fails_the_run_with_its_reason_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    saves = []
    real = atomic.save_torch

    def fill_up(path, obj):
        saves.append(path)
        if len(saves) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, obj)
    monkeypatch.setattr("metaplastic_vit.loop.checkpoint.save_torch", fill_up)
    with pytest.raises(EnvironmentFaultError, match="No space left on device.*at task 2 epoch 1 \\(the checkpoint "
                                                    "after task 1 epoch 2\\); free space"):
        run(tmp_path, *tiny())
    res = read_results(tmp_path)
    assert res["status"] == "failed" and "No space left on device" in res["reason"]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["history"]["next_task"] == 1


def test_a_read_only_output_directory_is_one_line(tmp_path):
    proc = start_cli(tiny(), "/sys/metaplastic-vit-outputs")  # not writable, even for root
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4
    (line,) = err.strip().splitlines()
    assert line.startswith("error: Operation not permitted: /sys/metaplastic-vit-outputs") and "writable" in line


def test_an_unreadable_data_root_is_named(tmp_path, monkeypatch):
    from fakes import write_fake_mnist

    from metaplastic_vit.data import sources

    write_fake_mnist(tmp_path / "data")

    def denied(info, root, cache_dir, download):  # what reading a folder without permission raises
        raise PermissionError(errno.EACCES, "Permission denied", str(root / "MNIST"))
    monkeypatch.setattr(sources, "_plan_or_fetch", denied)
    with pytest.raises(DataError, match=f"cannot read mnist under {tmp_path / 'data'} \\(Permission denied: "
                                        f"{tmp_path / 'data' / 'MNIST'}\\); make the files readable"):
        run(tmp_path / "run", *tiny("task_sequence=[mnist]", f"data.root={tmp_path / 'data'}", "arch.patch_size=7"))


def test_a_closed_stdout_does_not_stop_training(tmp_path):
    """`python run.py | head -1`: the pipe closes after one line; the run still completes, silently."""
    run_dir = tmp_path / "run"
    proc = start_cli([*tiny("logger.console.progress=lines"), f"hydra.run.dir={run_dir}"], tmp_path)
    proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert read_results(run_dir)["status"] == "completed"


# ------------------------------------------------------------------ bad data and bad files


def test_mnist_files_without_items_are_named(tmp_path):
    from fakes import write_fake_mnist

    write_fake_mnist(tmp_path / "data", n_train=0, n_test=5)
    with pytest.raises(DataError, match="task mnist: mnist under .* has no training samples"):
        run(tmp_path / "run", *tiny("task_sequence=[mnist]", f"data.root={tmp_path / 'data'}", "arch.patch_size=7"))


def test_a_checkpoint_without_a_fingerprint_is_refused(tmp_path):
    torch.save({"format": 3, "history": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(UserError, match="is not a checkpoint of this version's format; delete it or use another"):
        run(tmp_path, *tiny())
