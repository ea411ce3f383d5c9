"""In-memory task data: uint8 images stay on the device once, batches are made by indexing.

Each task has three splits: `train`, `val` (a seeded, class-stratified part of the task's training set,
held out from training, for choosing hyper-parameters) and `test` (the dataset's test set). Normalisation,
pixel permutation and resizing run per batch on the device, so no per-item PIL work happens during
training and a 64 px dataset is never stored at 224 px.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import seeds
from ..errors import DataError, UserError
from .sources import DATASETS, ImageData, load_dataset
from .splits import stratified_holdout, stream_part
from .tasks import Scenario, Task, resolve_scenario, task_outputs

SPLITS = ("train", "val", "test")


@dataclass
class Batch:
    """Inputs and targets, with each sample's task (its position in the sequence) and its position in that
    task's split (what a replay buffer keeps)."""

    x: torch.Tensor
    y: torch.Tensor
    task: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DeviceImages:
    """A dataset's uint8 tensors on the device, with its per-channel mean and std (from the train split)."""

    data: ImageData
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor  # (1, C, 1, 1)
    std: torch.Tensor

    @classmethod
    def put(cls, data: ImageData, device: torch.device) -> DeviceImages:
        """Move a dataset to `device` and compute its normalisation constants in chunks."""
        train_x = data.train_x.to(device)
        total = torch.zeros(train_x.shape[1], dtype=torch.float64, device=device)
        squares = torch.zeros_like(total)
        for chunk in train_x.split(4096):
            chunk = chunk.to(torch.float64) / 255
            total += chunk.sum((0, 2, 3))
            squares += chunk.square().sum((0, 2, 3))
        count = train_x.shape[0] * train_x.shape[2] * train_x.shape[3]
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
        return cls(data, train_x, data.train_y.to(device), data.test_x.to(device), data.test_y.to(device),
                   mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1))


@dataclass
class Split:
    """One split of a task: positions in the dataset's train or test images, and each one's head target."""

    images: torch.Tensor  # the dataset's uint8 images this split indexes
    idx: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.idx)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of each batch; a trailing batch of a single sample joins the one before it, since
    BatchNorm cannot normalise one sample with batch statistics."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


@dataclass
class TaskData:
    """One task's view of a dataset: its splits, head targets and input transform."""

    task: Task
    index: int  # position in the task sequence
    images: DeviceImages
    splits: dict[str, Split]
    outputs: torch.Tensor  # head indices of this task's classes (the mask of a task-aware test)
    permutation: torch.Tensor | None
    size: int | None  # resize target, None for the native size
    # the task whose validation and test splits this one shares (the parts of a stream after the first); None:
    # its own, tested on their own
    shares_tests_of: int | None = None

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float, permuted and resized as the task says."""
        x = (x.float().div_(255) - self.images.mean) / self.images.std
        if self.permutation is not None:
            x = x.flatten(2)[:, :, self.permutation].view_as(x)
        if self.size is not None and self.size != x.shape[-1]:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=self.size < x.shape[-1])
        return x

    def batch_at(self, split: str, positions: torch.Tensor) -> Batch:
        """The samples at `positions` of a split, as one batch."""
        s = self.splits[split]
        return Batch(self.transform(s.images[s.idx[positions]]), s.targets[positions],
                     torch.full((len(positions),), self.index, dtype=torch.long, device=s.idx.device), positions)

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Batches of a split, shuffled when a generator is given (see `batch_bounds` for the last one)."""
        n = len(self.splits[split])
        device = self.splits[split].idx.device
        order = (torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)).to(device)
        for start, end in batch_bounds(n, batch_size):
            yield self.batch_at(split, order[start:end])


