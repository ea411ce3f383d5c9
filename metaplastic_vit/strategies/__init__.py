"""Training-loop plugins: the baselines (one module each, with its config schema), per-task state, diagnostics.

A new baseline is one module here (a `Plugin` subclass and its config dataclass decorated with
`register_strategy`) plus one YAML file in conf/strategy/; `STRATEGIES` collects the schemas.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

STRATEGIES: dict[str, type] = {}  # strategy name -> its config dataclass (the schema of conf/strategy/<name>.yaml)


def register_strategy(name: str) -> Callable[[type], type]:
    """Class decorator: `cls` is the config schema of strategy `name`."""
    def register(cls: type) -> type:
        STRATEGIES[name] = cls
        return cls
    return register


@register_strategy("naive")
@dataclass
class NaiveConfig:
    """strategy=naive: no protection besides metaplasticity."""

    _target_: str = "metaplastic_vit.strategies.base.Naive"
    _partial_: bool = True


def load_all() -> dict[str, type]:
    """Import every strategy module (each registers its schema) and return the registry."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return STRATEGIES
