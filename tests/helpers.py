"""What several tests need: running the command line (in the foreground or the background) and waiting on a run."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from metaplastic_vit.loop.hooks import RunObserver
from metaplastic_vit.runtime import InterruptedRunError

ROOT = Path(__file__).resolve().parents[1]


def _env(out_dir, env=None):
    return {**os.environ, "METAPLASTIC_OUTPUT": str(out_dir), "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0",
            **(env or {})}


def run_cli(args, out_dir, env=None, timeout=300, check=False):
    """Run `python run.py ARGS` with outputs under `out_dir`; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=_env(out_dir, env),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_cli(args, out_dir, env=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
    """Start `python run.py ARGS` in the background with outputs under `out_dir`; returns the Popen."""
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=_env(out_dir, env),
                            text=True, stdout=stdout, stderr=stderr)


def wait_until(condition: Callable[[], object], what: str, timeout: float = 120, proc=None, interval=0.05):
    """Poll `condition()` until it is true and return its value; an AssertionError naming `what` when `timeout`
    seconds pass (or `proc` ends) first. Timeouts here bound a hang, never a measured duration."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        if value := condition():
            return value
        time.sleep(interval)
    if value := condition():  # the process may have ended just after reaching it
        return value
    raise AssertionError(f"{what} did not happen within {timeout:g} s" + (
        f" (the process ended with {proc.returncode})" if proc is not None and proc.poll() is not None else ""))


def epochs_recorded(run_dir) -> int:
    """How many epochs the run in `run_dir` has recorded (rows of its metrics.csv)."""
    metrics = Path(run_dir) / "metrics.csv"
    return max(len(metrics.read_text().splitlines()) - 1, 0) if metrics.exists() else 0


class HoldFirstAttempt(RunObserver):
    """A sink for the launcher tests (`+logger.hold={_target_:helpers.HoldFirstAttempt,_partial_:true}`, with the
    tests folder on PYTHONPATH): the first attempt of a run stops at its `after`-th recorded epoch and waits there
    until a signal ends the process (a Slurm time limit, a preemption, an interrupted sweep); a resumed attempt
    runs through. With `once_completed`, only runs that find that many completed runs beside them in the sweep
    directory are held. So a job is still running when the signal comes, however fast the machine."""

    def __init__(self, run_dir, after: int = 1, once_completed: int = 0) -> None:
        self.after, self.once_completed = after, once_completed
        self.sweep_dir = Path(run_dir).parent
        self.resumed = False

    def start(self, record, resumed) -> None:  # noqa: D102
        self.resumed = resumed

    def _completed_beside(self) -> int:
        return sum('"status": "completed"' in p.read_text() for p in self.sweep_dir.glob("*/results.json"))

    def epoch(self, epoch, record) -> None:  # noqa: D102
        if (not self.resumed and len(record.epochs) == self.after
                and self._completed_beside() >= self.once_completed):
            def stop(signum, frame):  # as the run would stop at its next batch
                raise InterruptedRunError(signum)
            previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                while True:  # a signal ends the run from here (submitit's requeue after USR2, or `stop`)
                    time.sleep(0.1)
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)


class Stop(Exception):
    """Stops a run in a test, as a fault would."""


@contextmanager
def stopped_after_epochs(monkeypatch, epochs: int) -> Iterator[None]:
    """The run inside stops with `Stop` once `epochs` epochs are recorded (and checkpointed); afterwards runs go on
    undisturbed again."""
    from metaplastic_vit.loop.trainer import ContinualTrainer

    original = ContinualTrainer._epoch

    def stop(self, task, epoch):
        original(self, task, epoch)
        if len(self.history.epochs) == epochs:
            raise Stop
    monkeypatch.setattr(ContinualTrainer, "_epoch", stop)
    try:
        with pytest.raises(Stop):
            yield
    finally:
        monkeypatch.setattr(ContinualTrainer, "_epoch", original)
