import json
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import ROOT, run_cli
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from metaplastic_vit.config import register

CONF = ROOT / "conf"
# The debug preset (conf/preset/debug.yaml), a tiny experiment on the embedded digits, on one thread.
TINY = ["+preset=debug", "threads=1"]

register()


def config(*overrides):
    """The composed config, as `python run.py OVERRIDES` would see it (in this process)."""
    with composer() as compose_with:
        return compose_with(*overrides)


@contextmanager
def composer():
    """`config` for many compositions under one Hydra initialisation (a third faster each)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda *overrides, **kw: compose("config", overrides=list(overrides), **kw)


def run(run_dir, *overrides):
    """Run one experiment in this process; returns its RunRecord."""
    from metaplastic_vit.experiment import run_experiment

    return run_experiment(config(*overrides), run_dir)


def tiny(*overrides):
    """TINY with `overrides` replacing the keys they name."""
    keys = {o.lstrip("+").split("=")[0] for o in overrides}
    return [*(t for t in TINY if t.split("=")[0] not in keys), *overrides]


def read_results(run_dir):
    return json.loads((Path(run_dir) / "results.json").read_text())


@pytest.fixture
def cli(tmp_path):
    def call(*args, **kw):
        return run_cli(list(args), tmp_path / "out", **kw)
    call.out = tmp_path / "out"
    return call


def pytest_collection_modifyitems(config, items):
    """Slurm tests first: they mostly wait on the scheduler, so started early they overlap the CPU-bound rest."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)
