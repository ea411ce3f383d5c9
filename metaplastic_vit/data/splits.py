"""Seeded, class-stratified splits of a dataset (the embedded digits' test split, each task's validation split)."""

from __future__ import annotations

import torch


def stratified_holdout(targets: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask over `targets` marking round(fraction * n_c) randomly chosen samples of each class c."""
    held = torch.zeros(len(targets), dtype=torch.bool)
    cpu = targets.cpu()
    for c in cpu.unique().tolist():
        members = torch.nonzero(cpu == c).squeeze(1)
        k = round(fraction * len(members))
        held[members[torch.randperm(len(members), generator=generator)[:k]]] = True
    return held.to(targets.device)
