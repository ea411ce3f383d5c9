"""Composition root: a config in; model, data, optimizer, strategies and observers built; a measured run out."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .binarize import binary_modules, hidden_weight
from .config import Config, fingerprint, science, validate
from .data import TaskSet, build_tasks, parse_task_sequence
from .errors import UserError
from .loop.checkpoint import Checkpointer
from .loop.hooks import RunObserver, Strategy
from .loop.per_task import PerTaskState
from .loop.precision import Precision, resolve_precision
from .loop.trainer import ContinualTrainer, TrainSettings
from .optim import metaplastic_numel
from .record import RunRecord
from .runtime import Interrupts, RunDirectory
from .seeds import Stream, derive

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


def sizes(model: nn.Module, make_optimizer: Callable[[nn.Module, int], torch.optim.Optimizer], tasks: int
          ) -> dict[str, Any]:
    """The record's size fields: parameters, binary weights, the weights metaplasticity acts on (by the last
    task, whatever the schedule) and each binary layer's fan-in."""
    binary = binary_modules(model)
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "binary_weights": sum(hidden_weight(m).numel() for m in binary.values()),
            "metaplastic_weights": metaplastic_numel(make_optimizer(model, tasks - 1).param_groups),
            "fan_in": {name: hidden_weight(m)[0].numel() for name, m in binary.items()}}


def build_strategies(settings: Config, model: nn.Module, data: TaskSet) -> list[Strategy]:
    """The configured strategy, then per-task state where the net keeps any: the training hooks, in order."""
    strategies = [instantiate(settings.strategy, _convert_="all")(model=model, data=data)]
    if model.net_spec.per_task:
        strategies.append(PerTaskState(model, model.net_spec.per_task))
    return strategies


def build_observers(settings: Config, run_dir: Path) -> list[RunObserver]:
    """The sinks of `logger:`, in the config's order (a node set to null is off)."""
    observers = []
    for name, node in settings.logger.items():
        if node is None:
            continue
        if (node.get("_target_") if isinstance(node, dict) else getattr(node, "_target_", None)) is None:
            raise UserError(f"logger.{name} names no sink: give it a _target_ or list its schema in conf/logger/")
        observers.append(instantiate(node, _convert_="all")(run_dir=run_dir))
    return observers


def run_experiment(cfg: DictConfig, run_dir: str | Path, launcher_cpus: int | None = None, sweep: str | None = None,
                   hydra_files: dict[str, Any] | None = None, interrupts: Interrupts | None = None) -> RunRecord:
    """Validate `cfg`, take the run directory, build data, model, optimizer, strategies and observers, train,
    and return the record.

    `launcher_cpus`: the cpus_per_task a launcher gave this job, the threads it may use; `sweep`: names the
    multirun this job belongs to (the default W&B group); `hydra_files`: Hydra's record of the config, written
    once the run owns its directory; `interrupts`: signals that stop the run.
    """
    settings = validate(cfg)
    tasks = parse_task_sequence(settings.task_sequence, seed=settings.seed,
                                class_order_seed=settings.data.class_order_seed)
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    with RunDirectory(run_dir) as owned:
        data = build_tasks(tasks, settings.data.root, settings.data.cache_dir, settings.data.download,
                           settings.data.scenario, getattr(settings.net, "img_size", None), device,
                           val_fraction=settings.data.val_fraction, seed=settings.seed,
                           boundaries=settings.data.boundaries, transition=settings.data.transition)
        trainer = _build(cfg, settings, data, device, precision, owned.path, launcher_cpus, sweep, interrupts)
        trainer.restore()  # refuses another experiment's checkpoint before anything is written
        owned.accept(hydra_files)
        return trainer.run()


def _build(cfg: DictConfig, settings: Config, data: TaskSet, device: torch.device, precision: Precision,
           run_dir: Path, launcher_cpus: int | None, sweep: str | None, interrupts: Interrupts | None
           ) -> ContinualTrainer:
    """Model, optimizer, strategies and observers, assembled into the trainer."""
    torch.manual_seed(derive(settings.seed, Stream.init))
    model = instantiate(settings.net, _convert_="all")(num_classes=data.num_classes, img_size=data.img_size,
                                                       in_chans=data.in_chans).to(device)
    make_optimizer = instantiate(settings.optimizer, _convert_="all")
    make_optimizer(model, 0)  # an optimizer may shape the model it trains (MESU's Gaussian synapses): before anything
    # else takes its parameters
    threads, eval_threads, beside = set_threads(settings.threads, launcher_cpus, model, device)
    strategies = build_strategies(settings, model, data)
    observers = build_observers(settings, run_dir)
    scientific = science(cfg, precision)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    template = RunRecord(status="running", config=config, tasks=[], scenario=data.scenario.value,
                         net=settings.net.name, meta=config["meta"], seed=settings.seed,
                         strategy=strategies[0].name, science=scientific, run_dir=str(run_dir), sweep=sweep,
                         device=str(device), visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), threads=threads,
                         **sizes(model, make_optimizer, len(data.tasks)))
    train = TrainSettings(epochs_per_task=settings.epochs_per_task, batch_size=settings.batch_size,
                          eval_batch_size=settings.data.eval_batch_size, gamma=settings.gamma,
                          fresh_optimizer=settings.fresh_optimizer, precision=precision, seed=settings.seed,
                          eval_threads=eval_threads, test_beside_training=beside, compile=settings.compile)
    checkpointer = Checkpointer(run_dir, fingerprint(scientific), settings.checkpoint)
    return ContinualTrainer(model, data, make_optimizer, strategies, observers, train, checkpointer, template,
                            interrupts.check if interrupts else None)
