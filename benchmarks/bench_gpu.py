"""GPU training throughput of the seed-size vit, bvit and hybrid at 224 px (only when CUDA is available).

Per net: images/s of a full train step (forward, backward, MetaplasticAdam step, compiled as "auto" does on
CUDA) and peak GPU memory, in fp32 and bf16 autocast (a run's `precision`), each eager and with the model
compiled by torch.compile; speed-up against the net's fp32 eager row. The GPU model is named in the table.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from common import report, table

from metaplastic_vit.models import create_model
from metaplastic_vit.optim import MetaplasticAdam, param_groups

ARCH = dict(img_size=224, in_chans=3, num_classes=200, patch_size=16, embed_dim=768, depth=4, num_heads=12)
BATCH, WARMUP, STEPS = 64, 5, 20
CONFIGS = {  # name -> (bf16 autocast, torch.compile of the model)
    "fp32 eager": (False, False),
    "fp32 + torch.compile": (False, True),
    "bf16 autocast": (True, False),
    "bf16 + torch.compile": (True, True),
}


def measure(net: str, amp: bool, compiled: bool, device: torch.device, arch: dict = ARCH, batch: int = BATCH,
            warmup: int = WARMUP, steps: int = STEPS) -> tuple[float, float]:
    """(images per second, peak memory in GiB) of train steps on `device`."""
    torch.manual_seed(0)
    model = create_model(net, **arch).to(device)
    forward = torch.compile(model) if compiled else model
    opt = MetaplasticAdam(param_groups(model, 1.35, "all"), lr=1e-3)
    x = torch.randn(batch, arch["in_chans"], arch["img_size"], arch["img_size"], device=device)
    y = torch.randint(0, arch["num_classes"], (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(forward(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return batch * steps / seconds, peak


def main() -> None:
    if not torch.cuda.is_available():
        print("no GPU")
        report("GPU throughput", ["no GPU on this machine: skipped."])
        return
    device = torch.device("cuda")
    rows = []
    for net in ("vit", "bvit", "hybrid"):
        base = None
        for name, (amp, compiled) in CONFIGS.items():
            try:
                images, peak = measure(net, amp, compiled, device)
            except Exception as exc:  # noqa: BLE001 - report a failing configuration and go on with the others
                rows.append([net, name, f"failed: {type(exc).__name__}", "", ""])
                continue
            base = base or images
            rows.append([net, name, images, images / base, peak])
            torch.cuda.empty_cache()
    report("GPU throughput", [
        f"GPU: {torch.cuda.get_device_name(0)}. Seed-size nets at 224 px, batch {BATCH}, {STEPS} timed train steps "
        f"after {WARMUP} warm-up steps; speed-up over the net's fp32 eager row.",
        table(["net", "configuration", "images/s", "speed-up", "peak GiB"], rows)])


if __name__ == "__main__":
    main()
