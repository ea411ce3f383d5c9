"""Entry point: `python run.py [overrides]` trains one experiment; `python run.py -m ...` sweeps.

Examples: `python run.py`, `python run.py -m net=bvit meta=0,0.5,1,1.35`, `python run.py -m +sweep=smoke`.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from metaplastic_vit.config import register
from metaplastic_vit.errors import UserError

register()
OmegaConf.register_new_resolver("run_dirname", lambda overrides: overrides or "default", replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one experiment in Hydra's output directory; returns ACC (for sweepers that optimise it)."""
    from metaplastic_vit.experiment import run_experiment

    try:
        results = run_experiment(cfg, HydraConfig.get().runtime.output_dir)
    except UserError as exc:
        logging.getLogger("run").debug("user error", exc_info=True)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return results["avg_acc"]


if __name__ == "__main__":
    main()
