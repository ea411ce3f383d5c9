"""scripts/gpu-check.sh: every step of the GPU check resolves on a CPU machine (its dry run), and a real run
without a GPU stops at once with one error line."""

import subprocess

import pytest
import torch
from helpers import ROOT

SCRIPT = ROOT / "scripts" / "gpu-check.sh"
STEPS = ["gpu-tests", "bench-gpu", "smoke-vit", "smoke-bvit", "smoke-hybrid", "pack"]


def test_the_dry_run_resolves_every_step(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (tmp_path / "summary.md").read_text()
    rows = [line.split(" | ") for line in summary.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[0].strip("| ") for r in rows] == STEPS  # every step listed, none skipped
    assert all(r[1].startswith("resolved (would run: ") for r in rows), summary
    assert "All steps resolved." in summary and "dry run: nothing was run" in summary
    assert (tmp_path / "data" / "tiny-imagenet-200" / "wnids.txt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_a_real_run_is_one_error_line(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: no CUDA GPU here")
    assert len(proc.stderr.strip().splitlines()) == 1
