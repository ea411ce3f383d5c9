"""Entry point: `python run.py [overrides]` trains one experiment; `python run.py -m ...` sweeps.

Examples: `python run.py`, `python run.py -m net=bvit meta=0,0.5,1,1.35`, `python run.py -m +sweep=smoke`.
Bad input ends with one `error: ...` line on stderr and exit code 2, a failed training (NaN loss) with
exit code 3 (HYDRA_FULL_ERROR=1 shows tracebacks).
"""

from __future__ import annotations

import logging
import os
import sys

# OpenMP's default active spin-wait made the tiny default run 7x slower with 2 threads than with 1 on a
# 2-core VM (280 s vs 39 s; a forward pass 394 ms vs 8 ms); passive waiting removes that (9 ms). It must be
# set before torch loads its OpenMP runtime; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from metaplastic_vit.config import register
from metaplastic_vit.errors import TrainingFailedError, UserError, one_line

register()
log = logging.getLogger("run")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one experiment in Hydra's output directory; returns the validation ACC (what a sweeper may
    optimise: never the test ACC)."""
    from metaplastic_vit.experiment import run_experiment

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


if __name__ == "__main__":
    cli()
