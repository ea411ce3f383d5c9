"""Result sinks: local files (results.json, metrics.csv, PNG plots), progress output, and W&B."""

from __future__ import annotations

import csv
import io
import logging
import netrc
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import plots
from .atomic import atomic_write, write_json
from .trainer import Sink

log = logging.getLogger(__name__)

RESULTS = "results.json"
METRICS = "metrics.csv"


def csv_rows(records: list[dict[str, Any]], n_tasks: int) -> list[dict[str, Any]]:
    """Flatten per-epoch records into CSV rows (one column per tested task and per layer diagnostic)."""
    rows = []
    for rec in records:
        row = {k: rec[k] for k in ("task", "epoch", "train_loss", "train_acc", "mean_seen_acc", "lr")}
        row.update({f"test_acc_task{j}": rec["test_acc"][j] for j in range(n_tasks)})
        for layer, values in rec["diagnostics"].items():
            row.update({f"{layer}/{k}": v for k, v in values.items()})
        rows.append(row)
    return rows


def describe(results: dict[str, Any], write: Callable[[str], None]) -> None:
    """Write the accuracy matrix and ACC / BWT / forgetting as a short table."""
    names = results["tasks"]
    width = max(8, *(len(n) for n in names))
    write("accuracy matrix (%): row = after training task, column = tested task")
    write(" " * width + "".join(f"{n:>{width + 1}}" for n in names))
    for name, row in zip(names, results["acc_matrix"], strict=False):
        write(f"{name:<{width}}" + "".join(f"{a:>{width + 1}.1f}" for a in row))

    def fmt(key: str) -> str:
        value = results.get(key)
        return "n/a" if value is None else f"{value:+.2f}" if key != "avg_acc" else f"{value:.2f}"

    write(f"ACC {fmt('avg_acc')}  BWT {fmt('bwt')}  forgetting {fmt('forgetting')}  FWT {fmt('fwt')}")


class LocalSink(Sink):
    """Writes results.json and metrics.csv after every epoch (atomically) and the plots at the end."""

    def __init__(self, run_dir: str | Path, plots_enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.plots_enabled = plots_enabled

    def start(self, results: dict[str, Any], resumed: bool) -> None:  # noqa: D102
        write_json(self.run_dir / RESULTS, results)

    def epoch(self, record: dict[str, Any], results: dict[str, Any]) -> None:  # noqa: D102
        write_json(self.run_dir / RESULTS, results)
        rows = csv_rows(results["epochs"], len(results["tasks"]))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.run_dir / METRICS, lambda fh: fh.write(buf.getvalue().encode()))

    def finish(self, results: dict[str, Any]) -> None:  # noqa: D102
        if self.plots_enabled and results["epochs"]:
            results["plots"] = [p.name for p in plots.run_figures(results, self.run_dir)]
        write_json(self.run_dir / RESULTS, results)


