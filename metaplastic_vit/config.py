"""Typed schema of the Hydra config, registered in Hydra's ConfigStore.

`conf/config.yaml` lists `schema` first in its defaults, so every composed config is merged onto these
dataclasses: an unknown key or a value of the wrong type fails at composition, before any training.
Value checks that types cannot express (ranges, names, lengths) live in `validate`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from .errors import UserError


@dataclass
class NetConfig:
    """Which model: a registered name plus optional pattern overrides (a new variant is data only)."""

    name: str = MISSING  # label used in run names and reports
    model: str = MISSING  # key of metaplastic_vit.models.MODELS (vit, bvit, hybrid, bnn, dnn, ...)
    binary_weights: list[str] | None = None  # null: the model's own policy
    binary_inputs: list[str] | None = None
    binary_scale: str | None = None  # none | fan_in | mean_abs; null: the model's default
    per_task: list[str] = field(default_factory=list)  # modules whose state is kept once per task
    hidden: list[int] = field(default_factory=lambda: [1024, 1024])  # MLP widths (bnn/dnn)


@dataclass
class ArchConfig:
    """ViT sizes; img_size null keeps the data's native size."""

    img_size: int | None = None
    patch_size: int = 2
    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True


@dataclass
class DataConfig:
    """Where datasets live and how tasks are built from them."""

    root: str = "data"
    cache_dir: str | None = None  # null: <root>/.cache
    download: bool = False
    scenario: str = "auto"  # auto | domain | class | task
    class_order_seed: int | None = None  # null: classes split in label order
    eval_batch_size: int = 1000


@dataclass
class OptimizerConfig:
    """MetaplasticAdam settings beyond the top-level lr / decay / meta."""

    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    meta_on: str = "all"  # all: every weight with >= 2 dims; binary: binary layers' weights only
    meta_scale: str = "none"  # none: f = 1 - tanh^2(meta |W|), the paper; rms: meta |W| / rms(W) per tensor
    fresh_per_task: bool = True  # the paper re-created the optimizer at every task
    implementation: str = "auto"  # auto | compiled | foreach


@dataclass
class StrategyConfig:
    """How earlier tasks are protected besides metaplasticity: naive, ewc, si, or joint (upper bound)."""

    name: str = "naive"
    ewc_lambda: float = 100.0  # EWC penalty strength (lambda/2 * sum F (theta - theta*)^2)
    fisher_samples: int = 512  # samples of each task used for the Fisher
    si_lambda: float = 1.0  # SI penalty strength c
    si_damping: float = 0.1  # SI's xi


@dataclass
class WandbConfig:
    """Weights & Biases run settings (logger=wandb)."""

    mode: str = "auto"  # auto: online with credentials, else offline | online | offline | disabled
    project: str = "metaplastic-vit"
    entity: str | None = None
    group: str | None = None  # null: the multirun sweep, so a meta sweep is one group
    tags: list[str] = field(default_factory=list)
    name: str | None = None  # null: <net>-meta<meta>-s<seed>
    init_timeout: float = 90.0


@dataclass
class LoggerConfig:
    """Result sinks: local files always; W&B when `wandb` is set."""

    plots: bool = True
    progress: str = "auto"  # auto: a bar on a terminal, one line per epoch otherwise; bar | lines | none
    wandb: WandbConfig | None = None


