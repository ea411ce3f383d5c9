"""MetaplasticAdam: Adam whose sign-flipping updates are damped by 1 - tanh^2(meta * |W|).

The rule is the paper's Adam_meta (Laborieux et al. 2021): for every weight with two or more dimensions,
where the first moment points toward a sign flip (sign(W) * m > 0) the step uses f_meta * m instead of m,
with f_meta = 1 - tanh^2(meta * |W|) (`attenuation`, also used by the diagnostics). Updates that grow |W|
are never attenuated; with meta = 0 this is exactly Adam with L2 weight decay. The update is written once;
it runs eagerly or compiled by torch.compile into one fused pass per tensor.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .binarize import binary_modules
from .errors import UserError

log = logging.getLogger(__name__)


class Implementation(StrEnum):
    """How the update runs: foreach (eager), compiled (torch.compile), auto (compiled where it pays)."""

    auto = "auto"
    compiled = "compiled"
    foreach = "foreach"


class MetaScale(StrEnum):
    """What meta multiplies: |W| (the paper) or |W| / rms(W) of the tensor (budget-independent variant)."""

    none = "none"
    rms = "rms"


class MetaOn(StrEnum):
    """Which weights metaplasticity acts on: every tensor with >= 2 dims (the paper) or binary layers only."""

    all = "all"
    binary = "binary"


# "auto" compiles on CPU from this many parameters per step call: compiling costs seconds once per process
# and model, and pays off only for models whose step is long enough (benchmarks/bench_optimizer.py).
AUTO_COMPILE_MIN_PARAMS_CPU = 1_000_000

_NEG_2_OVER_LN2 = -2 / math.log(2)  # exp(y) = 2^(y / ln 2)


def attenuation(weight: torch.Tensor, meta: float | torch.Tensor, relative: bool = False) -> torch.Tensor:
    """f_meta = 1 - tanh^2(meta * |W|) elementwise (|W| / rms(W) when `relative`), in (0, 1].

    Computed as sech^2(x) = 4 e / (1 + e)^2 with e = exp(-2x) = 2^(-2x / ln 2): one exponential, no overflow,
    and accurate where f_meta is tiny (1 - tanh^2 cancels there); inductor lowers it to one fused loop.
    """
    x = weight.abs()
    if relative:
        x = x / (torch.linalg.vector_norm(weight) / math.sqrt(weight.numel())).clamp_min(1e-12)
    e = torch.pow(2.0, x * (meta * _NEG_2_OVER_LN2))
    return 4 * (e / ((e + 1) * (e + 1)))


def _applies(meta: float | torch.Tensor) -> bool:
    """Whether the rule acts on a tensor: for a number when it is not 0, always for a 0-dim tensor (whose
    value the compiled step does not specialize on; 0 then gives exactly Adam's step, f_meta = 1)."""
    return isinstance(meta, torch.Tensor) or meta != 0


def metaplastic_adam_update(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                            exp_avg_sqs: list[torch.Tensor], metas: list[float | torch.Tensor],
                            step_size: float | torch.Tensor, bias_correction2_sqrt: float | torch.Tensor,
                            beta1: float, beta2: float, eps: float, weight_decay: float,
                            relative: bool = False) -> None:
    """One metaplastic Adam step in place on lists of tensors.

    `metas[i]` is the coefficient of tensor i: a number (0 for tensors the rule leaves alone, e.g. 1-D
    ones) or a 0-dim tensor (always applied). The compiled version takes the metas and the step-dependent
    scalars as 0-dim tensors, so it never recompiles as steps go on or meta changes. Every op here has an
    inductor lowering, so torch.compile fuses the step into one loop per tensor; keep it that way.
    """
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)

    moments = list(exp_avgs)
    for i, meta in enumerate(metas):
        if not _applies(meta):
            continue
        w, m = params[i], exp_avgs[i]
        # sign(W) * relu(sign(W) * m) is m where sign(W) * m > 0 (consolidating) and 0 elsewhere;
        # (m - c) + f_meta * c is then f_meta * m where consolidating and m elsewhere.
        signs = torch.sign(w)
        consolidating = (signs * m).clamp_min_(0.0).mul_(signs)
        moments[i] = (m - consolidating).addcmul_(consolidating, attenuation(w, meta, relative))

    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    updates = torch._foreach_div(moments, denom)
    torch._foreach_mul_(updates, step_size)
    torch._foreach_sub_(params, updates)


