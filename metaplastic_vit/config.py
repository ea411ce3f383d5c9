"""Typed schema of the Hydra config, registered in Hydra's ConfigStore.

`conf/config.yaml` lists `schema` first in its defaults, and every option file of the `net`, `optimizer` and
`strategy` groups names its own schema (`/schema/<group>/<option>`), so a composed config is merged onto
these dataclasses: a wrong type or a bad choice (Enums) fails at composition. `validate` then builds the
dataclasses (running their range checks) and refuses keys outside the schema, even ones added with `+`
(only `tags` is free-form), all before any data is loaded or anything is written.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .binarize import BinaryScale
from .data.tasks import Scenario
from .errors import UserError
from .optim import Implementation, MetaOn, MetaScale
from .sinks.console import ConsoleSinkConfig
from .sinks.local import LocalSinkConfig
from .sinks.wandb_sink import WandbSinkConfig
from .strategies import load_all
from .trainer import Precision


def _positive(name: str, value: float | int | None, minimum: float = 1, optional: bool = False) -> None:
    if optional and value is None:
        return
    if value is None or not value >= minimum:
        raise UserError(f"{name} must be >= {minimum:g}, got {value}")


@dataclass
class _NetConfig:
    """Fields of every net: a registry name plus optional policy overrides (a variant needs no code)."""

    _target_: str = "metaplastic_vit.models.create_model"
    _partial_: bool = True
    name: str = MISSING  # key of metaplastic_vit.models.MODELS
    binary_weights: list[str] | None = None  # null: the registry's policy
    binary_inputs: list[str] | None = None
    binary_scale: BinaryScale | None = None
    per_task: list[str] | None = None  # modules kept once per task (task-aware tests only)
    frozen: list[str] | None = None  # parameters kept at their initial values (e.g. [pos_embed, cls_token])
    norm: str | None = None  # null: the registry's; layer (per sample) or batch (running statistics)


@dataclass
class ViTNetConfig(_NetConfig):
    """A timm ViT net; its sizes come from the `arch` group."""

    norm_affine: bool | None = None  # null: the registry's; false: norms without a learned scale and shift

    img_size: Any = "${arch.img_size}"  # null: the data's native size
    patch_size: Any = "${arch.patch_size}"
    embed_dim: Any = "${arch.embed_dim}"
    depth: Any = "${arch.depth}"
    num_heads: Any = "${arch.num_heads}"
    mlp_ratio: Any = "${arch.mlp_ratio}"
    qkv_bias: Any = "${arch.qkv_bias}"
    proj_bias: Any = "${arch.proj_bias}"
    class_token: Any = "${arch.class_token}"


@dataclass
class MLPNetConfig(_NetConfig):
    """The paper's MLP family."""

    hidden: list[int] = field(default_factory=lambda: [1024, 1024])
    transductive_bn: bool = False  # normalise each test batch with its own statistics (the paper's code)

    def __post_init__(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise UserError(f"net.hidden must list layer widths >= 1, got {list(self.hidden)}")


@dataclass
class WalkNetConfig(_NetConfig):
    """A step of the walk from the paper's MLP to the ViT (models.TokenMLP: one token, no attention)."""

    embed_dim: int = 1024
    depth: int = 1
    mlp_ratio: float | None = None  # null: each block is one map; else the ViT's MLP of this ratio
    residual: bool = True
    prenorm: bool = False  # false: post-norm as the paper's MLP; true: the ViT's pre-norm placement
    gelu: bool = False  # GELU between a block's two maps, as the ViT's MLP

    def __post_init__(self) -> None:
        _positive("net.embed_dim", self.embed_dim)
        _positive("net.depth", self.depth)
        if self.mlp_ratio is not None and not self.mlp_ratio > 0:
            raise UserError(f"net.mlp_ratio must be > 0 or null, got {self.mlp_ratio}")
        if self.gelu and self.mlp_ratio is None:
            raise UserError("net.gelu needs two maps per block: set net.mlp_ratio")


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
    proj_bias: bool = True  # biases of the attention projection and the MLP layers
    class_token: bool = True  # false: no class token, the head reads the mean of the patch tokens

    def __post_init__(self) -> None:
        _positive("arch.img_size", self.img_size, optional=True)
        for key in ("patch_size", "embed_dim", "depth", "num_heads"):
            _positive(f"arch.{key}", getattr(self, key))
        if not self.mlp_ratio > 0:
            raise UserError(f"arch.mlp_ratio must be > 0, got {self.mlp_ratio}")


@dataclass
class DataConfig:
    """Where datasets live and how tasks are built from them."""

    root: str = "data"
    cache_dir: str | None = None  # null: <root>/.cache
    download: bool = False
    scenario: Scenario = Scenario.auto
    class_order_seed: int | None = None  # null: classes split in label order
    val_fraction: float = 0.1  # of each task's training set, held out for choosing hyper-parameters
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        _positive("data.eval_batch_size", self.eval_batch_size)
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"data.val_fraction must lie in [0, 1), got {self.val_fraction}")


