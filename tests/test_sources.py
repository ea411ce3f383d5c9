"""Dataset readers: official layouts (from tiny fakes), caching, corruption, missing data, concurrency."""

from __future__ import annotations

import gzip
import hashlib
import logging
import multiprocessing
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import (
    write_fake_cifar10,
    write_fake_cifar100,
    write_fake_mnist,
    write_fake_tinyimagenet,
)
from PIL import Image

from metaplastic_vit.data import sources
from metaplastic_vit.data.sources import DATASETS, ImageData, load_dataset
from metaplastic_vit.errors import DataError, UserError

WRITERS = {
    "mnist": lambda root: write_fake_mnist(root, "MNIST"),
    "fmnist": lambda root: write_fake_mnist(root, "FashionMNIST", gz=True),
    "cifar10": write_fake_cifar10,
    "cifar100": write_fake_cifar100,
    "tinyimagenet": write_fake_tinyimagenet,
}
DECODERS = {
    "mnist": "_read_idx",
    "fmnist": "_read_idx",
    "cifar10": "_read_pickle",
    "cifar100": "_read_pickle",
    "tinyimagenet": "_decode_jpeg",
}


@pytest.fixture(autouse=True)
def _fresh_memory(monkeypatch):
    monkeypatch.setattr(sources, "_MEMORY", {})


def forbid_decoding(monkeypatch, name: str) -> None:
    def fail(*_args, **_kwargs):
        raise AssertionError("decoded although a valid cache exists")

    monkeypatch.setattr(sources, DECODERS[name], fail)


def assert_matches(data: ImageData, fake, name: str) -> None:
    assert data.name == name
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        np.testing.assert_array_equal(x.numpy(), getattr(fake, f"{split}_x"))
        np.testing.assert_array_equal(y.numpy(), getattr(fake, f"{split}_y"))
    assert data.classes == fake.classes


def cache_files(cache_dir: Path, name: str) -> list[Path]:
    return sorted(cache_dir.glob(f"{name}-*.pt"))


# ------------------------------------------------------------ reading layouts


def test_digits_fixed_stratified_split(tmp_path):
    from sklearn.datasets import load_digits

    data = load_dataset("digits", tmp_path / "unused")
    assert data.train_x.shape == (1438, 1, 8, 8) and data.test_x.shape == (359, 1, 8, 8)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert int(data.train_x.max()) == 255 and int(data.train_x.min()) == 0
    assert data.classes == tuple(str(d) for d in range(10))
    totals = np.bincount(load_digits().target, minlength=10)
    test_counts = np.bincount(data.test_y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * totals) < 1)  # stratified
    every = np.concatenate([data.train_x.flatten(1).numpy(), data.test_x.flatten(1).numpy()])
    reference = np.rint(load_digits().data * (255 / 16)).astype(np.uint8)
    assert sorted(map(bytes, every)) == sorted(map(bytes, reference))  # scikit-learn's images, each once
    assert load_dataset("digits", tmp_path / "elsewhere") is data  # fixed split, no root needed
    assert not (tmp_path / "unused").exists()  # nothing cached on disk


@pytest.mark.parametrize("kind,name", [("MNIST", "mnist"), ("FashionMNIST", "fmnist")])
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_plain_and_gz(tmp_path, kind, name, gz):
    fake = write_fake_mnist(tmp_path, kind, n_train=25, n_test=12, gz=gz, seed=3)
    data = load_dataset(name, tmp_path)
    assert data.train_x.shape == (25, 1, 28, 28) and data.test_x.shape == (12, 1, 28, 28)
    assert set(data.train_y.tolist()) == set(range(10))
    assert_matches(data, fake, name)


def test_mnist_prefers_plain_over_gz(tmp_path):
    fake = write_fake_mnist(tmp_path, n_train=12, n_test=10, seed=1)
    write_fake_mnist(tmp_path, n_train=12, n_test=10, gz=True, seed=2)  # stale .gz next to the plain files
    assert_matches(load_dataset("mnist", tmp_path), fake, "mnist")