_compiled_update: Callable[..., None] | None = None


def _compiled() -> Callable[..., None]:
    """The update compiled once per process (torch.compile caches one graph per model layout)."""
    global _compiled_update
    if _compiled_update is None:
        _compiled_update = torch.compile(metaplastic_adam_update, dynamic=False, fullgraph=True)
    return _compiled_update


class MetaplasticAdam(Optimizer):
    """Adam with L2 weight decay and the metaplastic attenuation of sign-flipping updates.

    `meta` is a per-param-group value, so layer-wise meta is a list of param groups. It applies to
    tensors with two or more dimensions; 1-D tensors (biases, norms) get plain Adam. `meta_scale="rms"`
    (per group) applies meta to |W| divided by the tensor's current RMS: a budget-independent variant.
    `implementation`: "foreach" (eager), "compiled" (torch.compile of the same math), or "auto": compiled
    on CUDA, and on CPU from AUTO_COMPILE_MIN_PARAMS_CPU parameters; foreach when compiling fails.
    Each parameter keeps its own step count (its bias correction); parameters that share settings and
    step count are updated in one call.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, meta: float = 0.0,
                 meta_scale: MetaScale | str = MetaScale.none,
                 implementation: Implementation | str = Implementation.auto) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, meta=meta,
                        meta_scale=MetaScale(meta_scale))
        super().__init__(params, defaults)
        self.implementation = Implementation(implementation)
        self._compile_failed = False  # "auto" then stays on foreach

    def compiles(self, params: list[torch.Tensor]) -> bool:
        """Whether a step call on `params` (tensors on one device) runs compiled."""
        if self.implementation != Implementation.auto:
            return self.implementation == Implementation.compiled
        if self._compile_failed:
            return False
        return params[0].device.type == "cuda" or sum(p.numel() for p in params) >= AUTO_COMPILE_MIN_PARAMS_CPU

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        calls: dict[tuple, list[tuple[torch.Tensor, float]]] = {}  # shared settings -> (param, meta)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MetaplasticAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = state["step"] + 1  # a new tensor: never shared with a loaded state dict
                settings = (p.device, group["lr"], *group["betas"], group["eps"], group["weight_decay"],
                            float(state["step"]), MetaScale(group["meta_scale"]) == MetaScale.rms)
                calls.setdefault(settings, []).append((p, float(group["meta"])))
        for (device, lr, beta1, beta2, eps, weight_decay, step, relative), members in calls.items():
            params = [p for p, _ in members]
            args = (params, [p.grad for p in params], [self.state[p]["exp_avg"] for p in params],
                    [self.state[p]["exp_avg_sq"] for p in params])
            step_size = lr / (1 - beta1**step)
            bias_correction2_sqrt = math.sqrt(1 - beta2**step)
            if self.compiles(params):
                # float64 like the Python floats of the eager step: meta * constant rounds the same way
                values = {meta: torch.tensor(meta, dtype=torch.float64, device=device)
                          for p, meta in members if p.dim() >= 2}
                metas = [values[meta] if p.dim() >= 2 else 0.0 for p, meta in members]
                if self._run_compiled(*args, metas, torch.tensor(step_size, device=device),
                                      torch.tensor(bias_correction2_sqrt, device=device),
                                      beta1, beta2, eps, weight_decay, relative):
                    continue
            metaplastic_adam_update(*args, [meta if p.dim() >= 2 else 0.0 for p, meta in members], step_size,
                                    bias_correction2_sqrt, beta1, beta2, eps, weight_decay, relative)
        return loss

    def _run_compiled(self, *args: Any) -> bool:
        """Run the compiled update; False (nothing done) when "auto" cannot compile it, e.g. without a C++
        compiler or past dynamo's recompile limit, which then stays on foreach."""
        from torch._dynamo.exc import BackendCompilerFailed, FailOnRecompileLimitHit

        try:
            _compiled()(*args)
        except (BackendCompilerFailed, FailOnRecompileLimitHit) as exc:
            if self.implementation == Implementation.compiled:
                raise
            log.warning("MetaplasticAdam: compiling the step failed (%s); using the foreach implementation",
                        " ".join(str(exc).split())[:300])
            self._compile_failed = True
            return False
        return True


