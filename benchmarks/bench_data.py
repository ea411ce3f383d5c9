"""Data path: a fake Tiny-ImageNet in its official layout, decoded once, cached, then batched on the device.

Writes 200 classes x 50 training JPEGs (plus 10 validation images per class) of smooth 64x64 images (JPEG
sizes like the real ones) to a temp dir; measures the first load (decode + cache file), a cached load (a new
process's path: the cache file), then images/s delivered by `TaskData.batches` (normalise, resize) at 64 and
224 px against images/s a model consumes in a training step at that size, and the data share of a step.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import interleaved, median, report, table, timed, training_threads
from PIL import Image

from metaplastic_vit.data import build_tasks, parse_task_sequence, sources
from metaplastic_vit.models import create_model
from metaplastic_vit.optim import MetaplasticAdam, param_groups

N_CLASSES, N_TRAIN, N_VAL = 200, 50, 10
CASES = {  # name -> (resize target or None for 64 px, batch, model arch)
    "small vit, 64 px": (None, 32, dict(patch_size=4, embed_dim=192, depth=4, num_heads=3)),
    "seed vit, 224 px": (224, 8, dict(patch_size=16, embed_dim=768, depth=4, num_heads=12)),
}


def write_tinyimagenet(root: Path, seed: int = 0) -> int:
    """The official layout with smooth random images (upsampled 8x8 colour fields plus noise); returns the
    number of images written."""
    rng = np.random.default_rng(seed)
    base = root / "tiny-imagenet-200"
    wnids = [f"n{k:08d}" for k in range(N_CLASSES)]
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))

    def jpeg(path: Path) -> None:
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        pixels = np.asarray(small.resize((64, 64), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(pixels + rng.integers(-12, 13, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, format="JPEG", quality=75)

    for wnid in wnids:
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for k in range(N_TRAIN):
            jpeg(folder / f"{wnid}_{k}.JPEG")
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for k in range(N_CLASSES * N_VAL):
        jpeg(base / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{wnids[k % N_CLASSES]}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    return N_CLASSES * (N_TRAIN + N_VAL)


def load_seconds(root: Path, cache: Path) -> float:
    sources._MEMORY.clear()  # what a new process sees: only the disk
    return timed(lambda: sources.load_dataset("tinyimagenet", root, cache))


def delivered_per_s(task, batch: int, rounds: int = 3) -> float:
    """Images per second out of `TaskData.batches` over the task's training split (shuffled, transformed)."""
    g = torch.Generator().manual_seed(0)

    def epoch() -> None:
        for b in task.batches("train", batch, g):
            b.x.sum()  # make sure nothing is left lazy

    return len(task.splits["train"]) / median([timed(epoch) for _ in range(rounds)])


def consumed_per_s(arch: dict, size: int, batch: int, rounds: int = 3) -> float:
    """Images per second through a vit train step (forward, backward, MetaplasticAdam with auto), with the
    CPU threads a run of that model would use (left set for the data measurement)."""
    torch.manual_seed(0)
    model = create_model("vit", img_size=size, in_chans=3, num_classes=N_CLASSES, **arch)
    training_threads(model)
    opt = MetaplasticAdam(param_groups(model, 1.35, "all"), lr=1e-3)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, N_CLASSES, (batch,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / interleaved({"step": step}, rounds)["step"]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-tinyimagenet-") as tmp:
        root, cache = Path(tmp) / "data", Path(tmp) / "cache"
        written = timed(lambda: write_tinyimagenet(root))
        first = load_seconds(root, cache)
        cached = median([load_seconds(root, cache) for _ in range(3)])
        rows = []
        for name, (size, batch, arch) in CASES.items():
            tasks = build_tasks(parse_task_sequence(["imgnet-10"]), str(root), str(cache), False, "auto", size,
                                torch.device("cpu"))
            consumed = consumed_per_s(arch, size or 64, batch)
            delivered = delivered_per_s(tasks.tasks[0], batch)
            epoch_s = N_CLASSES * N_TRAIN / consumed  # one epoch over the whole training set
            rows.append([name, batch, torch.get_num_threads(), f"{delivered:.0f}", f"{consumed:.3g}",
                         100 * consumed / delivered,
                         100 * first / epoch_s, 100 * cached / epoch_s])
    n = N_CLASSES * (N_TRAIN + N_VAL)
    report("Data path (fake Tiny-ImageNet)", [
        f"{n} JPEGs ({N_CLASSES} classes x {N_TRAIN} train + {N_VAL} val, 64x64) written in {written:.1f} s. "
        f"First load (decode + cache file): {first:.2f} s ({n / first:.0f} images/s); cached load: "
        f"{cached:.2f} s. Batches: one imgnet-10 task (1000 images), shuffled, normalised and resized per "
        "batch; model: vit train step at that size. Goal: data <= 5% of step time after the first epoch.",
        table(["case", "batch", "threads", "data images/s", "model images/s", "data % of step",
               "first load % of epoch 1", "cached load % of an epoch"], rows)])


if __name__ == "__main__":
    main()
