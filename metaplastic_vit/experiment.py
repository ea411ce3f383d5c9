"""Composition root: a config in; model, data, optimizer, plugins and sinks built; a trained, measured run out."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .binarize import binary_modules
from .config import Config, validate
from .data import Task, TaskSet, build_tasks, parse_task_sequence
from .errors import UserError
from .models import resolve_spec
from .optim import metaplastic_numel
from .record import NON_SCIENTIFIC, RunRecord
from .runtime import Interrupts, RunDirectory
from .seeds import Stream, derive
from .strategies.base import Plugin
from .strategies.diagnostics import Diagnostics
from .strategies.per_task import PerTaskState
from .trainer import ContinualTrainer, Precision, TrainSettings, resolve_precision

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present; asking for CUDA without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is available here; use device=cpu or device=auto")
    return torch.device(name)


# Below this many parameters a CPU run trains fastest on one thread: the per-op work of a training batch is too
# small to share (benchmarks/RESULTS.md); a second core tests each epoch while the next one trains.
ONE_THREAD_BELOW_PARAMS = 1_000_000


def set_threads(threads: int | None, launcher_cpus: int | None, model: nn.Module, device: torch.device
                ) -> tuple[int, int, bool]:
    """Use the cores this job was given: `threads`, else Slurm's or the local launcher's cpus_per_task, else
    one thread to train a small model on a CPU with several cores (and one more to test each epoch beside
    the next one's training), else torch's default (all cores). Returns the thread counts of training and of
    testing in the loop, and whether to test beside training."""
    threads = threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or launcher_cpus
    if threads:
        torch.set_num_threads(threads)
        return threads, threads, False
    cores = len(os.sched_getaffinity(0))
    if device.type == "cpu" and sum(p.numel() for p in model.parameters()) < ONE_THREAD_BELOW_PARAMS:
        torch.set_num_threads(1)
        return 1, cores, cores > 1
    return cores, cores, False


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able data."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def fingerprint(cfg: DictConfig, precision: Precision) -> str:
    """A hash of everything that changes a run's numbers: a checkpoint resumes only under the same one.

    The test batch size counts only where it changes results (BatchNorm with transductive statistics); the
    precision counts as resolved (auto on a GPU is bf16).
    """
    data = plain(cfg)
    data["precision"] = precision.value
    skipped = [k for k in NON_SCIENTIFIC if not (k == "data.eval_batch_size" and data["net"].get("transductive_bn"))]
    for key in skipped:
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def build_plugins(cfg: DictConfig, model: nn.Module, data: TaskSet, run_dir: Path) -> list[Plugin]:
    """The strategy, per-task state (where the net keeps any), diagnostics, then the sinks, in hook order."""
    plugins = [instantiate(cfg.strategy, _convert_="all")(model=model, data=data)]
    if model.net_spec.per_task:
        plugins.append(PerTaskState(model, model.net_spec.per_task))
    plugins.append(Diagnostics(model))
    for node in (cfg.logger.files, cfg.logger.console, cfg.logger.wandb):
        if node is not None:
            plugins.append(instantiate(node, _convert_="all")(run_dir=run_dir))
    return plugins


def sizes(model: nn.Module, make_optimizer: Callable[[nn.Module, int], torch.optim.Optimizer], tasks: int
          ) -> dict[str, Any]:
    """The record's size fields: parameters, binary weights, the weights metaplasticity acts on (by the last
    task, whatever the schedule) and each binary layer's fan-in."""
    binary = binary_modules(model)
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "binary_weights": sum(m.weight.numel() for m in binary.values()),
            "metaplastic_weights": metaplastic_numel(make_optimizer(model, tasks - 1).param_groups),
            "fan_in": {name: m.weight[0].numel() for name, m in binary.items()}}


def run_experiment(cfg: DictConfig, run_dir: str | Path, launcher_cpus: int | None = None, sweep: str | None = None,
                   hydra_files: dict[str, Any] | None = None, interrupts: Interrupts | None = None) -> RunRecord:
    """Validate `cfg`, take the run directory, build data, model, optimizer, plugins and sinks, train, and
    return the record.

    `launcher_cpus`: the cpus_per_task of a local parallel launcher, the threads this job may use;
    `sweep`: names the multirun this job belongs to (the default W&B group); `hydra_files`: Hydra's record
    of the config, written once the run owns its directory; `interrupts`: signals that stop the run.
    """
    settings = validate(cfg)
    resolve_spec(cfg.net.name)  # an unknown net is refused before any data is loaded
    tasks = parse_task_sequence(cfg.task_sequence, seed=cfg.seed, class_order_seed=cfg.data.class_order_seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(settings.precision, device)
    with RunDirectory(run_dir) as owned:
        trainer = _build(cfg, settings, tasks, device, precision, owned.path, launcher_cpus, sweep, interrupts)
        trainer.restore()  # refuses another experiment's checkpoint before anything is written
        owned.accept(hydra_files)
        return trainer.run()


def _build(cfg: DictConfig, settings: Config, tasks: list[Task], device: torch.device, precision: Precision,
           run_dir: Path, launcher_cpus: int | None, sweep: str | None, interrupts: Interrupts | None
           ) -> ContinualTrainer:
    """Data, model, optimizer, plugins and sinks, assembled into the trainer."""
    data = build_tasks(tasks, cfg.data.root, cfg.data.cache_dir, cfg.data.download, settings.data.scenario,
                       cfg.net.get("img_size"), device, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    torch.manual_seed(derive(cfg.seed, Stream.init))
    model = instantiate(cfg.net, _convert_="all")(num_classes=data.num_classes, img_size=data.img_size,
                                                  in_chans=data.in_chans).to(device)
    threads, eval_threads, beside = set_threads(cfg.threads, launcher_cpus, model, device)
    plugins = build_plugins(cfg, model, data, run_dir)
    config = plain(cfg)
    template = RunRecord(status="running", config=config, tasks=[], scenario=data.scenario.value, net=cfg.net.name,
                         meta=config["meta"], seed=cfg.seed, strategy=plugins[0].name, run_dir=str(run_dir),
                         sweep=sweep, device=str(device), visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                         threads=threads, **sizes(model, instantiate(cfg.optimizer, _convert_="all"),
                                                  len(tasks)))
    train = TrainSettings(epochs_per_task=cfg.epochs_per_task, batch_size=cfg.batch_size,
                          eval_batch_size=cfg.data.eval_batch_size, gamma=cfg.gamma,
                          fresh_optimizer=cfg.fresh_optimizer, precision=precision, checkpoint=cfg.checkpoint,
                          seed=cfg.seed, eval_threads=eval_threads, compile=cfg.compile,
                          test_beside_training=beside)
    return ContinualTrainer(model, data, instantiate(cfg.optimizer, _convert_="all"), plugins, train, run_dir,
                            fingerprint(cfg, precision), template, interrupts.check if interrupts else None)
