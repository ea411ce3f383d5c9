"""MESU against MetaplasticAdam: the cost of a training step with Gaussian synapses.

Per net (the embedded default's bvit_full and vit, and bnn_ln at the embedded digits' size), the seconds of a
full train step (weight sample, forward, backward, optimizer step) on a batch of 100 digits-sized inputs with
MetaplasticAdam (meta 22.37) and with MESU (one weight sample per step; two), timed in interleaved rounds in one
process with the threads a run would use; the ratio is MESU's step over MetaplasticAdam's.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import interleaved, report, table

from metaplastic_vit.mesu import mesu
from metaplastic_vit.models import create_model
from metaplastic_vit.optim import metaplastic_adam

TINY = dict(patch_size=2, embed_dim=64, depth=2, num_heads=4)  # arch=tiny
NETS = {"bvit_full": TINY, "vit": TINY, "bnn_ln": dict(hidden=[1024, 1024])}
BATCH, ROUNDS = 100, 30


def step_for(net: str, optimizer: str, samples: int, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """A train step of `net` with `optimizer` ("adam": MetaplasticAdam, "mesu" with `samples` weight samples)."""
    torch.manual_seed(0)
    model = create_model(net, img_size=8, in_chans=1, num_classes=10, **NETS[net])
    if optimizer == "mesu":
        opt = mesu(model, lr=1.0, lr_sigma=1.0, sigma_prior=0.05, memory=1e5, batch_size=BATCH,
                   samples_train=samples)
    else:
        opt = metaplastic_adam(model, lr=0.005, weight_decay=1e-7, meta=22.37)

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        for _ in range(samples):
            (F.cross_entropy(model(x), y) / samples).backward()
        opt.step()
    return step


def main() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    rows = []
    for net in NETS:
        small = net != "bnn_ln"  # under 1 M parameters: a run trains it on one thread
        torch.set_num_threads(1 if small else len(os.sched_getaffinity(0)))
        steps = {"MetaplasticAdam": step_for(net, "adam", 1, x, y), "MESU, 1 sample": step_for(net, "mesu", 1, x, y),
                 "MESU, 2 samples": step_for(net, "mesu", 2, x, y)}
        t = interleaved(steps, ROUNDS, warmup=3)
        adam = t["MetaplasticAdam"]
        rows += [[net, name, 1000 * s, s / adam] for name, s in t.items()]
    report("MESU against MetaplasticAdam (bench_mesu.py)", [
        f"Train step on a batch of {BATCH} 8x8 inputs (forward, backward, optimizer step; MESU also draws every "
        f"synapse's weight sample), median of {ROUNDS} interleaved rounds, the threads a run would use:",
        table(["net", "optimizer", "ms per step", "x MetaplasticAdam"], rows)])


if __name__ == "__main__":
    main()
