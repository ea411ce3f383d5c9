"""Seeded, class-stratified splits of a dataset: the embedded digits' test split, validation splits, stream parts."""

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


def stream_part(targets: torch.Tensor, k: int, parts: int, generator: torch.Generator) -> torch.Tensor:
    """Positions (into `targets`) of the k-th of `parts` class-balanced parts: each class's members shuffled with
    `generator` (drawn afresh from the same state for every k, so the parts are disjoint and cover them all)
    and dealt into `parts` chunks whose sizes differ by at most one; class c's larger chunks go to the parts
    from c on, so that the parts' totals stay even too."""
    cpu = targets.cpu()
    state = generator.get_state()
    chosen = []
    for rank, c in enumerate(cpu.unique().tolist()):
        members = torch.nonzero(cpu == c).squeeze(1)
        order = members[torch.randperm(len(members), generator=generator)]
        chosen.append(order.tensor_split(parts)[(k - rank) % parts])
    generator.set_state(state)
    return torch.cat(chosen).sort().values.to(targets.device)
