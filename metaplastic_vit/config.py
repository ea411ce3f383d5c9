"""Typed schema of the Hydra config, registered in Hydra's ConfigStore; the one declaration of what changes results.

`conf/config.yaml` lists `schema` first in its defaults, and every option file of the `net`, `optimizer`,
`strategy` and `logger` groups names its own schema (`/schema/<group>/<option>`), so a composed config is merged
onto these dataclasses: a wrong type or a bad choice (Enums) fails at composition. `validate` then builds the
dataclasses (running their range checks, each rule here and nowhere else) and refuses keys outside the schema,
even ones added with `+` (only `tags` is free-form), all before any data is loaded or anything is written.

Which keys change a run's results is declared once, on the schema's fields (`NOT_SCIENTIFIC`, or
`scientific_when(key)`); `science` derives from it the run's scientific settings (its fingerprint and what
reports group by) and `run_dirname` the run directory's name.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError

from .binarize import BinaryScale
from .data.boundaries import Boundaries
from .data.tasks import Scenario
from .errors import UserError
from .loop.precision import Precision
from .models import MODELS, Norm
from .optim import Implementation, MetaOn, MetaScale
from .sinks import load_all as load_sinks
from .strategies import load_all as load_strategies

NOT_SCIENTIFIC = {"scientific": False}  # field metadata: the key never changes a run's results


def scientific_when(key: str) -> dict[str, str]:
    """Field metadata: the key changes results only when config `key` is true."""
    return {"scientific": key}


def _is_meta(value: Any) -> bool:
    """Whether `value` is a metaplastic coefficient: a finite number >= 0."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


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
    norm: Norm | None = None  # null: the registry's; layer (per sample) or batch (running statistics)

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise UserError(f"unknown net {self.name!r}; choose one of {', '.join(MODELS)}")


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
        super().__post_init__()
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
        super().__post_init__()
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
        if self.embed_dim % self.num_heads:
            raise UserError(f"arch.num_heads {self.num_heads} does not divide arch.embed_dim {self.embed_dim}")


@dataclass
class DataConfig:
    """Where datasets live and how tasks are built from them."""

    root: str = field(default="data", metadata=NOT_SCIENTIFIC)
    cache_dir: str | None = field(default=None, metadata=NOT_SCIENTIFIC)  # null: <root>/.cache
    download: bool = field(default=False, metadata=NOT_SCIENTIFIC)
    scenario: Scenario = Scenario.auto
    class_order_seed: int | None = None  # null: classes split in label order
    val_fraction: float = 0.1  # of each task's training set, held out for choosing hyper-parameters
    # accuracies depend on the test batch only where BatchNorm normalises each test batch with its own statistics
    eval_batch_size: int = field(default=1000, metadata=scientific_when("net.transductive_bn"))
    # whether the learner is told where tasks change: hard (announced, the paper), none (withheld), gradual (tasks
    # blend over a transition window); data.boundaries
    boundaries: Boundaries = Boundaries.hard
    transition: float = 0.5  # gradual: the window around each boundary, as a share of a task's steps

    def __post_init__(self) -> None:
        _positive("data.eval_batch_size", self.eval_batch_size)
        if not 0 < self.transition <= 1:
            raise UserError(f"data.transition must lie in (0, 1], got {self.transition}")
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
    implementation: Implementation = field(default=Implementation.auto, metadata=NOT_SCIENTIFIC)

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"optimizer.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if not self.eps > 0:
            raise UserError(f"optimizer.eps must be > 0, got {self.eps}")
        if self.meta_from_task < 0:
            raise UserError(f"optimizer.meta_from_task must be >= 0, got {self.meta_from_task}")
        for group, spec in self.meta_layers.items():
            if not isinstance(spec, dict) or set(spec) != {"patterns", "meta"}:
                raise UserError(f"optimizer.meta_layers.{group} must be {{patterns: [fnmatch patterns], meta: number}}"
                                f", got {spec!r}")
            if not _is_meta(spec["meta"]):
                raise UserError(f"optimizer.meta_layers.{group}.meta must be a number >= 0, got {spec['meta']!r}")


