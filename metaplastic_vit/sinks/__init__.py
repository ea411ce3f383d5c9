"""Result sinks: RunObservers (metaplastic_vit.loop.hooks) that receive the record after every epoch.

A sink is one module here: its observer class and its config dataclass, registered with `register_sink` under
the key it takes in the config's `logger:` dict (files, console, wandb). A new sink needs no edit elsewhere:
a YAML file in conf/logger/ that lists its node (`- /schema/sink/<name>@<name>`) is enough to use it.
"""

from __future__ import annotations

from ..registry import Registry

SINKS = Registry(__name__, __path__)  # sink name -> its config dataclass
register_sink = SINKS.register
load_all = SINKS.load_all