@dataclass
class MetaplasticAdamConfig:
    """optimizer=metaplastic_adam: the optimizer's settings (lr, decay and meta come from the top level)."""

    _target_: str = "metaplastic_vit.optim.metaplastic_adam"
    _partial_: bool = True
    lr: float = MISSING
    weight_decay: float = MISSING
    meta: Any = MISSING
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    meta_on: MetaOn = MetaOn.all
    meta_layers: dict[str, Any] = field(default_factory=dict)  # {group: {patterns: [...], meta: m}}
    meta_from_task: int = 0  # tasks before this one (0-based) learn with meta 0 (needs fresh_optimizer)
    meta_scale: MetaScale = MetaScale.none
    implementation: Implementation = Implementation.auto

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"optimizer.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if not self.eps > 0:
            raise UserError(f"optimizer.eps must be > 0, got {self.eps}")
        if self.meta_from_task < 0:
            raise UserError(f"optimizer.meta_from_task must be >= 0, got {self.meta_from_task}")


@dataclass
class LoggerConfig:
    """Result sinks, each built from its node: files and console always, W&B when `wandb` is set."""

    files: LocalSinkConfig = field(default_factory=LocalSinkConfig)
    console: ConsoleSinkConfig = field(default_factory=ConsoleSinkConfig)
    wandb: WandbSinkConfig | None = None


@dataclass
class PathsConfig:
    """Where runs and data go."""

    output_dir: str = "outputs"
    data_dir: str = "data"


