"""Dataset readers: each supported dataset, from its official on-disk layout, decoded once to uint8 tensors.

Decoded data is cached twice: in this process (a module-level dict) and on disk (`cache_dir/<name>-<fp>.pt`,
a plain `torch.save` of uint8/int64 tensors, where `fp` fingerprints the source files, so a changed source
rebuilds). Cache files are written atomically and built under a file lock, so concurrent first use by several
processes (e.g. Slurm array jobs) decodes once.
"""

from __future__ import annotations

import codecs
import fcntl
import gzip
import hashlib
import logging
import pickle
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from ..atomic import save_torch
from ..errors import DataError
from .splits import stratified_holdout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageData:
    """A dataset decoded to memory: uint8 images (N, C, H, W) and int64 labels, train and test.

    Instances are shared by every caller in the process (memory cache): treat the tensors as read-only.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]  # class names in label order


# Bump when the decoded content or the cache payload changes: every cache file then rebuilds.
_FORMAT = 1
_FP_CHARS = 16
_MEMORY: dict[tuple[str, str], ImageData] = {}

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class _CifarLayout(NamedTuple):
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str


# The only globals a CIFAR pickle may reference (numpy arrays, from Python 2 or 3 pickles): anything else in a
# data file is refused instead of executed. Taken from numpy itself so both numpy 1 and 2 module names work.
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    (module, name): obj
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name, obj in (("_reconstruct", np.zeros(0).__reduce__()[0]), ("scalar", np.uint8(0).__reduce__()[0]))
} | {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}


@dataclass(frozen=True)
class _Plan:
    files: tuple[Path, ...]  # every source file the decoded data depends on (fingerprinted)
    decode: Callable[[], ImageData]


class _NotFoundError(Exception):
    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as '<Type>: <message>' on one line (messages of DataError stay one line)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:limit]


def load_dataset(
    name: str, root: str | Path, cache_dir: str | Path | None = None, download: bool = False
) -> ImageData:
    """Return dataset `name` (one of DATASETS), read from its official layout under `root` as uint8 tensors.

    Decodes once: later calls get the in-process copy, later processes the cache file (default root/.cache).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    info = DATASETS[name]
    root = Path(root).expanduser().resolve()
    key = (name, "" if info.reader is None else str(root))
    if key not in _MEMORY:
        try:
            if info.reader is None:
                _MEMORY[key] = _load_digits()
            else:
                default_cache = cache_dir is None
                cache = root / ".cache" if cache_dir is None else Path(cache_dir).expanduser().resolve()
                _MEMORY[key] = _load_cached(info, root, cache, download, default_cache)
        except DataError:
            raise
        except OSError as exc:  # e.g. a folder of the layout that this user may not read
            where = f": {exc.filename}" if exc.filename else ""
            raise DataError(f"cannot read {name} under {root} ({exc.strerror or exc}{where}); make the files "
                            "readable or point data.root elsewhere") from None
    return _MEMORY[key]


def _load_digits() -> ImageData:
    """scikit-learn's 8x8 digits, read from the CSV file scikit-learn ships (importing scikit-learn itself takes
    seconds); 20% of each class, chosen with a fixed seed, is the test split."""
    from importlib.util import find_spec

    spec = find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded digits ship with scikit-learn, which is not installed: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        table = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the embedded digits {path}: {_one_line(exc)}") from None
    x = torch.from_numpy(np.rint(table[:, :-1] * (255 / 16)).astype(np.uint8).reshape(-1, 1, 8, 8))
    y = torch.from_numpy(table[:, -1].astype(np.int64))
    test = stratified_holdout(y, 0.2, torch.Generator().manual_seed(0))
    return ImageData("digits", x[~test], y[~test], x[test], y[test], tuple(str(c) for c in range(10)))


# ------------------------------------------------------------ cache logic


def _load_cached(info: DatasetInfo, root: Path, cache_dir: Path, download: bool, default_cache: bool) -> ImageData:
    name = info.name
    plan = _plan_or_fetch(info, root, cache_dir, download)
    fingerprint = _fingerprint(name, root, plan.files)
    path = cache_dir / f"{name}-{fingerprint}.pt"
    data, _ = _read_cache(path, name, fingerprint)  # writes are atomic, so reading needs no lock
    if data is not None:
        return data
    with _locked(cache_dir, name) as writable:
        data, problem = _read_cache(path, name, fingerprint)  # another process may have built it meanwhile
        if data is not None:
            return data
        if problem:
            log.warning("cache file %s is unusable (%s); rebuilding it", path, problem)
        log.info("decoding %s from %s once (cache: %s)", name, root, path)
        data = plan.decode()
        if writable:
            _write_cache(path, data, fingerprint, remove_stale=default_cache)
    return data


