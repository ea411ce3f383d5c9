"""The command line: `metaplastic-vit [overrides]` (or `python run.py ...`) trains one experiment, `-m` sweeps.

Examples: `python run.py`, `python run.py -m net=bvit meta=0,0.5,1,1.35`, `python run.py -m +sweep=smoke`.
Every failure ends with one `error: ...` line on stderr (HYDRA_FULL_ERROR=1 shows tracebacks) and an exit code:
2 bad input, 3 training failed (NaN loss), 4 the machine failed the run (disk, permissions), 128 + n stopped by
signal n (SIGINT, SIGTERM, SIGHUP stop after the current batch; the last checkpoint is kept).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from .errors import EnvironmentFaultError, TrainingFailedError, UserError, one_line
from .runtime import STOP_SIGNALS, InterruptedRunError, Interrupts

log = logging.getLogger("run")


# conf/ of the repository (through the package's link to it) or of the installed wheel
CONFIG_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one experiment in Hydra's output directory; returns the validation ACC (what a sweeper may
    optimise: never the test ACC)."""
    from .experiment import run_experiment

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    # submitit owns SIGTERM in Slurm jobs (it must outlive the SIGTERM that precedes a requeue); everywhere else,
    # local launcher jobs included (their sweep stops them with it), it stops the run cleanly
    signals = (signal.SIGINT, signal.SIGHUP) if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" else STOP_SIGNALS
    try:
        with Interrupts(signals) as interrupts:
            record = run_experiment(
                cfg, hydra_cfg.runtime.output_dir, sweep=f"{cfg.sweep_name}-{Path(hydra_cfg.sweep.dir).name}"
                if multirun else None, launcher_cpus=hydra_cfg.launcher.get("cpus_per_task") if multirun else None,
                hydra_files={"config.yaml": cfg, "hydra.yaml": {"hydra": hydra_cfg},
                             "overrides.yaml": list(hydra_cfg.overrides.task)}, interrupts=interrupts)
    except (UserError, TrainingFailedError, EnvironmentFaultError, InterruptedRunError, OSError) as exc:
        if multirun:  # the sweep goes on; say which job failed now
            log.error("error: %s", message(exc))
            raise
        print(f"error: {message(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(exit_code(exc)) from None
    return record.val_avg_acc


def message(exc: BaseException) -> str:
    """The one line a user sees for an error: the cause and what to do."""
    if isinstance(exc, InterruptedRunError):
        return f"interrupted by {exc}: the last checkpoint is kept; run the same command again to resume"
    if isinstance(exc, OSError) and not isinstance(exc, EnvironmentFaultError):
        where = f": {exc.filename}" if exc.filename else ""
        return (f"{exc.strerror or exc}{where}; make the output and data directories readable and writable "
                "(paths.output_dir, paths.data_dir) and free space if the disk is full")
    return one_line(exc)


def exit_code(exc: BaseException) -> int:
    """2 bad input, 3 training failed (NaN), 4 the machine failed the run, 128 + n stopped by signal n."""
    if isinstance(exc, InterruptedRunError):
        return 128 + exc.signum
    if isinstance(exc, UserError):
        return 2
    if isinstance(exc, TrainingFailedError):
        return 3
    return 4


def cli() -> NoReturn:
    """Run `main` (see `run_main`) and exit with its code, without the interpreter's teardown (`exit_now`).

    Before anything loads torch: OpenMP's default active spin-wait made 2 threads far slower than 1 on small
    models (benchmarks/RESULTS.md), so waiting is passive unless OMP_WAIT_POLICY says otherwise (sweep jobs
    inherit it); then the config's schemas are registered."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .config import register

    register()
    try:
        run_main()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            exit_now(exc.code or 0)
        raise
    exit_now(0)


def exit_now(code: int) -> NoReturn:
    """Exit once exit handlers have run and the streams are flushed, skipping the interpreter's teardown:
    freeing the modules of torch and its companions costs seconds of CPU per process (benchmarks/RESULTS.md).
    Where a non-daemon thread still runs, exit the normal way, which waits for it."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # logging's flush, W&B's finish, temporary directories, ...
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`run.py | head`) loses nothing of ours
            stream.flush()
    os._exit(code)


def run_main() -> None:
    """Run `main`, turning bad input (ours or Hydra's) into one line on stderr and exit code 2."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's multi-line report
    try:
        with Interrupts(deferred=False):  # a sweep stops at once (its jobs keep their checkpoints); a run's own
            main()                         # deferred handling takes over while it trains
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        sys.exit(2)
    except (UserError, TrainingFailedError, EnvironmentFaultError, InterruptedRunError, OSError) as exc:
        print(f"error: {message(exc)}", file=sys.stderr, flush=True)  # e.g. a sweep job failed: its results say why
        sys.exit(exit_code(exc))
    except Exception as exc:
        from submitit.core.utils import FailedJobError  # sbatch refused the jobs

        if not isinstance(exc, FailedJobError):
            raise
        print(f"error: {slurm_refusal(str(exc))}", file=sys.stderr, flush=True)
        sys.exit(2)


def slurm_refusal(stderr: str) -> str:
    """sbatch's refusal as one line with what to set."""
    reason = next((ln.strip() for ln in stderr.splitlines() if "error" in ln.lower()), stderr.strip())
    if "gres" in reason.lower():
        return (f"Slurm refused the jobs ({reason}): this cluster or partition has no GPUs to give; set "
                "hydra.launcher.gpus_per_node=0 (or METAPLASTIC_SLURM_GPUS=0) for CPU jobs, or choose a GPU "
                "partition with hydra.launcher.partition=...")
    return (f"Slurm refused the jobs ({reason}); check hydra.launcher.partition, account, qos, gpus_per_node, "
            "cpus_per_task, mem_gb and timeout_min (or the METAPLASTIC_SLURM_* variables)")
