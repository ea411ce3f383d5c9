"""Diagnostics of the hidden weights, the typed `diagnostics` field of every epoch record.

Per layer: `attenuated` (share of hidden weights whose f_meta < 0.5: consolidated), `flipped` (share of signs
changed since the task began) and `mean_abs` (mean |W_h|: metaplasticity only bites once it has grown).
Model-wide: `attenuated` over every metaplastic tensor, so a report can tell when a meta value never
consolidated anything on a budget.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .binarize import binary_modules, hidden_weight
from .loop.hooks import Strategy, TaskContext
from .optim import MetaScale, attenuation
from .record import Diagnostics

ATTENUATED_BELOW = 0.5  # f_meta below this counts a weight as consolidated


def diagnostic_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers whose hidden weights the diagnostics follow: the binary ones, or every Linear/Conv2d."""
    return binary_modules(model) or {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


def _meta_of(optimizer: torch.optim.Optimizer) -> dict[int, tuple[float, bool]]:
    """id(parameter) -> (meta, relative) for every >= 2-D parameter the optimizer applies meta to."""
    return {id(p): (float(g["meta"]), g["meta_scale"] == MetaScale.rms)
            for g in optimizer.param_groups if g.get("meta", 0) for p in g["params"] if p.dim() >= 2}


class HiddenWeightMonitor(Strategy):
    """Measures the hidden weights after every epoch (`measure`), with their histograms at every task's end.

    A strategy only in that it needs to know when a task starts (the signs it counts flips from) and to keep
    that across a resume; it never changes training."""

    name = "diagnostics"

    def __init__(self, model: nn.Module, bins: int = 60) -> None:
        self.layers = diagnostic_layers(model)
        self.bins = bins
        self.task_start_signs: dict[str, torch.Tensor] = {}

    def before_task(self, ctx: TaskContext) -> None:  # noqa: D102
        self.task_start_signs = {n: hidden_weight(m).detach().sign().to(torch.int8) for n, m in self.layers.items()}

    @torch.no_grad()
    def measure(self, optimizer: torch.optim.Optimizer, task_end: bool) -> Diagnostics:
        """The hidden weights now, under `optimizer`'s metas; with their histograms at a task's end."""
        metas = _meta_of(optimizer)
        layers = {}
        for name, module in self.layers.items():
            w = hidden_weight(module).detach()
            meta, relative = metas.get(id(hidden_weight(module)), (0.0, False))
            start = self.task_start_signs.get(name)
            consolidated = (attenuation(w, meta, relative) < ATTENUATED_BELOW).float().mean().item() if meta else 0.0
            layers[name] = {
                "attenuated": consolidated,
                "flipped": (w.sign().to(torch.int8) != start).float().mean().item() if start is not None else 0.0,
                "mean_abs": w.abs().mean().item()}
        consolidated, total = 0, 0
        for p in (p for g in optimizer.param_groups for p in g["params"] if id(p) in metas):
            meta, relative = metas[id(p)]
            consolidated += (attenuation(p.detach(), meta, relative) < ATTENUATED_BELOW).sum().item()
            total += p.numel()
        return Diagnostics(consolidated / total if total else None, layers, self.histograms() if task_end else None)

    @torch.no_grad()
    def histograms(self) -> dict[str, dict[str, list[float]]]:
        """Hidden-weight histogram of each diagnostic layer: bin edges and counts."""
        out = {}
        for name, module in self.layers.items():
            w = hidden_weight(module).detach().float().flatten().cpu()
            lo, hi = w.min().item(), w.max().item()
            if hi <= lo:
                hi = lo + 1e-6
            counts = torch.histc(w, bins=self.bins, min=lo, max=hi)
            out[name] = {"edges": torch.linspace(lo, hi, self.bins + 1).tolist(), "counts": counts.tolist()}
        return out

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"task_start_signs": self.task_start_signs}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.task_start_signs = state["task_start_signs"]
