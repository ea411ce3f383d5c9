"""Hydra's own launcher test suite, run against the parallel local launcher (hydra/launcher=local)."""

import pytest
from hydra.test_utils.launcher_common_tests import LauncherTestSuite
from hydra.version import VersionBase
from packaging.version import Version


@pytest.fixture(autouse=True)
def hydras_compatibility_version_base():
    """The suite is written for Hydra's compatibility defaults (version base 1.1: jobs run in their output
    directory); tests in the same process may have set 1.3, so each of its tests sets 1.1 and puts it back."""
    instance = VersionBase.instance()
    saved = instance.getbase()
    instance.setbase(Version("1.1"))
    yield
    instance.version_base = saved


@pytest.mark.parametrize("launcher_name, overrides", [("local", ["hydra.launcher.poll_seconds=0.05"])])
class TestParallelLocalLauncher(LauncherTestSuite):
    """Every test of Hydra's LauncherTestSuite: sweeps of one and two jobs, overrides, custom resolvers, ..."""
