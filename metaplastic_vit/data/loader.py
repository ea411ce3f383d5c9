"""In-memory task data: uint8 images stay on the device once, batches are made by indexing.

Normalisation, pixel permutation and resizing run per batch on the device, so no per-item PIL work
happens during training and a 64 px dataset is never stored at 224 px.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import DataError, UserError
from .sources import ImageData, load_dataset
from .tasks import LabelSpace, Task, dataset_classes, label_space, resolve_scenario


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
class TaskData:
    """One task's view of a dataset: sample indices, head targets and its input transform."""

    task: Task
    images: DeviceImages
    train_idx: torch.Tensor
    train_targets: torch.Tensor
    test_idx: torch.Tensor
    test_targets: torch.Tensor
    outputs: torch.Tensor  # head indices of this task's classes (the mask of the task scenario)
    permutation: torch.Tensor | None
    size: int | None  # resize target, None for the native size

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float, permuted and resized as the task says."""
        x = (x.float().div_(255) - self.images.mean) / self.images.std
        if self.permutation is not None:
            x = x.flatten(2)[:, :, self.permutation].view_as(x)
        if self.size is not None and self.size != x.shape[-1]:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=self.size < x.shape[-1])
        return x

    def batches(self, split: str, batch_size: int,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of (inputs, targets) of the train or test split; shuffled when a generator is given."""
        idx, targets = (self.train_idx, self.train_targets) if split == "train" else (self.test_idx, self.test_targets)
        source = self.images.train_x if split == "train" else self.images.test_x
        order = None
        if generator is not None:
            order = torch.randperm(len(idx), generator=generator).to(idx.device)
        for start in range(0, len(idx), batch_size):
            sel = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
            yield self.transform(source[idx[sel]]), targets[sel]


def _select(labels: torch.Tensor, classes: Sequence[int], outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of samples whose label is in `classes`, and each one's head target."""
    lookup = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long, device=labels.device)
    lookup[torch.tensor(classes, device=labels.device)] = outputs.to(labels.device)
    mapped = lookup[labels]
    idx = torch.nonzero(mapped >= 0).squeeze(1)
    return idx, mapped[idx]


@dataclass
class TaskSet:
    """Everything the trainer needs about the data: tasks, their label space and the model's input."""

    tasks: list[TaskData]
    scenario: str
    labels: LabelSpace
    in_chans: int
    img_size: int


def build_tasks(tasks: Sequence[Task], root: str, cache_dir: str | None, download: bool, scenario: str,
                img_size: int | None, device: torch.device) -> TaskSet:
    """Load each dataset once, put it on the device, and make every task's view of it."""
    scenario = resolve_scenario(tasks, scenario)
    space = label_space(tasks, scenario)
    images: dict[str, DeviceImages] = {}
    for task in tasks:
        if task.dataset not in images:
            data = load_dataset(task.dataset, root, cache_dir, download)
            expected = dataset_classes(task.dataset)
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
    for task in tasks:
        im = images[task.dataset]
        outputs = space.outputs(task, scenario).to(device)
        train_idx, train_t = _select(im.train_y, task.classes, outputs)
        test_idx, test_t = _select(im.test_y, task.classes, outputs)
        perm = None
        if task.permutation_seed is not None:
            pixels = im.train_x.shape[2] * im.train_x.shape[3]
            perm = torch.randperm(pixels, generator=torch.Generator().manual_seed(task.permutation_seed)).to(device)
        views.append(TaskData(task, im, train_idx, train_t, test_idx, test_t, outputs, perm,
                              None if size == im.train_x.shape[-1] else size))
    return TaskSet(views, scenario, space, chans.pop(), size)
