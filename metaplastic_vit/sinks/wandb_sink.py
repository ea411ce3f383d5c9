"""Weights & Biases: one run per job, resumed by its stored id, never fatal to training.

`mode=auto` logs online when credentials exist, offline otherwise. Before going online the server is probed
for a few seconds: an unreachable server means offline logging with one warning (sync it later), never a
stalled job. Any other W&B failure is reported once as a warning and the sink goes quiet.
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import socket
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .. import plots
from ..loop.hooks import RunObserver
from ..record import SUMMARY_METRICS, EpochRecord, RunRecord, flat_config
from . import register_sink

log = logging.getLogger(__name__)

WANDB_ID = "wandb_run_id.txt"
MEAN_SEEN = "test/mean_seen_acc"  # the metric names W&B reports (metaplastic_vit.report) build on


def task_metric(split: str, task: int) -> str:
    """The name of task `task`'s accuracy on `split` (test, test_task_aware, val) after every epoch."""
    return f"{split}/acc_task{task}"
DEFAULT_URL = "https://api.wandb.ai"


class WandbMode(StrEnum):
    """auto: online with credentials (WANDB_API_KEY or `wandb login`), else offline."""

    auto = "auto"
    online = "online"
    offline = "offline"
    disabled = "disabled"


@register_sink("wandb")
@dataclass
class WandbSinkConfig:
    """logger.wandb: the W&B run."""

    _target_: str = "metaplastic_vit.sinks.wandb_sink.WandbSink"
    _partial_: bool = True
    mode: WandbMode = WandbMode.auto
    project: str = "metaplastic-vit"
    entity: str | None = None
    group: str | None = None  # null: the multirun sweep, so a meta sweep is one group
    tags: list[str] = field(default_factory=list)
    name: str | None = None  # null: <net>-meta<meta>-s<seed>
    init_timeout: float = 30.0  # seconds W&B may take to start a run on a reachable server
    probe_timeout: float = 3.0  # seconds to find out whether the server is reachable at all


def wandb_credentials() -> bool:
    """True when W&B credentials exist here (WANDB_API_KEY or a netrc entry from `wandb login`)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_URL)).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def server_reachable(url: str, timeout: float) -> str | None:
    """None when a TCP connection to the server of `url` opens within `timeout` seconds, else why not."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc.strerror or type(exc).__name__)

    thread = threading.Thread(target=probe, daemon=True)  # name resolution ignores socket timeouts
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