def _plan_or_fetch(info: DatasetInfo, root: Path, cache_dir: Path, download: bool) -> _Plan:
    name = info.name
    try:
        return info.reader(info, root)
    except _NotFoundError as exc:
        if not download:
            raise DataError(f"{name} not found: {exc.path} is missing; set data.download=true or place "
                            f"{info.place}") from None
    with _locked(cache_dir, name):  # one process downloads, the others wait and find the files
        try:
            return info.reader(info, root)
        except _NotFoundError:
            _download(info, root)
        try:
            return info.reader(info, root)
        except _NotFoundError as exc:
            raise DataError(f"{name}: downloaded into {root} but {exc.path} is still missing") from None


def _download(info: DatasetInfo, root: Path) -> None:
    # torchvision is imported here only: downloading is rare and the import is slow.
    import torchvision.datasets
    import torchvision.datasets.utils

    log.info("downloading %s into %s", info.name, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if info.archive is None:  # torchvision's own dataset class, named like the layout's folder
            getattr(torchvision.datasets, info.folder)(str(root), download=True)
        else:
            url, md5 = info.archive
            torchvision.datasets.utils.download_and_extract_archive(url, str(root), md5=md5)
    except Exception as exc:  # network, md5, disk and archive errors all come in different types
        raise DataError(f"downloading {info.name} into {root} failed (no network?): {_one_line(exc)}; place the "
                        "files there by hand instead") from None


def _fingerprint(name: str, root: Path, files: tuple[Path, ...]) -> str:
    digest = hashlib.sha256(f"{_FORMAT}\n{name}\n".encode())
    for path in files:
        try:
            st = path.stat()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror}") from None
        digest.update(f"{path.relative_to(root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:_FP_CHARS]


@contextmanager
def _locked(cache_dir: Path, name: str) -> Iterator[bool]:
    """Hold an exclusive lock on cache_dir/<name>.lock; yield False (no lock) if the directory is unusable."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        handle = open(cache_dir / f"{name}.lock", "a")
    except OSError as exc:
        log.warning("cannot use cache directory %s (%s); %s is decoded without a cache: set data.cache_dir "
                    "to a writable directory", cache_dir, exc.strerror, name)
        handle = None
    if handle is None:
        yield False
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield True


def _read_cache(path: Path, name: str, fingerprint: str) -> tuple[ImageData | None, str | None]:
    """Return (data, None) for a valid cache file, (None, None) when absent, (None, problem) when unusable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None, None
    except Exception as exc:  # a damaged file can fail in the zip, pickle or storage layer
        return None, _one_line(exc)
    problem = _payload_problem(payload, name, fingerprint)
    if problem:
        return None, problem
    return ImageData(name, payload["train_x"], payload["train_y"], payload["test_x"], payload["test_y"],
                     tuple(payload["classes"])), None


def _payload_problem(payload: object, name: str, fingerprint: str) -> str | None:
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        return f"not a format-{_FORMAT} cache payload"
    if payload.get("fingerprint") != fingerprint:
        return "fingerprint does not match its file name"
    classes = payload.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "class names missing"
    info = DATASETS[name]
    if info.name != "tinyimagenet" and len(classes) != info.num_classes:  # Tiny-ImageNet's come from wnids.txt
        return f"{len(classes)} class names, expected {info.num_classes}"
    for split in ("train", "test"):
        x, y = payload.get(f"{split}_x"), payload.get(f"{split}_y")
        shape = info.shape
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and tuple(x.shape[1:]) == shape):
            return f"{split}_x is not a uint8 tensor of shape (N, {', '.join(map(str, shape))})"
        if not (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and tuple(y.shape) == (len(x),)):
            return f"{split}_y is not an int64 tensor of {len(x)} labels"
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            return f"{split}_y has labels outside 0..{len(classes) - 1}"
    return None


def _write_cache(path: Path, data: ImageData, fingerprint: str, remove_stale: bool) -> None:
    """Write atomically (temp file + rename); with `remove_stale`, delete older caches of this dataset."""
    for tmp in path.parent.glob(f".{data.name}-*.pt-*.tmp"):  # left by a killed writer; we hold the lock
        tmp.unlink(missing_ok=True)
    payload = {"format": _FORMAT, "fingerprint": fingerprint, "classes": list(data.classes),
               "train_x": data.train_x, "train_y": data.train_y, "test_x": data.test_x, "test_y": data.test_y}
    try:
        save_torch(path, payload)
    except OSError as exc:
        log.warning("cannot write cache file %s (%s); %s is decoded again next time", path, exc, data.name)
        return
    if remove_stale:
        for old in path.parent.glob(f"{data.name}-{'?' * _FP_CHARS}.pt"):
            if old != path:
                old.unlink(missing_ok=True)


