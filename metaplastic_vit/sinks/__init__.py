"""Result sinks: RunObservers (metaplastic_vit.loop.hooks) that receive the record after every epoch.

A sink is one module here: its observer class and its config dataclass, registered with `register_sink` under
the key it takes in the config's `logger:` dict (files, console, wandb). A new sink needs no edit elsewhere:
a YAML file in conf/logger/ that lists its node (`- /schema/sink/<name>@<name>`) is enough to use it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

SINKS: dict[str, type] = {}  # sink name -> its config dataclass


def register_sink(name: str) -> Callable[[type], type]:
    """Class decorator: `cls` is the config schema of sink `name`."""
    def register(cls: type) -> type:
        SINKS[name] = cls
        return cls
    return register


def load_all() -> dict[str, type]:
    """Import every sink module (each registers its schema) and return the registry."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return SINKS
