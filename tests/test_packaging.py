"""A built wheel is self-contained: its `metaplastic-vit` command runs an experiment from any directory."""

import json
import os
import subprocess
import sys
import zipfile

from conftest import ROOT, TINY


def test_the_wheel_carries_its_config_and_runs_from_anywhere(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("metaplastic_vit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"metaplastic_vit/conf/config.yaml", "metaplastic_vit/conf/net/bvit_full_ln.yaml",
            "metaplastic_vit/conf/sweep/seed_project.yaml"} <= names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_SILENT": "true"}
    env.pop("METAPLASTIC_OUTPUT", None)
    where = subprocess.run([sys.executable, "-c", "import metaplastic_vit; print(metaplastic_vit.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site))  # the installed copy, not the repository's
    proc = subprocess.run([str(site / "bin" / "metaplastic-vit"), *TINY], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (results,) = elsewhere.glob("outputs/runs/*/results.json")
    assert json.loads(results.read_text())["status"] == "completed"