@dataclass
class Config:
    """The whole experiment. The seed's knobs are top-level keys so its commands translate one to one."""

    net: NetConfig = MISSING
    arch: ArchConfig = field(default_factory=ArchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: Any = None
    meta: Any = 0.0  # a number, or a list with one value per metaplastic weight tensor
    lr: float = 0.005
    gamma: float = 1.0
    decay: float = 1e-7
    epochs_per_task: int = 20
    task_sequence: list[str] = field(default_factory=lambda: ["pdigits", "pdigits", "pdigits"])
    device: str = "auto"
    seed: int = 0
    batch_size: int = 100
    threads: int | None = None  # null: SLURM_CPUS_PER_TASK, else all cores
    checkpoint: bool = True
    sweep_name: str = "adhoc"


SCENARIOS = ("auto", "domain", "class", "task")
WANDB_MODES = ("auto", "online", "offline", "disabled")
PROGRESS = ("auto", "bar", "lines", "none")
STRATEGIES = ("naive", "ewc", "si", "joint")
META_ON = ("all", "binary")
DEVICES = ("auto", "cpu", "cuda")


def local_batch(launcher_target: str, cpus_per_task: int | None) -> int | None:
    """How many jobs the submitit local launcher may run at once: cores // cpus_per_task (else no limit)."""
    if "LocalLauncher" not in launcher_target:
        return None
    return max(1, (os.cpu_count() or 1) // (cpus_per_task or 1))


def run_dirname(overrides: str) -> str:
    """A run directory name from the command-line overrides ("default" without any); no path separators."""
    return (overrides or "default").replace("/", "_")


def register() -> None:
    """Put the schema in Hydra's ConfigStore (as `schema`) and register the config's resolvers."""
    ConfigStore.instance().store(name="schema", node=Config)
    OmegaConf.register_new_resolver("run_dirname", run_dirname, replace=True)
    OmegaConf.register_new_resolver("local_batch", local_batch, replace=True)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate(cfg: DictConfig) -> None:
    """Range and choice checks that the types cannot express; raises UserError with one line."""
    meta = cfg.meta
    metas = list(meta) if isinstance(meta, ListConfig | list) else [meta]
    if not metas or not all(_number(m) and math.isfinite(m) and m >= 0 for m in metas):
        shown = OmegaConf.to_object(meta) if isinstance(meta, ListConfig) else meta
        raise UserError(f"meta must be a number >= 0 or a list of them, got {shown!r}")
    checks = [
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (cfg.gamma > 0, f"gamma must be > 0, got {cfg.gamma}"),
        (cfg.decay >= 0, f"decay must be >= 0, got {cfg.decay}"),
        (cfg.epochs_per_task >= 1, f"epochs_per_task must be >= 1, got {cfg.epochs_per_task}"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.data.eval_batch_size >= 1, f"data.eval_batch_size must be >= 1, got {cfg.data.eval_batch_size}"),
        (len(cfg.task_sequence) >= 1, "task_sequence must name at least one task"),
        (cfg.device in DEVICES or cfg.device.startswith("cuda:"),
         f"unknown device {cfg.device!r}; choose one of {', '.join(DEVICES)} or cuda:<index>"),
        (cfg.data.scenario in SCENARIOS,
         f"unknown data.scenario {cfg.data.scenario!r}; choose one of {', '.join(SCENARIOS)}"),
        (cfg.optimizer.meta_on in META_ON,
         f"unknown optimizer.meta_on {cfg.optimizer.meta_on!r}; choose one of {', '.join(META_ON)}"),
        (cfg.threads is None or cfg.threads >= 1, f"threads must be >= 1, got {cfg.threads}"),
        (cfg.strategy.name in STRATEGIES,
         f"unknown strategy {cfg.strategy.name!r}; choose one of {', '.join(STRATEGIES)}"),
        (cfg.strategy.ewc_lambda >= 0 and cfg.strategy.si_lambda >= 0 and cfg.strategy.si_damping > 0,
         "strategy.ewc_lambda and si_lambda must be >= 0 and si_damping > 0"),
        (cfg.logger.progress in PROGRESS,
         f"unknown logger.progress {cfg.logger.progress!r}; choose one of {', '.join(PROGRESS)}"),
        (cfg.logger.wandb is None or cfg.logger.wandb.mode in WANDB_MODES,
         f"unknown logger.wandb.mode {cfg.logger.wandb and cfg.logger.wandb.mode!r}; "
         f"choose one of {', '.join(WANDB_MODES)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
