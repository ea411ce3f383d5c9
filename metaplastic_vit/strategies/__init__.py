"""The baselines: one module each, a `Strategy` (metaplastic_vit.loop.hooks) with its config schema.

A new baseline is one module here (a Strategy subclass, and its config dataclass: a `StrategyConfig` decorated
with `register_strategy`) plus one YAML file in conf/strategy/; `STRATEGIES` collects the schemas. A strategy
is built with the model and the task set (`strategy(model=..., data=...)`), everything else from its config.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from omegaconf import MISSING
from torch import nn

from ..data import Scenario
from ..registry import Registry


@dataclass
class StrategyConfig:
    """What every strategy's schema has: the target (a Strategy class) built with the model and the data."""

    _target_: str = MISSING
    _partial_: bool = True

    def without_boundaries(self) -> str | None:
        """Why this strategy cannot learn without task boundaries (data.boundaries none or gradual), or None
        when it can (as it is, or in its boundary-free variant)."""
        return None


STRATEGIES = Registry(__name__, __path__)  # strategy name -> its config dataclass (conf/strategy/<name>.yaml)
register_strategy = STRATEGIES.register
load_all = STRATEGIES.load_all


def protected_parameters(model: nn.Module, scenario: Scenario) -> list[nn.Parameter]:
    """The trainable parameters a weight-protection baseline (EWC, SI) guards: every one a task is tested with.

    Per-task modules are left out only in the task scenario, where each task is tested with its own copy put
    back; in the domain and class scenarios their live parameters serve every task, so they are protected like
    any other shared parameter.
    """
    patterns = getattr(getattr(model, "net_spec", None), "per_task", ()) if scenario == Scenario.task else ()
    per_task = {id(p) for n, m in model.named_modules() if n and any(fnmatch.fnmatchcase(n, q) for q in patterns)
                for p in m.parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in per_task]
