"""MetaplasticAdam: Adam whose sign-flipping updates are damped by 1 - tanh^2(meta * |W|).

The rule is the paper's Adam_meta (Laborieux et al. 2021): for every weight with two or more dimensions,
where the first moment points toward a sign flip (sign(W) * m > 0) the step uses f_meta * m instead of m,
with f_meta = 1 - tanh^2(meta * |W|). Updates that grow |W| are never attenuated; with meta = 0 this is
exactly Adam with L2 weight decay. The math is written once with multi-tensor (foreach) ops; the same
function runs eagerly or compiled by torch.compile into one fused pass per tensor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch._dynamo.exc import BackendCompilerFailed, FailOnRecompileLimitHit
from torch.optim import Optimizer

from .errors import UserError

log = logging.getLogger(__name__)

Implementation = Literal["auto", "compiled", "foreach"]
IMPLEMENTATIONS: tuple[str, ...] = ("auto", "compiled", "foreach")
MetaScale = Literal["none", "rms"]
META_SCALES: tuple[str, ...] = ("none", "rms")

# "auto" compiles on CPU from this many parameters per step call. Compiling costs seconds once per process
# and model (8-20 s on 2 cores with an empty inductor cache, about 2 s with it filled) and saves 3-6 ms per
# million parameters per step over foreach there (seed-size bvit: 14 instead of 200 ms): from 1 M
# parameters it pays off within a few thousand steps (bnn and small ViT, 1.8 M: about 500), for the
# embedded default (0.1 M, 900 steps per run) only after about 10,000. benchmarks/bench_optimizer.py.
AUTO_COMPILE_MIN_PARAMS_CPU = 1_000_000

_NEG_2_OVER_LN2 = -2 / math.log(2)  # exp(y) = 2^(y / ln 2)


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

    `relative`: the rule sees |W| / rms(W) of each tensor instead of |W| (meta_scale="rms"), so the share
    of consolidated weights no longer depends on how far training has grown the hidden weights.

    `metas[i]` is the coefficient of tensor i: a number (0 for tensors the rule leaves alone, e.g. 1-D
    ones) or a 0-dim tensor (always applied). The compiled version takes the metas of the weights and the
    step-dependent scalars as 0-dim tensors, so it never recompiles as steps go on or meta changes;
    eagerly they are Python floats, as in torch.optim.Adam.
    Every elementwise op here has an inductor lowering, so torch.compile turns the whole step into one
    fused loop per tensor (reading W, g, m, v once and writing W, m, v once; `relative` adds one reading
    pass for the norms); keep it that way when editing: an op without one (e.g. _foreach_tanh,
    _foreach_exp, a list of Python scalars) runs as separate eager passes and allocations in the middle
    of the compiled step, several times slower on CPU.
    """
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)

    moments = list(exp_avgs)
    meta_idx = [i for i, meta in enumerate(metas) if _applies(meta)]
    if meta_idx:
        weights = [params[i] for i in meta_idx]
        firsts = [exp_avgs[i] for i in meta_idx]
        # f_meta = 1 - tanh^2(x) = sech^2(x) = 4 e / (1 + e)^2 with x = meta * |W| and e = exp(-2x) in (0, 1]:
        # one exponential, no overflow, and accurate where f_meta is tiny (1 - tanh^2 cancels there).
        # e is computed as 2^(-2x / ln 2), which inductor lowers to a vector exp2.
        exponents = torch._foreach_abs(weights)
        if relative:
            rms = [(n / math.sqrt(w.numel())).clamp_min(1e-12) for n, w in
                   zip(torch._foreach_norm(weights), weights, strict=True)]
            torch._foreach_div_(exponents, rms)
        torch._foreach_mul_(exponents, [metas[i] * _NEG_2_OVER_LN2 for i in meta_idx])
        quarter_f = torch._foreach_pow(2.0, exponents)  # e, divided in place by (1 + e)^2 below
        one_plus_e_sq = torch._foreach_add(quarter_f, 1.0)
        torch._foreach_mul_(one_plus_e_sq, one_plus_e_sq)
        torch._foreach_div_(quarter_f, one_plus_e_sq)  # e / (1 + e)^2 = f_meta / 4
        # sign(W) * relu(sign(W) * m) is m where sign(W) * m > 0 (consolidating) and 0 elsewhere.
        signs = torch._foreach_sign(weights)
        consolidating = torch._foreach_mul(signs, firsts)
        torch._foreach_clamp_min_(consolidating, 0.0)
        torch._foreach_mul_(consolidating, signs)
        # (m - c) + f_meta * c: f_meta * m where consolidating, m elsewhere (m - c is exactly 0 or m).
        used = torch._foreach_sub(firsts, consolidating)
        torch._foreach_addcmul_(used, consolidating, quarter_f, value=4.0)
        for i, moment in zip(meta_idx, used, strict=True):
            moments[i] = moment

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
    `implementation`: "foreach" (eager multi-tensor ops), "compiled" (torch.compile of the same math),
    or "auto": compiled on CUDA, and on CPU for AUTO_COMPILE_MIN_PARAMS_CPU parameters or more (smaller
    models take fewer steps than it needs to pay off its compile time); foreach when compiling fails.
    Param groups that share lr, betas, eps, weight decay and step count are updated in one call (one
    compiled graph per model, whatever the number of meta values).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, meta: float = 0.0, meta_scale: MetaScale = "none",
                 implementation: Implementation = "auto") -> None:
        if not lr > 0:
            raise UserError(f"lr must be > 0, got {lr}")
        if not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1:
            raise UserError(f"betas must lie in [0, 1), got {tuple(betas)}")
        if implementation not in IMPLEMENTATIONS:
            raise UserError(f"unknown implementation {implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, meta=meta,
                        meta_scale=meta_scale)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_group(group)
        self.implementation = implementation
        self._compile_failed = False  # "auto" then stays on foreach

    def add_param_group(self, param_group: dict[str, Any]) -> None:  # noqa: D102
        super().add_param_group(param_group)
        _check_group(self.param_groups[-1])

    def compiles(self, params: list[torch.Tensor]) -> bool:
        """Whether a step call on `params` (tensors on one device) runs compiled."""
        if self.implementation != "auto":
            return self.implementation == "compiled"
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
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("MetaplasticAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = state["step"] + 1  # a new tensor: never shared with a loaded state dict
            settings = (params[0].device, group["lr"], *group["betas"], group["eps"], group["weight_decay"],
                        float(self.state[params[0]]["step"]), group["meta_scale"] == "rms")
            meta = float(group["meta"])
            calls.setdefault(settings, []).extend((p, meta) for p in params)
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
        try:
            _compiled()(*args)
        except (BackendCompilerFailed, FailOnRecompileLimitHit) as exc:
            if self.implementation == "compiled":
                raise
            log.warning("MetaplasticAdam: compiling the step failed (%s); using the foreach implementation",
                        " ".join(str(exc).split())[:300])
            self._compile_failed = True
            return False
        return True


def _check_group(group: dict[str, Any]) -> None:
    meta = group["meta"]
    if isinstance(meta, bool) or not isinstance(meta, int | float) or not math.isfinite(meta) or meta < 0:
        raise UserError(f"meta must be a finite number >= 0, got {meta!r}")
    if group["meta_scale"] not in META_SCALES:
        raise UserError(f"unknown meta_scale {group['meta_scale']!r}; choose one of {', '.join(META_SCALES)}")
