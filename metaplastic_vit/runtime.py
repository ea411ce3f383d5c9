"""What a run needs from its process and its directory: exclusive ownership, cleanup, files, signals.

- `RunDirectory`: an advisory lock (flock) on `<run dir>/.lock`, held for the whole run, so a second run in
  the same directory is refused at once, naming the holder, before anything is written. Once the run is
  accepted (its checkpoint, if any, belongs to the same experiment), leftovers of killed writes are removed
  and Hydra's record of the config and the log file are written.
- `Interrupts`: SIGINT, SIGTERM and SIGHUP ask the trainer to stop at the next batch; it keeps the last
  checkpoint, marks the record `interrupted` and the command says how to resume. A second signal stops at
  once (the checkpoint and results files are written atomically, so nothing is lost).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import signal
import socket
from pathlib import Path
from types import FrameType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .atomic import leftovers
from .errors import UserError
from .record import CHECKPOINT, METRICS, RESULTS

log = logging.getLogger(__name__)

LOCK = ".lock"
LOG = "run.log"
# temporary files of atomic writes that a killed process leaves behind
LEFTOVERS = tuple(leftovers(name) for name in (CHECKPOINT, RESULTS, METRICS))


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), or None where that cannot be read."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


class RunDirectoryBusyError(UserError):
    """Another process owns the run directory."""


class RunDirectory:
    """Exclusive ownership of a run directory for one process, as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._handler: logging.Handler | None = None

    def __enter__(self) -> RunDirectory:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirectoryBusyError(f"{self.path} is in use by {holder}; wait for that run to end, or choose "
                                        "another run directory (hydra.run.dir=...)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{dt.datetime.now().isoformat(timespec='seconds')}\n".encode(), 0)
        self._fd = fd
        return self

    def accept(self, hydra_files: dict[str, Any] | None = None) -> None:
        """The run goes ahead here: remove leftovers of killed writes, write Hydra's record of the config
        (.hydra/config.yaml, hydra.yaml, overrides.yaml) and start the run's log file."""
        for pattern in LEFTOVERS:
            for tmp in self.path.glob(pattern):
                tmp.unlink(missing_ok=True)
        for name, content in (hydra_files or {}).items():
            target = self.path / ".hydra" / name
            target.parent.mkdir(exist_ok=True)
            OmegaConf.save(content if isinstance(content, DictConfig) else OmegaConf.create(content), target)
        self._handler = logging.FileHandler(self.path / LOG)
        self._handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logging.getLogger().addHandler(self._handler)

    def __exit__(self, *exc: object) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays (removing it would race with a waiter)
            self._fd = None


class InterruptedRunError(BaseException):
    """The run was asked to stop by a signal; its last checkpoint is kept. A BaseException, like
    KeyboardInterrupt, so that a sweep stops instead of treating it as one failed job."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupts:
    """Turns SIGINT, SIGTERM and SIGHUP into a stop request the trainer honours at its next batch
    (`deferred`), or into InterruptedRunError at once (a sweep's own process, and outside a run).

    `signals` are the ones to handle (a launcher that owns SIGTERM, like submitit on Slurm, is left alone).
    Handlers can only be installed from the main thread; elsewhere the context does nothing.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS, deferred: bool = True) -> None:
        self.signals = signals
        self.deferred = deferred
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None or not self.deferred:  # asked twice, or not inside a run: stop now
            raise InterruptedRunError(signum)
        self.requested = signum
        log.warning("%s received: stopping after the current batch (again to stop at once)",
                    signal.Signals(signum).name)

    def check(self) -> None:
        """Raise InterruptedRunError when a stop was requested (called by the trainer between batches)."""
        if self.requested is not None:
            raise InterruptedRunError(self.requested)

    def __enter__(self) -> Interrupts:
        try:
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._previous.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