def test_cifar10(tmp_path):
    fake = write_fake_cifar10(tmp_path, n_train=23, n_test=11)
    data = load_dataset("cifar10", tmp_path)
    assert data.train_x.shape == (23, 3, 32, 32) and data.test_x.shape == (11, 3, 32, 32)
    assert data.classes[0] == "airplane" and len(data.classes) == 10
    assert_matches(data, fake, "cifar10")


def test_cifar100(tmp_path):
    fake = write_fake_cifar100(tmp_path)
    data = load_dataset("cifar100", tmp_path)
    assert data.train_x.shape == (200, 3, 32, 32) and data.test_x.shape == (100, 3, 32, 32)
    assert set(data.train_y.tolist()) == set(range(100)) and len(data.classes) == 100
    assert_matches(data, fake, "cifar100")


def test_tinyimagenet_official_val_split_and_sorted_wnids(tmp_path):
    fake = write_fake_tinyimagenet(tmp_path, n_classes=4, n_train_per_class=3, n_val_per_class=2)
    data = load_dataset("tinyimagenet", tmp_path)
    assert data.train_x.shape == (12, 3, 64, 64) and data.test_x.shape == (8, 3, 64, 64)
    assert_matches(data, fake, "tinyimagenet")
    listed = fake.files["wnids"].read_text().split()
    assert listed != sorted(listed)  # the file lists them unsorted; labels follow sorted wnids
    assert data.classes == tuple(f"thing {k}" for k in range(4))
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    gray = data.train_x[0]  # the grayscale JPEG, first file of the first class
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    with Image.open(fake.files["gray"]) as image:
        assert image.mode == "L"
    # test = the official val split, labelled by val_annotations.txt, in file-name order
    labels = dict(line.split("\t")[:2] for line in fake.files["val_annotations"].read_text().splitlines())
    order = sorted(labels)
    wnids = sorted(listed)
    assert data.test_y.tolist() == [wnids.index(labels[f]) for f in order]


def test_tinyimagenet_without_words_uses_wnids(tmp_path):
    fake = write_fake_tinyimagenet(tmp_path, n_classes=2, n_train_per_class=1, n_val_per_class=1)
    fake.files["words"].unlink()
    wnids = tuple(sorted(fake.files["wnids"].read_text().split()))
    assert load_dataset("tinyimagenet", tmp_path).classes == wnids


# ------------------------------------------------------------ caching


def test_memory_cache_returns_same_object(tmp_path):
    write_fake_cifar10(tmp_path)
    first = load_dataset("cifar10", tmp_path)
    assert load_dataset("cifar10", str(tmp_path)) is first


@pytest.mark.parametrize("name", ["mnist", "fmnist", "cifar10", "cifar100", "tinyimagenet"])
def test_new_process_reads_cache_file_without_decoding(tmp_path, monkeypatch, name):
    fake = WRITERS[name](tmp_path)
    load_dataset(name, tmp_path)
    assert len(cache_files(tmp_path / ".cache", name)) == 1
    monkeypatch.setattr(sources, "_MEMORY", {})  # as in a new process
    forbid_decoding(monkeypatch, name)
    assert_matches(load_dataset(name, tmp_path), fake, name)