@dataclass
class Config:
    """The whole experiment. The seed's knobs are top-level keys so its commands translate one to one."""

    net: Any = MISSING
    arch: ArchConfig = field(default_factory=ArchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: Any = MISSING
    strategy: Any = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    meta: Any = 0.0  # a number, or a list with one value per metaplastic weight tensor
    lr: float = 0.005
    gamma: float = 1.0
    decay: float = 1e-7
    epochs_per_task: int = 20
    task_sequence: list[str] = field(default_factory=lambda: ["pdigits", "pdigits", "pdigits"])
    device: str = "auto"
    precision: Precision = Precision.auto
    seed: int = 0
    batch_size: int = 100
    fresh_optimizer: bool = True  # a new optimizer (fresh moments) at every task, as in the paper
    threads: int | None = None  # null: SLURM_CPUS_PER_TASK, else the launcher's, else all cores
    compile: bool = False  # torch.compile the model for training and testing
    checkpoint: bool = True
    sweep_name: str = "adhoc"
    tags: dict[str, Any] = field(default_factory=dict)  # free-form labels, kept in the results and W&B

    def __post_init__(self) -> None:
        metas = list(self.meta) if isinstance(self.meta, list | tuple) else [self.meta]
        if not metas or not all(isinstance(m, int | float) and not isinstance(m, bool) and math.isfinite(m) and m >= 0
                                for m in metas):
            raise UserError(f"meta must be a number >= 0 or a list of them, got {self.meta!r}")
        if not self.lr > 0:
            raise UserError(f"lr must be > 0, got {self.lr}")
        if not self.gamma > 0:
            raise UserError(f"gamma must be > 0, got {self.gamma}")
        if not self.decay >= 0:
            raise UserError(f"decay must be >= 0, got {self.decay}")
        _positive("epochs_per_task", self.epochs_per_task)
        _positive("batch_size", self.batch_size)
        _positive("threads", self.threads, optional=True)
        if not 0 <= self.seed < 2**63:
            raise UserError(f"seed must lie in [0, 2^63), got {self.seed}")
        if not self.task_sequence:
            raise UserError("task_sequence must name at least one task")
        if getattr(self.optimizer, "meta_from_task", 0) and not self.fresh_optimizer:
            raise UserError("optimizer.meta_from_task needs fresh_optimizer=true (the optimizer is rebuilt at every "
                            "task with that task's meta)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"unknown device {self.device!r}; choose one of auto, cpu, cuda or cuda:<index>")


FREE_FORM = ("tags",)  # nodes that take any keys


def run_dirname(overrides: str) -> str:
    """A run directory name from the command-line overrides ("default" without any); no path separators."""
    return (overrides or "default").replace("/", "_")


def overrides_dirname(overrides: list[str], exclude: list[str]) -> str:
    """Like Hydra's job.override_dirname, for a sweep directory (resolved before any job exists): the
    command-line overrides sorted, without the excluded keys and the +search choice."""
    kept = sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in [*exclude, "search"])
    return run_dirname(",".join(kept))


def register() -> None:
    """Put the schemas in Hydra's ConfigStore and register the config's resolvers."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="schema/net", name="vit", node=ViTNetConfig)
    cs.store(group="schema/net", name="mlp", node=MLPNetConfig)
    cs.store(group="schema/net", name="walk", node=WalkNetConfig)
    cs.store(group="schema/optimizer", name="metaplastic_adam", node=MetaplasticAdamConfig)
    for name, schema in load_all().items():
        cs.store(group="schema/strategy", name=name, node=schema)
    OmegaConf.register_new_resolver("run_dirname", run_dirname, replace=True)
    OmegaConf.register_new_resolver("overrides_dirname", overrides_dirname, replace=True)


def unknown_keys(node: Any, path: str = "") -> list[tuple[str, list[str]]]:
    """(dotted key, the node's valid keys) for every key outside the schema, e.g. added with `+`."""
    found: list[tuple[str, list[str]]] = []
    if not isinstance(node, DictConfig) or node._is_none():
        return found
    schema = OmegaConf.get_type(node)
    valid = [f.name for f in fields(schema)] if schema is not None and is_dataclass(schema) else None
    for key in node.keys():
        full = f"{path}.{key}" if path else str(key)
        if valid is not None and key not in valid:
            found.append((full, valid))
        elif full not in FREE_FORM and not OmegaConf.is_missing(node, key):
            found += unknown_keys(node._get_node(key), full)
    return found


def validate(cfg: DictConfig) -> Config:
    """The config as checked dataclasses; a UserError (one line) for a key outside the schema or a bad value."""
    for key, valid in unknown_keys(cfg):
        leaf = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, valid, n=1)
        hint = f"; did you mean {key[:-len(leaf)]}{close[0]}?" if close else ""
        raise UserError(f"unknown config key {key!r}{hint} (keys outside the schema are refused, also with '+'; "
                        "free-form labels go under tags, e.g. +tags.note=...)")
    try:
        return OmegaConf.to_object(cfg)
    except UserError:
        raise
    except Exception as exc:  # OmegaConf wraps a check's error with its key
        cause = exc.__cause__ if isinstance(exc.__cause__, UserError) else None
        if cause is not None:
            raise cause from None
        raise