class EvalSet:
    """The test and validation splits of every task as inputs ready for testing, in few large batches.

    Inputs are transformed once and kept (on the device) while they fit in `budget_bytes`, else transformed
    per batch. `chunks` concatenates the segments asked for (task, split) into batches of up to `batch_size`
    samples, or, with `mix_tasks=False` (BatchNorm with transductive statistics), keeps each task's samples
    in batches of their own.
    """

    def __init__(self, tasks: Sequence[TaskData], batch_size: int, mix_tasks: bool = True,
                 budget_bytes: int = 256 * 2**20) -> None:
        self.tasks = list(tasks)
        self.batch_size = batch_size
        self.mix_tasks = mix_tasks
        self.budget = budget_bytes
        self._ready: dict[tuple[int, str], Batch] = {}

    def _pieces(self, task: int, split: str) -> Iterator[Batch]:
        key = (task, split)
        if key in self._ready:
            whole = self._ready[key]
            for start, end in batch_bounds(len(whole), self.batch_size):
                yield Batch(whole.x[start:end], whole.y[start:end], whole.task[start:end], whole.index[start:end])
            return
        t = self.tasks[task]
        n = len(t.splits[split])
        probe = t.batch_at(split, torch.arange(min(n, 1), device=t.splits[split].idx.device))
        size = n * probe.x[0].numel() * probe.x.element_size() if n else 0
        if 0 < size <= self.budget:
            self.budget -= size
            self._ready[key] = t.batch_at(split, torch.arange(n, device=t.splits[split].idx.device))
            yield from self._pieces(task, split)
            return
        yield from t.batches(split, self.batch_size)

    def chunks(self, segments: Sequence[tuple[int, str]]) -> Iterator[tuple[Batch, torch.Tensor]]:
        """(batch, segment number of each sample) over the segments, in order."""
        pending: list[tuple[Batch, torch.Tensor]] = []
        count = 0
        for k, (task, split) in enumerate(segments):
            for piece in self._pieces(task, split):
                pending.append((piece, torch.full((len(piece),), k, dtype=torch.long, device=piece.y.device)))
                count += len(piece)
                if not self.mix_tasks:
                    yield pending.pop()
                    count = 0
                while count >= self.batch_size:
                    batch, segment = _joined(pending)
                    yield _slice(batch, segment, 0, self.batch_size)
                    pending, count = [_slice(batch, segment, self.batch_size, count)], count - self.batch_size
        if count:
            yield _joined(pending)


def _joined(parts: list[tuple[Batch, torch.Tensor]]) -> tuple[Batch, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]
    return (Batch(*(torch.cat([getattr(b, f) for b, _ in parts]) for f in ("x", "y", "task", "index"))),
            torch.cat([s for _, s in parts]))


def _slice(batch: Batch, segment: torch.Tensor, start: int, end: int) -> tuple[Batch, torch.Tensor]:
    part = slice(start, end)
    return Batch(batch.x[part], batch.y[part], batch.task[part], batch.index[part]), segment[part]


