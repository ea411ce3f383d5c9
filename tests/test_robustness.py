"""Bad input fails fast with one line; faults and kills lose nothing (run through the real entry point)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY, read_results, run_cli

BAD_INPUTS = [
    (["net=foo"], "Could not find 'net/foo'; Available options in 'net': bnn, bvit, bvit_attn, bvit_full, "
                  "bvit_full_ln, bvit_ln, dnn, hybrid, vit"),
    (["task_sequence=[pfoo]"], "unknown task token 'pfoo'; use p<dataset>"),
    (["task_sequence=[digits-3]"], "10 classes cannot be split into 3 equal tasks; N must be one of [1, 2, 5, 10]"),
    (["task_sequence=[digits-0]"], "cannot be split into 0 equal tasks"),
    (["meta=-1"], "meta must be a number >= 0 or a list of them, got -1"),
    (["meta=abc"], "meta must be a number >= 0 or a list of them, got 'abc'"),
    (["meta=[1,2]"], "meta has 2 values but the model has 8 metaplastic weight tensors"),
    (["lr=0"], "lr must be > 0, got 0.0"),
    (["lr=abc"], "Value 'abc' of type 'str' could not be converted to Float"),
    (["epochs_per_task=0"], "epochs_per_task must be >= 1, got 0"),
    (["batch_size=0"], "batch_size must be >= 1, got 0"),
    (["gamma=0"], "gamma must be > 0, got 0.0"),
    (["arch.patch_size=3"], "patch_size 3 does not divide img_size 8; choose a patch size among [1, 2, 4, 8]"),
    (["net.model=cnn"], "unknown net.model 'cnn'; choose one of vit, bvit, hybrid, bnn, dnn"),
    (["bogus=1"], "Key 'bogus' not in 'Config'"),
    (["data.scenario=mixed"], "unknown data.scenario 'mixed'; choose one of auto, domain, class, task"),
    (["task_sequence=[mnist]", "data.root=/nonexistent"],
     "mnist not found: /nonexistent/MNIST/raw/train-images-idx3-ubyte is missing; set data.download=true"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["device=cuda"], "device=cuda but no CUDA GPU is available here; use device=cpu or device=auto"))


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line(cli, overrides, message):
    start = time.monotonic()
    keys = {o.split("=")[0] for o in overrides}
    proc = cli(*overrides, *(t for t in TINY if t.split("=")[0] not in keys))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list(cli.out.rglob("results.json"))  # nothing that could claim success
    assert time.monotonic() - start < 60


def test_corrupt_dataset_file_is_named(cli, tmp_path):
    from fakes import write_fake_cifar10

    write_fake_cifar10(tmp_path / "data", n_train=20, n_test=10)
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    proc = cli("task_sequence=[cifar10]", f"data.root={tmp_path / 'data'}", "arch.patch_size=4", *TINY[:1], *TINY[2:])
    assert proc.returncode == 2 and str(batch) in proc.stderr, proc.stderr


def test_other_experiments_checkpoint_is_not_resumed(cli, tmp_path):
    run_dir = tmp_path / "run"
    cli(*TINY, f"hydra.run.dir={run_dir}", check=True)
    before = (run_dir / "results.json").read_bytes(), (run_dir / "checkpoint.pt").read_bytes()
    proc = cli(*TINY, "lr=0.01", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    assert "holds a checkpoint of a different experiment" in proc.stderr and "refusing to resume" in proc.stderr
    assert ((run_dir / "results.json").read_bytes(), (run_dir / "checkpoint.pt").read_bytes()) == before


def test_nan_loss_fails_cleanly_and_keeps_last_good_checkpoint(cli, tmp_path):
    run_dir = tmp_path / "run"
    proc = cli(*TINY, "lr=1e30", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 3 and "NaN or inf" in proc.stderr and "Traceback" not in proc.stderr
    res = read_results(run_dir)
    assert res["status"] == "failed" and "NaN or inf" in res["reason"]
    assert not (run_dir / "checkpoint.pt").exists()  # no epoch finished: nothing good to keep


def _run_and_kill(args, run_dir, after_records, delay):
    """Start run.py, SIGKILL it once metrics.csv has `after_records` rows (plus `delay` seconds)."""
    env = {**os.environ, "METAPLASTIC_OUTPUT": str(run_dir.parent)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_dir / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) - 1 >= after_records:
            break
        time.sleep(0.05)
    time.sleep(delay)
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return finished


def test_kill_minus_nine_then_same_command_resumes_to_identical_results(tmp_path):
    args = ["epochs_per_task=10", *TINY[1:]]  # 20 epochs: time to be killed mid-run
    reference = tmp_path / "reference"
    run_cli([*args, f"hydra.run.dir={reference}"], tmp_path, check=True)
    expected = read_results(reference)
    for k, (after, delay) in enumerate([(1, 0.0), (8, 0.03)]):
        run_dir = tmp_path / f"killed{k}"
        assert not _run_and_kill(args, run_dir, after, delay), "the run ended before it could be killed"
        partial = read_results(run_dir)
        assert partial["status"] == "running"  # a killed run never claims success
        run_cli([*args, f"hydra.run.dir={run_dir}"], tmp_path, check=True)
        resumed = read_results(run_dir)
        assert resumed["status"] == "completed" and resumed["resumes"], resumed["resumes"]
        assert resumed["epochs"] == expected["epochs"]
        assert resumed["acc_matrix"] == expected["acc_matrix"]
        assert json.dumps(resumed["histograms"]) == json.dumps(expected["histograms"])


def test_parallel_sweep_jobs_share_nothing_but_a_safe_cache(cli, tmp_path):
    """Four jobs at once through the local submitit launcher, all building the same dataset cache first."""
    from fakes import write_fake_mnist

    write_fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    proc = cli("-m", "hydra/launcher=local", "hydra.sweeper.max_batch_size=4", "meta=0,1,2,3",
               "task_sequence=[pmnist,pmnist]", f"data.root={tmp_path / 'data'}", "arch.patch_size=7",
               *TINY[:1], *TINY[2:], check=True)
    results = sorted(cli.out.glob("multirun/*/*/results.json"))
    assert len(results) == 4, proc.stdout + proc.stderr
    by_meta = {read_results(p.parent)["meta"]: p.parent for p in results}
    assert sorted(by_meta) == [0, 1, 2, 3]  # each job wrote its own directory, with its own config
    for meta, job_dir in by_meta.items():
        assert f"meta={meta}," in job_dir.name and read_results(job_dir)["status"] == "completed"
    assert len(list((tmp_path / "data" / ".cache").glob("mnist-*.pt"))) == 1
    assert not list((tmp_path / "data" / ".cache").glob("*.tmp"))