def meta_targets(model: nn.Module, meta_on: MetaOn | str) -> list[tuple[str, nn.Parameter]]:
    """The trained weight tensors metaplasticity acts on, in model order: every parameter with >= 2 dimensions
    (meta_on="all", the paper's rule) or only the binary layers' weights (meta_on="binary")."""
    if MetaOn(meta_on) == MetaOn.binary:
        return [(f"{n}.weight", m.weight) for n, m in binary_modules(model).items() if m.weight.requires_grad]
    return [(n, p) for n, p in model.named_parameters() if p.dim() >= 2 and p.requires_grad]


def param_groups(model: nn.Module, meta: float | Sequence[float], meta_on: MetaOn | str,
                 meta_layers: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Param groups for MetaplasticAdam: one per distinct meta value, and meta 0 for everything else.

    A list `meta` gives one value per target tensor (layer-wise meta, as the paper's --meta list).
    `meta_layers` names groups of target tensors, {name: {patterns: [fnmatch over parameter names], meta: m}},
    each with its own meta (layer-wise meta a search can tune one group at a time); `meta` is the rest's.
    """
    targets = meta_targets(model, meta_on)
    if isinstance(meta, int | float):
        metas = [float(meta)] * len(targets)
    else:
        metas = [float(m) for m in meta]
        if len(metas) != len(targets):
            names = ", ".join(n for n, _ in targets)
            raise UserError(f"meta has {len(metas)} values but the model has {len(targets)} metaplastic weight "
                            f"tensors (optimizer.meta_on={MetaOn(meta_on).value}): {names}")
    if meta_layers:
        metas = _layer_metas([n for n, _ in targets], metas, meta_layers)
    by_meta: dict[float, list[nn.Parameter]] = {}
    for (_, p), m in zip(targets, metas, strict=True):
        by_meta.setdefault(m, []).append(p)
    chosen = {id(p) for _, p in targets}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    groups = [{"params": ps, "meta": m} for m, ps in by_meta.items()]
    if rest:
        groups.append({"params": rest, "meta": 0.0})
    return groups


def metaplastic_numel(groups: Sequence[Mapping[str, Any]]) -> int:
    """How many weights the metaplastic rule acts on in these param groups (meta > 0, >= 2 dimensions)."""
    return sum(p.numel() for g in groups if g.get("meta") for p in g["params"] if p.dim() >= 2)


def _layer_metas(names: list[str], metas: list[float], meta_layers: Mapping[str, Mapping[str, Any]]) -> list[float]:
    """`metas` with each optimizer.meta_layers group's value on the tensors its patterns match (each tensor in
    at most one group; every group matching some tensor)."""
    metas = list(metas)
    owner: dict[str, str] = {}
    for group, spec in meta_layers.items():
        value = spec["meta"]
        hits = [i for i, n in enumerate(names) if any(fnmatch.fnmatchcase(n, p) for p in spec["patterns"])]
        if not hits:
            raise UserError(f"optimizer.meta_layers.{group} matches no metaplastic weight tensor; names: "
                            f"{', '.join(names)}")
        for i in hits:
            if names[i] in owner:
                raise UserError(f"{names[i]} is in optimizer.meta_layers.{owner[names[i]]} and .{group}; "
                                "make the groups' patterns disjoint")
            owner[names[i]] = group
            metas[i] = float(value)
    return metas


def metaplastic_adam(model: nn.Module, task: int = 0, *, lr: float, weight_decay: float,
                     meta: float | Sequence[float], meta_on: MetaOn | str = MetaOn.all,
                     meta_layers: Mapping[str, Mapping[str, Any]] | None = None, meta_from_task: int = 0,
                     betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                     meta_scale: MetaScale | str = MetaScale.none,
                     implementation: Implementation | str = Implementation.auto) -> MetaplasticAdam:
    """MetaplasticAdam over `model`'s parameters, grouped by meta, for learning task `task` (0-based): the
    optimizer config's target. Before task `meta_from_task` (0-based) every meta is 0: plain Adam, so the
    first tasks are learned without consolidation (a probe of when consolidation must start)."""
    if task < meta_from_task:
        meta, meta_layers = 0.0, None
    return MetaplasticAdam(param_groups(model, meta, meta_on, meta_layers), lr=lr, betas=betas, eps=eps,
                           weight_decay=weight_decay, meta_scale=meta_scale, implementation=implementation)