def test_explicit_cache_dir(tmp_path, monkeypatch):
    fake = write_fake_mnist(tmp_path / "data")
    load_dataset("mnist", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert len(cache_files(tmp_path / "cache", "mnist")) == 1 and not (tmp_path / "data" / ".cache").exists()
    monkeypatch.setattr(sources, "_MEMORY", {})
    forbid_decoding(monkeypatch, "mnist")
    assert_matches(load_dataset("mnist", tmp_path / "data", cache_dir=tmp_path / "cache"), fake, "mnist")


def test_changed_source_rebuilds_and_drops_stale_cache(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path, seed=0)
    load_dataset("mnist", tmp_path)
    (old,) = cache_files(tmp_path / ".cache", "mnist")
    changed = write_fake_mnist(tmp_path, seed=1)
    os.utime(changed.files["train_images"], ns=(1, 1))  # a new mtime even on coarse-grained file systems
    monkeypatch.setattr(sources, "_MEMORY", {})
    assert_matches(load_dataset("mnist", tmp_path), changed, "mnist")
    (new,) = cache_files(tmp_path / ".cache", "mnist")
    assert new != old


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong-dtype", "wrong-shape"])
def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, caplog, damage):
    fake = write_fake_cifar10(tmp_path)
    load_dataset("cifar10", tmp_path)
    (path,) = cache_files(tmp_path / ".cache", "cifar10")
    payload = torch.load(path, weights_only=True)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a torch file" * 10)
    elif damage == "wrong-dtype":
        torch.save({**payload, "train_x": payload["train_x"].float()}, path)
    else:
        torch.save({**payload, "test_x": payload["test_x"][:, :, :16]}, path)
    monkeypatch.setattr(sources, "_MEMORY", {})
    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        assert_matches(load_dataset("cifar10", tmp_path), fake, "cifar10")
    assert any(str(path) in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(sources, "_MEMORY", {})  # the rebuilt file is valid again
    forbid_decoding(monkeypatch, "cifar10")
    assert_matches(load_dataset("cifar10", tmp_path), fake, "cifar10")


def test_unwritable_cache_dir_still_loads(tmp_path, caplog):
    fake = write_fake_mnist(tmp_path)
    (tmp_path / "file").write_text("")
    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        data = load_dataset("mnist", tmp_path, cache_dir=tmp_path / "file" / "cache")
    assert_matches(data, fake, "mnist")
    assert "cache_dir" in caplog.text


def _concurrent_worker(root: str, log_path: str, barrier, results) -> None:
    """Spawned twice: both load the same fake at once; every decode is logged with its pid."""
    original = sources._read_idx

    def logged_slow_read(*args, **kwargs):
        with open(log_path, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # keeps the first decoder busy while the other process arrives
        return original(*args, **kwargs)

    sources._read_idx = logged_slow_read
    barrier.wait()
    data = load_dataset("mnist", root)
    digest = hashlib.sha256()
    for t in (data.train_x, data.train_y, data.test_x, data.test_y):
        digest.update(t.numpy().tobytes())
    results.put(digest.hexdigest())


def test_concurrent_first_use_decodes_once(tmp_path):
    fake = write_fake_mnist(tmp_path, gz=True)
    ctx = multiprocessing.get_context("spawn")
    barrier, results, log_path = ctx.Barrier(2), ctx.Queue(), tmp_path / "decodes.log"
    procs = [ctx.Process(target=_concurrent_worker, args=(str(tmp_path), str(log_path), barrier, results))
             for _ in range(2)]
    for proc in procs:
        proc.start()
    digests = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert len(set(log_path.read_text().split())) == 1  # one process decoded, the other read its cache
    assert digests[0] == digests[1]
    assert len(cache_files(tmp_path / ".cache", "mnist")) == 1
    assert not list((tmp_path / ".cache").glob("*.tmp"))
    sources._MEMORY.clear()
    assert_matches(load_dataset("mnist", tmp_path), fake, "mnist")


# ------------------------------------------------------------ bad data


def test_truncated_idx_names_the_file(tmp_path):
    fake = write_fake_mnist(tmp_path)
    path = fake.files["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as err:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(err.value)


def test_truncated_gz_names_the_file(tmp_path):
    fake = write_fake_mnist(tmp_path, gz=True)
    path = fake.files["t10k_labels"]
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(err.value)


def test_idx_bad_magic_and_inconsistent_counts(tmp_path):
    fake = write_fake_mnist(tmp_path)
    path = fake.files["train_labels"]
    path.write_bytes(gzip.compress(b"x"))  # not an idx file
    with pytest.raises(DataError, match="magic") as err:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(err.value)
    write_fake_mnist(tmp_path, n_train=30)
    write_fake_mnist(tmp_path / "other", n_train=31)
    os.replace(tmp_path / "other" / "MNIST" / "raw" / "train-labels-idx1-ubyte", path)
    with pytest.raises(DataError, match="31 labels"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_jpeg_names_the_file(tmp_path, damage):
    fake = write_fake_tinyimagenet(tmp_path, n_classes=2, n_train_per_class=1, n_val_per_class=1)
    path = fake.files["first_val"]
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"not a jpeg" * 20)
    with pytest.raises(DataError) as err:
        load_dataset("tinyimagenet", tmp_path)
    assert str(path) in str(err.value)


def test_tinyimagenet_wrong_size_and_bad_annotations(tmp_path):
    write_fake_tinyimagenet(tmp_path / "small", n_classes=2, n_train_per_class=1, n_val_per_class=1, size=32)
    with pytest.raises(DataError, match="expected 64x64"):
        load_dataset("tinyimagenet", tmp_path / "small")
    fake = write_fake_tinyimagenet(tmp_path / "ann", n_classes=2, n_train_per_class=1, n_val_per_class=1)
    with fake.files["val_annotations"].open("a") as fh:
        fh.write("val_0.JPEG\tn12345678\t0\t0\t1\t1\n")  # a wnid not in wnids.txt
    with pytest.raises(DataError, match="val_annotations.txt:3"):
        load_dataset("tinyimagenet", tmp_path / "ann")


def test_corrupt_pickle_names_the_file(tmp_path):
    fake = write_fake_cifar10(tmp_path)
    path = fake.files["data_batch_3"]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt CIFAR pickle") as err:
        load_dataset("cifar10", tmp_path)
    assert str(path) in str(err.value)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickle_with_foreign_objects_is_refused(tmp_path):
    fake = write_fake_cifar100(tmp_path)
    marker = tmp_path / "executed"
    fake.files["meta"].write_bytes(pickle.dumps({"fine_label_names": _Evil(marker)}, protocol=2))
    with pytest.raises(DataError, match="refusing") as err:
        load_dataset("cifar100", tmp_path)
    assert str(fake.files["meta"]) in str(err.value) and not marker.exists()


def test_cifar_labels_out_of_range(tmp_path):
    fake = write_fake_cifar10(tmp_path)
    path = fake.files["test_batch"]
    batch = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps({**batch, "labels": [10] * len(batch["labels"])}, protocol=2))
    with pytest.raises(DataError, match="labels in 0..9") as err:
        load_dataset("cifar10", tmp_path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------ missing data


@pytest.mark.parametrize(
    "name,expected",
    [
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("fmnist", "FashionMNIST/raw/train-images-idx3-ubyte"),
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
        ("tinyimagenet", "tiny-imagenet-200/wnids.txt"),
    ],
)
def test_missing_dataset_names_the_path(tmp_path, name, expected):
    with pytest.raises(DataError, match="download=true") as err:
        load_dataset(name, tmp_path)
    assert str(tmp_path / expected) in str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)


def test_partially_missing_mnist_names_the_missing_file(tmp_path):
    fake = write_fake_mnist(tmp_path, gz=True)
    fake.files["t10k_labels"].unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)


def test_unknown_dataset():
    with pytest.raises(DataError, match="choose one of"):
        load_dataset("imagenet", ".")
    assert "tinyimagenet" in DATASETS


def test_mnist_download_uses_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    made = {}

    def fake_mnist(root, download):
        assert download and Path(root) == tmp_path
        made["fake"] = write_fake_mnist(root, "MNIST", gz=True)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    data = load_dataset("mnist", tmp_path, download=True)
    assert_matches(data, made["fake"], "mnist")


def test_cifar_download_uses_official_archive(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    calls = []

    def fake_download(url, download_root, md5):
        calls.append((url, md5))
        write_fake_cifar10(download_root)

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)
    load_dataset("cifar10", tmp_path, download=True)
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert calls == [(url, "c58f30108f718f92721af3b95e74349a")]
    sources._MEMORY.clear()
    load_dataset("cifar10", tmp_path, download=True)  # present now: no second download
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["fmnist", "tinyimagenet"])
def test_failed_download_is_one_line_data_error(tmp_path, monkeypatch, name):
    import urllib.error

    import torchvision.datasets
    import torchvision.datasets.utils

    def offline(*_args, **_kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried http://x/, got:\n"
                           f"{urllib.error.URLError('Temporary failure in name resolution')}")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="failed") as err:
        load_dataset(name, tmp_path, download=True)
    assert "\n" not in str(err.value) and "name resolution" in str(err.value)