def _select(labels: torch.Tensor, classes: Sequence[int], outputs: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of samples whose label is in `classes`, and each one's head target."""
    size = max(int(labels.max()) if len(labels) else 0, *classes) + 1
    lookup = torch.full((size,), -1, dtype=torch.long, device=labels.device)
    lookup[torch.tensor(classes, device=labels.device)] = torch.tensor(outputs, device=labels.device)
    mapped = lookup[labels]
    idx = torch.nonzero(mapped >= 0).squeeze(1)
    return idx, mapped[idx]


@dataclass
class TaskSet:
    """Everything the trainer needs about the data: tasks, the scenario, the head and the model's input."""

    tasks: list[TaskData]
    scenario: Scenario
    num_classes: int
    in_chans: int
    img_size: int
    boundaries: str = "hard"  # data.boundaries.Boundaries: whether the learner is told where tasks change
    transition: float = 0.5  # gradual: the mixing window, as a share of a task's steps

    def train_logits(self, logits: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """Logits as the training loss sees them: masked to each sample's task in the task scenario."""
        if self.scenario != Scenario.task:
            return logits
        return logits.masked_fill(~self.task_masks[tasks], float("-inf"))

    @property
    def stream(self) -> bool:
        """Whether the tasks are the parts of one stream (stream:<dataset>:<N>)."""
        return all(t.task.kind == "stream" for t in self.tasks)

    @property
    def columns(self) -> list[int]:
        """The tasks tested on their own splits (the accuracy matrices' columns): every task, or a stream's
        first part, which holds the whole test set the others share."""
        return [t.index for t in self.tasks if t.shares_tests_of is None]

    @property
    def column_names(self) -> list[str]:
        """The columns' names: the tasks', or "<dataset> (whole test set)" for a stream."""
        if self.stream:
            return [f"{self.tasks[0].task.dataset} (whole test set)"]
        return [self.tasks[j].task.name for j in self.columns]

    @functools.cached_property
    def task_masks(self) -> torch.Tensor:
        """(T, num_classes) booleans: the outputs each task may use when its identity is known."""
        masks = torch.zeros(len(self.tasks), self.num_classes, dtype=torch.bool, device=self.tasks[0].outputs.device)
        for t in self.tasks:
            masks[t.index, t.outputs] = True
        return masks


def build_tasks(tasks: Sequence[Task], root: str, cache_dir: str | None, download: bool, scenario: Scenario | str,
                img_size: int | None, device: torch.device, val_fraction: float = 0.1, seed: int = 0,
                boundaries: str = "hard", transition: float = 0.5) -> TaskSet:
    """Load each dataset once, put it on the device, and make every task's view of it.

    `val_fraction` of each task's training set (per class, chosen with a generator seeded by `seed` and the
    task's position) becomes its validation split. The parts of a stream share one validation split (held out of
    the whole training set) and the whole test set; the rest of the training set is cut into class-balanced parts.
    """
    scenario = resolve_scenario(tasks, scenario)
    num_classes, outputs = task_outputs(tasks, scenario)
    images: dict[str, DeviceImages] = {}
    for task in tasks:
        if task.dataset not in images:
            data = load_dataset(task.dataset, root, cache_dir, download)
            expected = DATASETS[task.dataset].num_classes
            if len(data.classes) != expected:
                raise DataError(f"{task.dataset} under {root} has {len(data.classes)} classes, the task sequence "
                                f"expects the official {expected}")
            images[task.dataset] = DeviceImages.put(data, device)
    shapes = {name: tuple(im.train_x.shape[1:]) for name, im in images.items()}
    chans = {s[0] for s in shapes.values()}
    if len(chans) > 1 or (img_size is None and len(set(shapes.values())) > 1):
        detail = ", ".join(f"{name} {'x'.join(map(str, s))}" for name, s in shapes.items())
        raise UserError(f"the task sequence mixes incompatible inputs ({detail}); use datasets with the same "
                        "channels, and set arch.img_size to resize different sizes to one")
    size = img_size or next(iter(shapes.values()))[1]
    views = []
    for i, task in enumerate(tasks):
        im = images[task.dataset]
        train_idx, train_t = _select(im.train_y, task.classes, outputs[i])
        test_idx, test_t = _select(im.test_y, task.classes, outputs[i])
        where = f"{task.dataset} under {root}" if task.dataset != "digits" else "the embedded digits"
        for split, idx in (("training", train_idx), ("test", test_idx)):
            if len(idx) == 0:
                raise DataError(f"task {task.name}: {where} has no {split} samples of its classes "
                                f"{list(task.classes)}; the dataset is incomplete: place the official files there")
        held = stratified_holdout(train_t, val_fraction,
                                  seeds.generator(seed, seeds.Stream.validation, 0 if task.part else i))
        splits = {"train": Split(im.train_x, train_idx[~held], train_t[~held]),
                  "val": Split(im.train_x, train_idx[held], train_t[held]),
                  "test": Split(im.test_x, test_idx, test_t)}
        if task.part is not None:
            part = stream_part(splits["train"].targets, *task.part, seeds.generator(seed, seeds.Stream.stream_parts))
            splits["train"] = Split(im.train_x, splits["train"].idx[part], splits["train"].targets[part])
        if len(splits["train"]) == 0:
            raise UserError(f"data.val_fraction={val_fraction} leaves task {task.name} no training samples")
        perm = None
        if task.permutation_seed is not None:
            pixels = im.train_x.shape[2] * im.train_x.shape[3]
            perm = torch.randperm(pixels, generator=torch.Generator().manual_seed(task.permutation_seed)).to(device)
        views.append(TaskData(task, i, im, splits, torch.tensor(outputs[i], device=device), perm,
                              None if size == im.train_x.shape[-1] else size,
                              0 if task.part is not None and task.part[0] > 0 else None))
    return TaskSet(views, scenario, num_classes, chans.pop(), size, boundaries, transition)
