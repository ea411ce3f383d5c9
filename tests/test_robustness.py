"""Faults lose nothing: corrupt data is named, another run's checkpoint is refused, parallel jobs share safely."""

import pytest
from conftest import read_results, run, tiny

from metaplastic_vit.errors import DataError, UserError


def test_corrupt_dataset_file_is_named(tmp_path):
    from fakes import write_fake_cifar10

    write_fake_cifar10(tmp_path / "data", n_train=20, n_test=10)
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DataError, match=f"cannot read {batch}: corrupt CIFAR pickle"):
        run(tmp_path / "run", *tiny("task_sequence=[cifar10]", f"data.root={tmp_path / 'data'}", "arch.patch_size=4"))


def test_other_experiments_checkpoint_is_not_resumed(tmp_path):
    run(tmp_path, *tiny())

    def files():  # everything but the lock, which names whoever holds the directory
        return {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*")
                if p.is_file() and p.name != ".lock"}

    before = files()
    assert {"results.json", "checkpoint.pt", "metrics.csv", "run.log"} <= {str(p) for p in before}
    with pytest.raises(UserError, match="holds a checkpoint of a different experiment.*refusing to resume"):
        run(tmp_path, *tiny("lr=0.01"))
    assert files() == before


def test_parallel_sweep_jobs_share_nothing_but_a_safe_cache(cli, tmp_path):
    """Four jobs at once through the local submitit launcher, all building the same dataset cache first."""
    from fakes import write_fake_mnist

    write_fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    proc = cli("-m", "hydra/launcher=local", "hydra.sweeper.max_batch_size=4", "meta=0,1,2,3",
               "task_sequence=[pmnist,pmnist]", f"data.root={tmp_path / 'data'}", "arch.patch_size=7",
               *tiny()[:1], *tiny()[2:], check=True)
    results = sorted(cli.out.glob("multirun/*/*/results.json"))
    assert len(results) == 4, proc.stdout + proc.stderr
    by_meta = {read_results(p.parent)["meta"]: p.parent for p in results}
    assert sorted(by_meta) == [0, 1, 2, 3]  # each job wrote its own directory, with its own config
    for meta, job_dir in by_meta.items():
        assert f"meta={meta}," in job_dir.name and read_results(job_dir)["status"] == "completed"
    assert len(list((tmp_path / "data" / ".cache").glob("mnist-*.pt"))) == 1
    assert not list((tmp_path / "data" / ".cache").glob("*.tmp"))