@dataclass
class MESUConfig:
    """optimizer=mesu: metaplasticity from synaptic uncertainty (metaplastic_vit.mesu): every parameter a Gaussian
    synapse, updated by the MESU rule; lr is the means' rate (from the top level, as for MetaplasticAdam)."""

    _target_: str = "metaplastic_vit.mesu.mesu"
    _partial_: bool = True
    lr: float = MISSING
    lr_sigma: float = 1.0  # the standard deviations' rate
    sigma_prior: float = 0.1  # the prior's standard deviation (its mean is 0)
    memory: float = 1.0e5  # N: the batches the prior lets the synapses remember
    ratio_max: float | None = 0.1  # each step clipped to +-ratio_max * sigma (the reference's PyTorch code); null: not
    sigma_init: float | None = None  # the standard deviations' start; null: sigma_prior
    samples_train: int = 1  # weight samples a training step averages its loss over
    samples_test: int = 0  # fixed weight samples whose predictions a test averages; 0: the mean weights
    batch_size: Any = "${batch_size}"  # turns the batch-mean loss into MESU's summed cost
    seed: Any = "${seed}"  # draws the test samples

    def __post_init__(self) -> None:
        for key in ("lr_sigma", "sigma_prior", "memory"):
            if not getattr(self, key) > 0:
                raise UserError(f"optimizer.{key} must be > 0, got {getattr(self, key)}")
        if self.ratio_max is not None and not 0 < self.ratio_max < 1:
            raise UserError(f"optimizer.ratio_max must lie in (0, 1) or be null, got {self.ratio_max}")
        if self.sigma_init is not None and not self.sigma_init > 0:
            raise UserError(f"optimizer.sigma_init must be > 0 or null, got {self.sigma_init}")
        _positive("optimizer.samples_train", self.samples_train)
        _positive("optimizer.samples_test", self.samples_test, minimum=0)


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
    # result sinks by name, each a _target_ node of its own schema (metaplastic_vit.sinks): files, console, wandb
    logger: dict[str, Any] = field(default_factory=dict, metadata=NOT_SCIENTIFIC)
    paths: PathsConfig = field(default_factory=PathsConfig, metadata=NOT_SCIENTIFIC)
    meta: Any = 0.0  # a number, or a list with one value per metaplastic weight tensor
    lr: float = 0.005
    gamma: float = 1.0
    decay: float = 1e-7
    epochs_per_task: int = 20
    task_sequence: list[str] = field(default_factory=lambda: ["pdigits", "pdigits", "pdigits"])
    device: str = field(default="auto", metadata=NOT_SCIENTIFIC)
    precision: Precision = Precision.auto
    seed: int = 0
    batch_size: int = 100
    fresh_optimizer: bool = True  # a new optimizer (fresh moments) at every task, as in the paper
    # null: SLURM_CPUS_PER_TASK, else the launcher's, else all cores
    threads: int | None = field(default=None, metadata=NOT_SCIENTIFIC)
    compile: bool = field(default=False, metadata=NOT_SCIENTIFIC)  # torch.compile the model (training, testing)
    checkpoint: bool = field(default=True, metadata=NOT_SCIENTIFIC)
    sweep_name: str = field(default="adhoc", metadata=NOT_SCIENTIFIC)
    # free-form labels, kept in the results and W&B
    tags: dict[str, Any] = field(default_factory=dict, metadata=NOT_SCIENTIFIC)

    def __post_init__(self) -> None:
        metas = list(self.meta) if isinstance(self.meta, list | tuple) else [self.meta]
        if not metas or not all(_is_meta(m) for m in metas):
            raise UserError(f"meta must be a number >= 0 or a list of them, got {self.meta!r}")
        if getattr(self.optimizer, "meta_layers", None) and isinstance(self.meta, list | tuple):
            raise UserError("give layer-wise meta either as a list in meta or as optimizer.meta_layers, not both")
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
        if self.data.boundaries != Boundaries.hard:
            self._refuse_boundary_users()
        if getattr(self.optimizer, "meta_from_task", 0) and not self.fresh_optimizer:
            raise UserError("optimizer.meta_from_task needs fresh_optimizer=true (the optimizer is rebuilt at every "
                            "task with that task's meta)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"unknown device {self.device!r}; choose one of auto, cpu, cuda or cuda:<index>")

    def _refuse_boundary_users(self) -> None:
        """Without announced task boundaries, what needs them is refused with one line saying why."""
        why = {"gamma": "a learning rate per task (gamma) needs task boundaries: set gamma=1",
               "meta_from_task": "optimizer.meta_from_task needs task boundaries: set it to 0"}
        reason = (why["gamma"] if self.gamma != 1 else why["meta_from_task"]
                  if getattr(self.optimizer, "meta_from_task", 0) else self.strategy.without_boundaries())
        if reason:
            raise UserError(f"data.boundaries={self.data.boundaries.value}: {reason}")


FREE_FORM = ("tags",)  # nodes that take any keys
GROUP_SCHEMAS: dict[str, list[type]] = {}  # config group -> the schemas its options may have (filled by register)


def register() -> None:
    """Put the schemas in Hydra's ConfigStore and register the config's resolver."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    nets = {"vit": ViTNetConfig, "mlp": MLPNetConfig, "walk": WalkNetConfig}
    optimizers = {"metaplastic_adam": MetaplasticAdamConfig, "mesu": MESUConfig}
    groups = {"net": nets, "optimizer": optimizers, "strategy": load_strategies(), "sink": load_sinks()}
    for group, schemas in groups.items():
        for name, schema in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=schema)
        GROUP_SCHEMAS[group] = list(schemas.values())
    OmegaConf.register_new_resolver("run_dirname", run_dirname, replace=True)


def non_scientific(schema: type = None, prefix: str = "") -> dict[str, str | None]:
    """Every config key that does not always change results (dotted), mapped to None when it never does, or to
    the key that makes it matter when true: read off the schema's field metadata, the groups' schemas included."""
    if not GROUP_SCHEMAS:
        register()
    found: dict[str, str | None] = {}
    hints = typing.get_type_hints(schema or Config)
    for f in fields(schema or Config):
        key = f"{prefix}{f.name}"
        scientific = f.metadata.get("scientific", True)
        if scientific is not True:
            found[key] = scientific or None
            continue
        kind = hints[f.name]
        for nested in [kind] if is_dataclass(kind) else GROUP_SCHEMAS.get(key, []) if kind is Any else []:
            found.update(non_scientific(nested, f"{key}."))
    return found


def _excluded(key: str, config: dict[str, Any], declared: dict[str, str | None]) -> bool:
    """Whether dotted `key` (or a node above it) is declared non-scientific in a run with flat `config`."""
    for ignored, condition in declared.items():
        if key == ignored or key.startswith(f"{ignored}."):
            return condition is None or not config.get(condition)
    return False


def _copy_of(node: DictConfig, key: str) -> bool:
    """Whether node[key] is an interpolated copy of another setting (net.embed_dim: ${arch.embed_dim}), not a
    value of its own (meta: ${tags.validated.meta} is the value validation chose, kept)."""
    if not OmegaConf.is_interpolation(node, key):
        return False
    source = re.fullmatch(r"\$\{([\w.]+)\}", str(node._get_node(key)._value()))
    return source is not None and not source.group(1).startswith(tuple(f"{k}." for k in FREE_FORM))


def science(cfg: DictConfig, precision: Precision) -> dict[str, Any]:
    """The settings that change a run's results, flat (dotted keys) and each once: every key but those the
    schema declares non-scientific and the interpolated copies of other keys, the precision as resolved."""
    declared = non_scientific()
    flat: dict[str, Any] = {}

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node.keys():
            full = f"{prefix}{key}"
            if _copy_of(node, key):
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none():
                walk(child, f"{full}.")
            elif OmegaConf.is_config(child):
                flat[full] = OmegaConf.to_container(child, resolve=True, enum_to_str=True)
            else:
                value = node[key]
                flat[full] = value.value if isinstance(value, Enum) else value
    walk(cfg, "")
    flat["precision"] = Precision(precision).value
    return {k: v for k, v in sorted(flat.items()) if not _excluded(k, flat, declared)}


def fingerprint(science: dict[str, Any]) -> str:
    """A hash of a run's scientific settings: a checkpoint resumes only under the same one."""
    return hashlib.sha256(json.dumps(science, sort_keys=True).encode()).hexdigest()[:16]


def run_dirname(overrides: Any) -> str:
    """A run (or search) directory's name from its command-line overrides, sorted: those that never change
    results are left out (the schema's declaration, Hydra's own keys, the +search choice), so the same
    experiment always lands in the same directory. "default" without any; no path separators."""
    declared = {k for k, condition in non_scientific().items() if condition is None}
    kept = sorted(o for o in overrides if not _dropped(o.split("=", 1)[0].lstrip("+~"), declared))
    return (",".join(kept) or "default").replace("/", "_")


def _dropped(key: str, declared: set[str]) -> bool:
    return key.startswith("hydra") or key == "search" or any(key == d or key.startswith(f"{d}.") for d in declared)


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
    except InterpolationKeyError as exc:
        missing = re.search(r"'(tags\.validated\.[\w.]+)'", str(exc))
        if missing is None:
            raise
        raise UserError(f"this configuration reads {missing[1]}, which its candidate in sweeps/candidates/ does not "
                        "hold yet: run the candidate's search first (scripts/science.sh names the search of each "
                        "part), which exports the value") from None
    except Exception as exc:  # OmegaConf wraps a check's error with its key
        cause = exc.__cause__ if isinstance(exc.__cause__, UserError) else None
        if cause is not None:
            raise cause from None
        raise