class ProgressSink(Sink):
    """A progress bar on a terminal, one plain line per epoch otherwise (Slurm logs), then the table."""

    def __init__(self, mode: str = "auto", total_epochs: int = 0, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.mode = ("bar" if self.stream.isatty() else "lines") if mode == "auto" else mode
        self.total = total_epochs
        self.bar = None

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        elif self.mode != "none":
            print(line, file=self.stream, flush=True)

    def start(self, results: dict[str, Any], resumed: bool) -> None:  # noqa: D102
        if self.mode == "bar":
            from tqdm import tqdm

            done = len(results["epochs"])
            self.bar = tqdm(total=self.total, initial=done, unit="epoch", file=self.stream, dynamic_ncols=True)

    def epoch(self, record: dict[str, Any], results: dict[str, Any]) -> None:  # noqa: D102
        tests = " ".join(f"{a:.1f}" for a in record["test_acc"])
        text = (f"task {record['task'] + 1}/{len(results['tasks'])} epoch {record['epoch'] + 1} "
                f"loss {record['train_loss']:.4f} train {record['train_acc']:.1f}% test [{tests}] "
                f"seen-mean {record['mean_seen_acc']:.1f}%")
        if self.bar is not None:
            self.bar.set_postfix_str(f"task {record['task'] + 1} loss {record['train_loss']:.3f} "
                                     f"seen {record['mean_seen_acc']:.1f}%")
            self.bar.update(1)
        elif self.mode == "lines":
            self._write(text)

    def finish(self, results: dict[str, Any]) -> None:  # noqa: D102
        self.close()
        if self.mode != "none" and results["status"] == "completed":
            describe(results, self._write)

    def close(self) -> None:  # noqa: D102
        if self.bar is not None:
            self.bar.close()
            self.bar = None


WANDB_ID = "wandb_run_id.txt"


def wandb_credentials() -> bool:
    """True when W&B credentials exist here (WANDB_API_KEY or a netrc entry from `wandb login`)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config as flat dotted keys, with net / meta / task_sequence at the top for filtering."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        else:
            out[name] = value
    return out


class WandbSink(Sink):
    """One W&B run per job, in the job's directory; resumed after a requeue; never fatal to training.

    Any W&B failure is reported once as a warning and the sink goes quiet; local outputs are unaffected.
    """

    def __init__(self, settings: dict[str, Any], run_dir: str | Path, default_group: str | None = None) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.default_group = default_group
        self.run = None
        self.failed = False

    def _guard(self, what: str, fn: Any, *args: Any) -> Any:
        if self.failed or (self.run is None and what != "init"):
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - W&B must never stop training
            self.failed = True
            log.warning("W&B %s failed (%s: %s); training goes on, local results are kept", what,
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            return None

    def mode(self) -> str:
        """online / offline / disabled; `auto` is online with credentials, offline without."""
        mode = self.settings.get("mode", "auto")
        return ("online" if wandb_credentials() else "offline") if mode == "auto" else mode

    def start(self, results: dict[str, Any], resumed: bool) -> None:  # noqa: D102
        self._guard("init", self._init, results)

    def _init(self, results: dict[str, Any]) -> None:
        import wandb

        id_file = self.run_dir / WANDB_ID
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id)  # a requeued or resumed job continues this run
        s = self.settings
        mode = self.mode()
        config = results["config"]
        flat = flat_config(config)
        flat.update({"net": config["net"]["name"], "meta": config["meta"], "task_sequence": config["task_sequence"]})
        name = s.get("name") or f"{config['net']['name']}-meta{config['meta']}-s{config['seed']}"
        self.run = wandb.init(
            project=s.get("project"), entity=s.get("entity"), group=s.get("group") or self.default_group,
            tags=list(s.get("tags") or []), name=name, id=run_id, resume="allow", dir=str(self.run_dir),
            config=flat, mode=mode, settings=wandb.Settings(init_timeout=s.get("init_timeout", 90),
                                                            console="off", silent=True))
        if mode == "offline":
            log.info("W&B is offline; upload later with: wandb sync %s", Path(self.run.dir).parent)

    def epoch(self, record: dict[str, Any], results: dict[str, Any]) -> None:  # noqa: D102
        step = len(results["epochs"]) - 1
        data = {"task": record["task"], "epoch": record["epoch"], "train/loss": record["train_loss"],
                "train/acc": record["train_acc"], "test/mean_seen_acc": record["mean_seen_acc"], "lr": record["lr"]}
        data.update({f"test/acc_task{j}": a for j, a in enumerate(record["test_acc"])})
        for layer, values in record["diagnostics"].items():
            data.update({f"meta/{layer}/{k}": v for k, v in values.items()})
        self._guard("log", self.run.log, data, step) if self.run else None

    def task_end(self, task: int, histograms: dict[str, dict[str, list[float]]]) -> None:  # noqa: D102
        self._guard("histograms", self._histograms, task, histograms)

    def _histograms(self, task: int, histograms: dict[str, dict[str, list[float]]]) -> None:
        import numpy as np
        import wandb

        self.run.log({f"weights/{layer}": wandb.Histogram(np_histogram=(np.array(h["counts"]), np.array(h["edges"])))
                      for layer, h in histograms.items()}, commit=False)

    def finish(self, results: dict[str, Any]) -> None:  # noqa: D102
        self._guard("summary", self._finish, results)

    def _finish(self, results: dict[str, Any]) -> None:
        import wandb

        names = results["tasks"]
        if results["acc_matrix"]:
            table = wandb.Table(columns=["after_task", *names],
                                data=[[names[i], *row] for i, row in enumerate(results["acc_matrix"])])
            self.run.log({"acc_matrix": table}, commit=False)
        for png in results.get("plots", []):
            self.run.log({f"plots/{Path(png).stem}": wandb.Image(str(self.run_dir / png))}, commit=False)
        self.run.summary.update({k: results[k] for k in ("status", "avg_acc", "bwt", "forgetting", "fwt")})

    def close(self) -> None:  # noqa: D102
        if self.run is not None:
            run, self.run = self.run, None
            try:
                run.finish()
            except Exception as exc:  # noqa: BLE001
                log.warning("W&B finish failed (%s); local results are kept", exc)
