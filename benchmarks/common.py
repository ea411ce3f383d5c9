"""Helpers shared by the benchmark scripts: the machine, timing, tables, RESULTS.md, peak RSS of a child.

Timings on a shared machine are noisy: every script times the variants it compares in interleaved
rounds inside one process and reports medians, so the ratios stay meaningful when absolute numbers drift.
Models run with the CPU threads a training run would give them (`training_threads`), and run_all.py sets
OMP_WAIT_POLICY=PASSIVE as run.py does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
PYTHON = sys.executable


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what platform knows elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line naming the machine: CPU, cores, load, OpenMP wait policy, torch version, GPU."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = f", load avg {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"{cpu_model()}, {os.cpu_count()} cores{load}, OMP_WAIT_POLICY="
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, torch {torch.__version__}, "
            f"Python {platform.python_version()}, GPU: {gpu}")


def training_threads(model: object) -> int:
    """Set the CPU thread count a run of `model` would use (metaplastic_vit.experiment.set_threads: one
    thread for small models, else all cores) and return it."""
    import torch

    from metaplastic_vit.experiment import set_threads

    torch.set_num_threads(os.cpu_count() or 1)
    return set_threads(None, None, model, torch.device("cpu"))[0]


def median(values: Sequence[float]) -> float:  # noqa: D103
    return statistics.median(values)


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating rounds (fair under drifting load)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: median(ts) for name, ts in times.items()}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats get 3 significant digits."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(title: str, blocks: Sequence[str]) -> None:
    """Print a section and append it, dated and with the machine line, to benchmarks/RESULTS.md."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"## {title} ({stamp})\n\nMachine: {machine()}\n\n" + "\n\n".join(blocks) + "\n"
    print(text)
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by the scripts in benchmarks/ (newest last); "
                           "see benchmarks/README.md.\n\n")
    with RESULTS.open("a") as fh:
        fh.write(text + "\n")


def run_child(cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 900
              ) -> tuple[int, float, float, str]:
    """Run a command in the repository root; return (exit code, wall seconds, peak RSS in MiB, output).

    Peak RSS is the kernel's high-water mark from wait4: the largest single process of the command's tree.
    """
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        killer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        return proc.returncode, wall, usage.ru_maxrss / 1024, log.read()


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path | None]:
    """A temporary git worktree of revision `rev` (its path), or None without git or without that revision."""
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        made = subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, capture_output=True)
        if made.returncode:
            yield None
            return
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)


def check(code: int, output: str, what: str) -> None:
    """Stop with the child's output tail when it failed."""
    if code != 0:
        sys.exit(f"{what} failed with exit code {code}:\n{output[-3000:]}")
