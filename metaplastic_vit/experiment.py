"""Composition root: a validated config in, a trained and measured experiment out."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .config import validate
from .data import TaskSet, build_tasks, parse_task_sequence
from .errors import UserError
from .loggers import LocalSink, ProgressSink, WandbSink
from .models import MODELS, create_model
from .trainer import ContinualTrainer, Sink, TrainSettings

log = logging.getLogger(__name__)

# Keys that do not change what is computed: a run may resume with other values for them.
NON_SCIENTIFIC = ("logger", "paths", "threads", "device", "checkpoint", "data.root", "data.cache_dir",
                  "data.download", "data.eval_batch_size", "optimizer.implementation")


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present; asking for CUDA without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is available here; use device=cpu or device=auto")
    return torch.device(name)


# Below this many parameters a CPU run is fastest on one thread: the embedded default (0.1 M) trained in
# 23 s on 1 thread and 34 s on 2 (benchmarks/RESULTS.md), the per-op work being too small to share.
ONE_THREAD_BELOW_PARAMS = 1_000_000


def set_threads(threads: int | None, launcher_cpus: int | None, model: nn.Module, device: torch.device) -> int:
    """Use the cores this job was given: `threads`, else Slurm's or the local launcher's cpus_per_task,
    else one thread for a small model on the CPU, else torch's default (all cores). Returns the count."""
    threads = threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or launcher_cpus
    if not threads and device.type == "cpu" and sum(p.numel() for p in model.parameters()) < ONE_THREAD_BELOW_PARAMS:
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def fingerprint(cfg: DictConfig) -> str:
    """A hash of the scientific part of the config: a checkpoint resumes only under the same one."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_SCIENTIFIC:
        *parents, leaf = key.split(".")
        node = plain
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def build_model(cfg: DictConfig, data: TaskSet) -> nn.Module:
    """The net named by `cfg.net`, sized by `cfg.arch` (ViT) or `cfg.net.hidden` (MLP) and by the data."""
    net = cfg.net
    arch: dict[str, Any] = {"img_size": data.img_size, "in_chans": data.in_chans,
                            "num_classes": data.labels.num_classes}
    if MODELS[net.model].family == "vit":
        arch.update({k: v for k, v in OmegaConf.to_container(cfg.arch).items() if k != "img_size"})
    else:
        arch["hidden"] = list(net.hidden)
    overrides = {k: (list(v) if v is not None and k != "binary_scale" else v)
                 for k in ("binary_weights", "binary_inputs", "binary_scale") if (v := net.get(k)) is not None}
    return create_model(net.model, **overrides, **arch)


def make_sinks(cfg: DictConfig, run_dir: Path, total_epochs: int, sweep_id: str | None = None) -> list[Sink]:
    """Local files and console progress always; W&B when `logger.wandb` is configured (grouped by sweep)."""
    sinks: list[Sink] = [LocalSink(run_dir, plots_enabled=cfg.logger.plots),
                         ProgressSink(cfg.logger.progress, total_epochs)]
    if cfg.logger.wandb is not None:
        sinks.append(WandbSink(OmegaConf.to_container(cfg.logger.wandb, resolve=True), run_dir,
                               default_group=sweep_id))
    return sinks


def run_experiment(cfg: DictConfig, run_dir: str | Path, launcher_cpus: int | None = None,
                   sweep_id: str | None = None) -> dict[str, Any]:
    """Validate `cfg`, build data, model, optimizer settings and sinks, train, and return the results.

    `launcher_cpus`: the cpus_per_task of a local parallel launcher, the threads this job may use;
    `sweep_id`: names the multirun this job belongs to (the default W&B group)."""
    validate(cfg)
    if cfg.net.model not in MODELS:  # checked before any data is loaded
        raise UserError(f"unknown net.model {cfg.net.model!r}; choose one of {', '.join(MODELS)}")
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    tasks = parse_task_sequence(cfg.task_sequence, seed=cfg.seed, class_order_seed=cfg.data.class_order_seed)
    family = MODELS[cfg.net.model].family
    data = build_tasks(tasks, cfg.data.root, cfg.data.cache_dir, cfg.data.download, cfg.data.scenario,
                       cfg.arch.img_size if family == "vit" else None, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data).to(device)
    threads = set_threads(cfg.threads, launcher_cpus, model, device)
    meta = OmegaConf.to_object(cfg.meta) if OmegaConf.is_list(cfg.meta) else cfg.meta
    settings = TrainSettings(
        epochs_per_task=cfg.epochs_per_task, batch_size=cfg.batch_size, eval_batch_size=cfg.data.eval_batch_size,
        lr=cfg.lr, gamma=cfg.gamma, decay=cfg.decay, meta=meta, meta_on=cfg.optimizer.meta_on,
        meta_scale=cfg.optimizer.meta_scale,
        betas=tuple(cfg.optimizer.betas), eps=cfg.optimizer.eps, fresh_per_task=cfg.optimizer.fresh_per_task,
        implementation=cfg.optimizer.implementation, seed=cfg.seed, per_task=list(cfg.net.per_task),
        amp=device.type == "cuda", checkpoint=cfg.checkpoint, strategy=cfg.strategy.name,
        ewc_lambda=cfg.strategy.ewc_lambda, si_lambda=cfg.strategy.si_lambda, si_damping=cfg.strategy.si_damping,
        fisher_samples=cfg.strategy.fisher_samples)
    base = {"config": OmegaConf.to_container(cfg, resolve=True), "run_dir": str(run_dir), "device": str(device),
            "net": cfg.net.name, "meta": meta, "seed": cfg.seed, "strategy": cfg.strategy.name, "threads": threads,
            "parameters": sum(p.numel() for p in model.parameters())}
    trainer = ContinualTrainer(model, data, settings, run_dir, fingerprint(cfg),
                               make_sinks(cfg, run_dir, cfg.epochs_per_task * len(tasks), sweep_id),
                               base_results=base)
    return trainer.run()
