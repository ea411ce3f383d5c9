"""Builders of tiny fake datasets in each official on-disk layout, for testing metaplastic_vit.data.sources.

Each builder writes seeded random content and returns a `Fake` with what `load_dataset` must give back.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class Fake:
    """Expected content (uint8 images (N, C, H, W), int64 labels, in load order) and the files written."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    files: dict[str, Path] = field(default_factory=dict)


def _labels(rng: np.random.Generator, n: int, n_classes: int) -> np.ndarray:
    """Seeded labels covering every class (when n >= n_classes)."""
    return rng.permutation(np.arange(n) % n_classes).astype(np.int64) if n else np.zeros(0, dtype=np.int64)


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write a uint8 array as an idx file (plus `.gz` when gz), as in the MNIST distribution."""
    raw = bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_fake_mnist(root: Path, kind: str = "MNIST", n_train: int = 30, n_test: int = 20, gz: bool = False,
                     seed: int = 0, classes: int = 10) -> Fake:
    """root/<kind>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] with 28x28 images of `classes` labels."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / kind / "raw"
    fake = Fake(rng.integers(0, 256, (n_train, 1, 28, 28), dtype=np.uint8), _labels(rng, n_train, classes),
                rng.integers(0, 256, (n_test, 1, 28, 28), dtype=np.uint8), _labels(rng, n_test, classes),
                FMNIST_CLASSES if kind == "FashionMNIST" else tuple(str(d) for d in range(10)))
    for prefix, x, y in (("train", fake.train_x, fake.train_y), ("t10k", fake.test_x, fake.test_y)):
        fake.files[f"{prefix}_images"] = write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:, 0], gz)
        labels = y.astype(np.uint8)
        fake.files[f"{prefix}_labels"] = write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return fake


def _pickle(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the originals are Python 2 (protocol 2) pickles
    return path


def _cifar_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def write_fake_cifar10(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Fake:
    """root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}; train split over the 5 batches."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    fake = Fake(_cifar_images(rng, n_train), _labels(rng, n_train, 10), _cifar_images(rng, n_test),
                _labels(rng, n_test, 10), CIFAR10_CLASSES)
    batches = np.array_split(np.arange(n_train), 5)
    for i, idx in enumerate(batches, start=1):
        fake.files[f"data_batch_{i}"] = _pickle(folder / f"data_batch_{i}", {
            "batch_label": f"training batch {i} of 5", "labels": fake.train_y[idx].tolist(),
            "data": fake.train_x[idx].reshape(len(idx), 3072), "filenames": [f"img_{j}.png" for j in idx]})
    fake.files["test_batch"] = _pickle(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1", "labels": fake.test_y.tolist(),
        "data": fake.test_x.reshape(n_test, 3072), "filenames": [f"test_{j}.png" for j in range(n_test)]})
    fake.files["meta"] = _pickle(folder / "batches.meta", {
        "num_cases_per_batch": len(batches[0]), "label_names": list(CIFAR10_CLASSES), "num_vis": 3072})
    return fake


def write_fake_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Fake:
    """root/cifar-100-python/{train,test,meta} with 100 fine classes (all covered when n >= 100)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    classes = tuple(f"fine_{k:02d}" for k in range(100))
    fake = Fake(_cifar_images(rng, n_train), _labels(rng, n_train, 100), _cifar_images(rng, n_test),
                _labels(rng, n_test, 100), classes)
    for split, x, y in (("train", fake.train_x, fake.train_y), ("test", fake.test_x, fake.test_y)):
        fake.files[split] = _pickle(folder / split, {
            "filenames": [f"{split}_{j}.png" for j in range(len(y))], "batch_label": f"{split} batch",
            "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(), "data": x.reshape(len(x), 3072)})
    fake.files["meta"] = _pickle(folder / "meta", {
        "fine_label_names": list(classes), "coarse_label_names": [f"coarse_{k:02d}" for k in range(20)]})
    return fake


def _decoded(path: Path) -> np.ndarray:
    """Reference decode of a written JPEG as (3, H, W) uint8."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


def write_fake_tinyimagenet(root: Path, n_classes: int = 3, n_train_per_class: int = 3,
                            n_val_per_class: int = 2, size: int = 64, seed: int = 0) -> Fake:
    """root/tiny-imagenet-200: wnids.txt (unsorted), words.txt, train/<wnid>/images, val/images + annotations.

    The first training image of the first class (sorted wnids) is a grayscale JPEG: files["gray"].
    """
    rng = np.random.default_rng(seed)
    base = Path(root) / "tiny-imagenet-200"
    wnids = sorted({f"n{k:08d}" for k in rng.choice(10**8, n_classes, replace=False)})
    names = {w: f"thing {k}" for k, w in enumerate(wnids)}
    base.mkdir(parents=True, exist_ok=True)
    # listing order != label order (sorted wnids)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))
    (base / "words.txt").write_text("n00000001\tentity\n" + "".join(
        f"{w}\t{names[w]}, synonym of {names[w]}\n" for w in wnids) + "n99999999\tunused, other\n")
    fake = Fake(np.empty(0), np.empty(0), np.empty(0), np.empty(0), tuple(names[w] for w in wnids),
                {"wnids": base / "wnids.txt", "words": base / "words.txt"})

    def jpeg(path: Path, gray: bool = False) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size) if gray else (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
        return path

    train: list[tuple[str, Path, int]] = []
    for label, wnid in enumerate(wnids):
        folder = base / "train" / wnid
        for k in range(n_train_per_class):
            path = jpeg(folder / "images" / f"{wnid}_{k}.JPEG", gray=label == 0 and k == 0)
            train.append((path.name, path, label))
        (folder / f"{wnid}_boxes.txt").write_text("".join(f"{wnid}_{k}.JPEG\t0\t0\t63\t63\n"
                                                          for k in range(n_train_per_class)))
    val_labels = _labels(rng, n_classes * n_val_per_class, n_classes)
    val = [(f"val_{k}.JPEG", jpeg(base / "val" / "images" / f"val_{k}.JPEG"), int(y))
           for k, y in enumerate(val_labels)]
    (base / "val" / "val_annotations.txt").write_text("".join(  # in shuffled order
        f"{val[i][0]}\t{wnids[val[i][2]]}\t1\t2\t60\t61\n" for i in rng.permutation(len(val))))
    jpeg(base / "test" / "images" / "test_0.JPEG")  # the unlabelled official test split: ignored
    train.sort(key=lambda item: (item[2], item[0]))  # load order: label (= sorted wnid), then file name
    val.sort(key=lambda item: item[0])  # load order: file name
    fake.train_x = np.stack([_decoded(p) for _, p, _ in train])
    fake.train_y = np.array([y for _, _, y in train], dtype=np.int64)
    fake.test_x = np.stack([_decoded(p) for _, p, _ in val])
    fake.test_y = np.array([y for _, _, y in val], dtype=np.int64)
    fake.files.update(gray=base / "train" / wnids[0] / "images" / f"{wnids[0]}_0.JPEG",
                      val_annotations=base / "val" / "val_annotations.txt", first_val=val[0][1],
                      first_train=train[0][1])
    return fake