# ------------------------------------------------------------ MNIST family


def _mnist_plan(info: DatasetInfo, root: Path) -> _Plan:
    raw = root / info.folder / "raw"
    files = []
    for stem in _MNIST_FILES:
        found = [p for p in (raw / stem, raw / f"{stem}.gz") if p.is_file()]  # plain first: faster to read
        if not found:
            raise _NotFoundError(raw / stem)
        files.append(found[0])
    return _Plan(tuple(files), partial(_decode_mnist, info, *files))


def _decode_mnist(info: DatasetInfo, train_images: Path, train_labels: Path, test_images: Path, test_labels: Path
                  ) -> ImageData:
    train_x, train_y = _mnist_split(train_images, train_labels)
    test_x, test_y = _mnist_split(test_images, test_labels)
    return ImageData(info.name, train_x, train_y, test_x, test_y, info.class_names)


def _mnist_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _read_idx(images_path, ndim=3), _read_idx(labels_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, expected 28x28")
    if len(labels) != len(images):
        raise DataError(f"{labels_path} holds {len(labels)} labels, {images_path} {len(images)} images")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path} holds labels above 9")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read a uint8 idx file (the MNIST format): magic 00 00 08 <ndim>, ndim big-endian sizes, then data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: corrupt or truncated ({_one_line(exc)})") from None
    header = 4 + 4 * ndim
    if len(raw) >= 4 and raw[:4] != bytes((0, 0, 8, ndim)):
        raise DataError(f"{path} is not an idx file of {ndim}-D uint8 data (magic {raw[:4].hex()}, expected "
                        f"{bytes((0, 0, 8, ndim)).hex()})")
    if len(raw) < header:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than its idx header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "too long"
        raise DataError(f"{path} is {state}: {len(raw)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


# ------------------------------------------------------------ CIFAR


def _cifar_plan(info: DatasetInfo, root: Path) -> _Plan:
    layout = info.layout
    folder = root / info.folder
    files = tuple(folder / f for f in (*layout.train, layout.test, layout.meta))
    for path in files:
        if not path.is_file():
            raise _NotFoundError(path)
    return _Plan(files, partial(_decode_cifar, info, files))


def _decode_cifar(info: DatasetInfo, files: tuple[Path, ...]) -> ImageData:
    layout, n_classes = info.layout, info.num_classes
    *train_files, test_file, meta_file = files
    names = _read_pickle(meta_file).get(layout.names_key)
    if not (isinstance(names, list) and len(names) == n_classes and all(isinstance(n, str) for n in names)):
        raise DataError(f"{meta_file}: '{layout.names_key}' is not a list of {n_classes} class names")
    train = [_cifar_batch(path, layout.label_key, n_classes) for path in train_files]
    test_x, test_y = _cifar_batch(test_file, layout.label_key, n_classes)
    return ImageData(info.name, torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), test_x, test_y,
                     tuple(names))


