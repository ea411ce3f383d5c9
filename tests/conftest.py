import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A tiny experiment on the embedded digits: seconds, not minutes.
TINY = ["epochs_per_task=2", "task_sequence=[pdigits,pdigits]", "arch.embed_dim=16", "arch.depth=1",
        "batch_size=200", "logger.plots=false", "threads=1"]


def run_cli(args, out_dir, env=None, timeout=300, check=False):
    """Run `python run.py ARGS` with outputs under `out_dir`; returns the CompletedProcess."""
    full_env = {**os.environ, "METAPLASTIC_OUTPUT": str(out_dir), "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0",
                **(env or {})}
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_results(run_dir):
    return json.loads((Path(run_dir) / "results.json").read_text())


@pytest.fixture
def cli(tmp_path):
    def call(*args, **kw):
        return run_cli(list(args), tmp_path / "out", **kw)
    call.out = tmp_path / "out"
    return call
