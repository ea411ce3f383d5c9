"""Atomic file writes: a temporary file in the same folder, fsync, then rename over the target.

A crash mid-write leaves the previous file intact, never a truncated one that a resume or a report
would read.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def leftovers(name: str) -> str:
    """The glob of the temporary files a killed `atomic_write` of file `name` leaves behind."""
    return f".{name}-*.tmp"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(fh)` on a temporary file next to `path`, then atomically replace `path` with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")  # see `leftovers`
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save `obj`, atomically."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))
