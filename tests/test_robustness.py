"""Faults lose nothing: corrupt data is named, another run's checkpoint is refused, parallel jobs share safely."""

import pytest
from conftest import run, tiny

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
