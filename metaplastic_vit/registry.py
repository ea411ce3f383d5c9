"""A plugin package's registry: name -> config schema, filled by the package's modules as they are imported."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable


class Registry(dict[str, type]):
    """The config schemas of one plugin package (strategies, sinks), each registered under its name."""

    def __init__(self, package: str, path: Iterable[str]) -> None:
        super().__init__()
        self.package, self.path = package, list(path)

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: `cls` is the config schema of plugin `name`."""
        def register(cls: type) -> type:
            self[name] = cls
            return cls
        return register

    def load_all(self) -> dict[str, type]:
        """Import every module of the package (each registers its schema) and return the registry."""
        for module in pkgutil.iter_modules(self.path):
            importlib.import_module(f"{self.package}.{module.name}")
        return self