class WandbSink(RunObserver):
    """One W&B run per job, in the job's directory; resumed after a requeue; never fatal to training."""


    def __init__(self, run_dir: str | Path, mode: WandbMode | str = WandbMode.auto, project: str = "metaplastic-vit",
                 entity: str | None = None, group: str | None = None, tags: list[str] | None = None,
                 name: str | None = None, init_timeout: float = 30.0, probe_timeout: float = 3.0) -> None:
        self.run_dir = Path(run_dir)
        self.mode = WandbMode(mode)
        self.project, self.entity, self.group, self.tags, self.run_name = project, entity, group, tags or [], name
        self.init_timeout, self.probe_timeout = init_timeout, probe_timeout
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

    def resolved_mode(self) -> WandbMode:
        """online / offline / disabled: `auto` is online with credentials; online falls back to offline when
        the server cannot be reached."""
        mode = self.mode
        if mode == WandbMode.auto:
            mode = WandbMode.online if wandb_credentials() else WandbMode.offline
        if mode == WandbMode.online:
            url = os.environ.get("WANDB_BASE_URL", DEFAULT_URL)
            problem = server_reachable(url, self.probe_timeout)
            if problem:
                log.warning("W&B server %s is unreachable (%s); logging offline instead: upload later with "
                            "`wandb sync %s/wandb/offline-run-*`", url, problem, self.run_dir)
                mode = WandbMode.offline
        return mode

    def start(self, record: RunRecord, resumed: bool) -> None:  # noqa: D102
        self._guard("init", self._init, record)

    def _init(self, record: RunRecord) -> None:
        import wandb

        id_file = self.run_dir / WANDB_ID
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id)  # a requeued or resumed job continues this run
        mode = self.resolved_mode()
        config = flat_config(record.config)
        config.update({"net": record.net, "meta": record.meta, "strategy": record.strategy,
                       "task_sequence": record.config.get("task_sequence"), "protocol": record.protocol,
                       "uses_task_identity": record.uses_task_identity})
        name = self.run_name or f"{record.net}-meta{record.meta}-s{record.seed}"
        self.run = wandb.init(
            project=self.project, entity=self.entity, group=self.group or record.sweep, tags=list(self.tags),
            name=name, id=run_id, resume="allow", dir=str(self.run_dir), config=config, mode=mode.value,
            settings=wandb.Settings(init_timeout=self.init_timeout, console="off", silent=True))
        if mode == WandbMode.offline:
            log.info("W&B is offline; upload later with: wandb sync %s", Path(self.run.dir).parent)

    def epoch(self, epoch: EpochRecord, record: RunRecord) -> None:  # noqa: D102
        data: dict[str, Any] = {"task": epoch.task, "epoch": epoch.epoch, "train/loss": epoch.train_loss,
                                "train/acc": epoch.train_acc, MEAN_SEEN: epoch.mean_seen_acc,
                                "lr": epoch.lr}
        for prefix, accs in (("test", epoch.test_acc), ("test_task_aware", epoch.test_acc_task_aware),
                             ("val", epoch.val_acc)):
            data.update({task_metric(prefix, j): a for j, a in enumerate(accs)})
        if epoch.diagnostics.attenuated is not None:
            data["meta/attenuated"] = epoch.diagnostics.attenuated
        for layer, values in epoch.diagnostics.layers.items():
            data.update({f"meta/{layer}/{k}": v for k, v in values.items()})
        if self.run is not None:
            self._guard("log", self.run.log, data, len(record.epochs) - 1)

    def task_end(self, record: RunRecord) -> None:  # noqa: D102
        self._guard("histograms", self._histograms, record)

    def _histograms(self, record: RunRecord) -> None:
        import numpy as np
        import wandb

        last = record.epochs[-1].diagnostics.histograms or {}
        self.run.log({f"weights/{layer}": wandb.Histogram(np_histogram=(np.array(h["counts"]), np.array(h["edges"])))
                      for layer, h in last.items()}, commit=False)

    def finish(self, record: RunRecord) -> None:  # noqa: D102
        self._guard("summary", self._finish, record)

    def _finish(self, record: RunRecord) -> None:
        import wandb

        names = record.tasks
        for key, matrix in (("acc_matrix", record.acc_matrix), ("acc_matrix_task_aware", record.acc_matrix_task_aware)):
            if matrix:
                rows = [[names[i], *row] for i, row in enumerate(matrix)]
                table = wandb.Table(columns=["after_task", *(record.columns or names)], data=rows)
                self.run.log({key: table}, commit=False)
        if record.status == "completed" and record.epochs:
            for stem, fig in plots.run_figures(record).items():
                self.run.log({f"plots/{stem}": wandb.Image(fig)}, commit=False)
                plots.pyplot().close(fig)
        if record.status in ("pruned", "failed", "interrupted"):  # findable among a group's finished runs
            self.run.tags = (*self.run.tags, record.status)
            self.run.summary["reason"] = record.reason
        self.run.summary.update({k: getattr(record, k) for k in ("status", "scenario", *SUMMARY_METRICS)})

    def close(self) -> None:  # noqa: D102
        if self.run is not None:
            run, self.run = self.run, None
            try:
                run.finish()
            except Exception as exc:  # noqa: BLE001
                log.warning("W&B finish failed (%s); local results are kept", exc)
