"""The command line: `metaplastic-vit [overrides]` (or `python run.py ...`) trains one experiment, `-m` sweeps.

Examples: `python run.py`, `python run.py -m net=bvit meta=0,0.5,1,1.35`, `python run.py -m +sweep=smoke`.
Bad input ends with one `error: ...` line on stderr and exit code 2, a failed training (NaN loss) with
exit code 3 (HYDRA_FULL_ERROR=1 shows tracebacks).
"""

from __future__ import annotations

import logging
import os
import sys

# OpenMP's default active spin-wait made 2 threads far slower than 1 on small models (benchmarks/RESULTS.md);
# passive waiting must be set before torch loads its OpenMP runtime. An explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from .config import register  # noqa: E402
from .errors import TrainingFailedError, UserError, one_line  # noqa: E402

register()
log = logging.getLogger("run")


# conf/ of the repository (through the package's link to it) or of the installed wheel
CONFIG_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one experiment in Hydra's output directory; returns the validation ACC (what a sweeper may
    optimise: never the test ACC)."""
    from .experiment import run_experiment

    hydra_cfg = HydraConfig.get()
    local = "LocalLauncher" in str(hydra_cfg.launcher.get("_target_", ""))
    try:
        sweep_id = f"{cfg.sweep_name}-{Path(hydra_cfg.sweep.dir).name}" if hydra_cfg.mode == RunMode.MULTIRUN else None
        record = run_experiment(cfg, hydra_cfg.runtime.output_dir, sweep=sweep_id,
                                launcher_cpus=hydra_cfg.launcher.get("cpus_per_task") if local else None)
    except (UserError, TrainingFailedError) as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:  # the sweep goes on; say which job failed now
            log.error("error: %s", exc)
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2 if isinstance(exc, UserError) else 3) from None
    return record.val_avg_acc


def cli() -> None:
    """Run `main`, turning bad input (ours or Hydra's) into one line on stderr and exit code 2."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's multi-line report
    try:
        main()
    except (UserError, HydraException, OmegaConfBaseException) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        sys.exit(2)
    except TrainingFailedError as exc:  # a sweep job failed; its results.json says why
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(3)