def _cifar_batch(path: Path, label_key: str, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _read_pickle(path)
    data, labels = batch.get("data"), batch.get(label_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (3072,)):
        raise DataError(f"{path}: 'data' is not an (N, 3072) uint8 array")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        y = None
    if y is None or y.shape != (len(data),) or np.any(y < 0) or np.any(y >= n_classes):
        raise DataError(f"{path}: '{label_key}' is not a list of {len(data)} labels in 0..{n_classes - 1}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(y)


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return _PICKLE_GLOBALS[module, name]


def _read_pickle(path: Path) -> dict:
    """Read a CIFAR python pickle (latin1: Python 2 originals); numpy arrays are the only objects allowed."""
    try:
        with path.open("rb") as fh:
            obj = _ArrayUnpickler(fh, encoding="latin1").load()
    except Exception as exc:  # a corrupt pickle can fail with almost any exception type
        raise DataError(f"cannot read {path}: corrupt CIFAR pickle ({_one_line(exc)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"cannot read {path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


# ------------------------------------------------------------ Tiny-ImageNet


def _tiny_plan(info: DatasetInfo, root: Path) -> _Plan:
    base = root / info.folder
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file():
        raise _NotFoundError(wnids_file)
    wnids = sorted(set(wnids_file.read_text().split()))  # label order = sorted wnids, not listing order
    if not wnids:
        raise DataError(f"{wnids_file} lists no classes")
    label = {wnid: i for i, wnid in enumerate(wnids)}
    train: list[tuple[Path, int]] = []
    for wnid in wnids:
        folder = base / "train" / wnid / "images"
        images = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
        if not images:
            raise DataError(f"no JPEG images in {folder} (class {wnid} is listed in {wnids_file})")
        train += [(p, label[wnid]) for p in images]
    val = sorted(_tiny_val(base, label))
    words = base / "words.txt"
    files = (wnids_file, base / "val" / "val_annotations.txt", *([words] if words.is_file() else []),
             *(p for p, _ in train), *(p for p, _ in val))
    return _Plan(files, partial(_decode_tiny, train, val, words, wnids))


def _tiny_val(base: Path, label: dict[str, int]) -> list[tuple[Path, int]]:
    """The official val split (our test set): val/images/<file> labelled by val/val_annotations.txt."""
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataError(f"{annotations} not found: the Tiny-ImageNet folder {base} is incomplete")
    val = []
    for lineno, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label:
            raise DataError(f"{annotations}:{lineno}: expected '<file>\\t<wnid from wnids.txt>\\t...', got "
                            f"{line[:80]!r}")
        path = base / "val" / "images" / fields[0]
        if not path.is_file():
            raise DataError(f"{path} is listed in {annotations} but missing")
        val.append((path, label[fields[1]]))
    if not val:
        raise DataError(f"{annotations} lists no images")
    return val


def _decode_tiny(train: list[tuple[Path, int]], val: list[tuple[Path, int]], words: Path, wnids: list[str]
                 ) -> ImageData:
    names = dict.fromkeys(wnids, "")
    if words.is_file():  # optional: "<wnid>\t<name>, <synonym>, ..."; we keep the first name
        for line in words.read_text().splitlines():
            wnid, _, text = line.partition("\t")
            if wnid in names:
                names[wnid] = text.split(",")[0].strip()
    train_x, train_y = _decode_images(train)
    test_x, test_y = _decode_images(val)
    return ImageData("tinyimagenet", train_x, train_y, test_x, test_y,
                     tuple(names[w] or w for w in wnids))


def _decode_images(items: list[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.empty((len(items), 3, 64, 64), dtype=np.uint8)
    for i, (path, _) in enumerate(items):
        x[i] = _decode_jpeg(path).transpose(2, 0, 1)
    return torch.from_numpy(x), torch.tensor([y for _, y in items], dtype=torch.int64)


def _decode_jpeg(path: Path) -> np.ndarray:
    """Decode one Tiny-ImageNet JPEG to (64, 64, 3) uint8; grayscale (and CMYK) images become RGB."""
    try:
        with Image.open(path) as image:
            image.load()
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unreadable, corrupt, truncated files
        raise DataError(f"cannot decode {path}: corrupt or truncated image ({_one_line(exc)})") from None
    if rgb.shape != (64, 64, 3):
        raise DataError(f"{path} is {rgb.shape[1]}x{rgb.shape[0]}, expected 64x64 (Tiny-ImageNet)")
    return rgb


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset, described once: names, official class count and image shape, on-disk layout and reader."""

    name: str  # cache files, results and errors
    token: str  # in task tokens (p<token>, <token>-N)
    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W) of its images
    place: str  # what a user puts under data.root
    reader: Callable[[DatasetInfo, Path], _Plan] | None  # plan of the official layout; None: embedded
    folder: str = ""  # the layout's folder under data.root (also torchvision's class name for the MNIST family)
    class_names: tuple[str, ...] = ()  # where the files do not name the classes
    layout: _CifarLayout | None = None
    archive: tuple[str, str] | None = None  # official (url, md5); None: torchvision's own `folder` class


_KRIZ = "https://www.cs.toronto.edu/~kriz"
_IDX = "the idx files (plain or .gz) there"
DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo("digits", "digits", 10, (1, 8, 8), "nothing: it ships with scikit-learn", None),
    DatasetInfo("mnist", "mnist", 10, (1, 28, 28), _IDX, _mnist_plan, "MNIST", tuple(str(d) for d in range(10))),
    DatasetInfo("fmnist", "fmnist", 10, (1, 28, 28), _IDX, _mnist_plan, "FashionMNIST",
                ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")),
    DatasetInfo("cifar10", "cifar10", 10, (3, 32, 32), "the extracted 'cifar-10-batches-py' folder in the data root",
                _cifar_plan, "cifar-10-batches-py",
                layout=_CifarLayout(tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
                                    "labels", "label_names"),
                archive=(f"{_KRIZ}/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")),
    DatasetInfo("cifar100", "cifar100", 100, (3, 32, 32), "the extracted 'cifar-100-python' folder in the data root",
                _cifar_plan, "cifar-100-python",
                layout=_CifarLayout(("train",), "test", "meta", "fine_labels", "fine_label_names"),
                archive=(f"{_KRIZ}/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")),
    DatasetInfo("tinyimagenet", "imgnet", 200, (3, 64, 64), "the extracted 'tiny-imagenet-200' folder in the data root",
                _tiny_plan, "tiny-imagenet-200",
                archive=("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de")),
)}
