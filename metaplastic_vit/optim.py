"""MetaplasticAdam: Adam whose sign-flipping updates are damped by 1 - tanh^2(meta * |W|).

The rule is the paper's Adam_meta (Laborieux et al. 2021): for every weight with two or more dimensions,
where the first moment points toward a sign flip (sign(W) * m > 0) the step uses f_meta * m instead of m,
with f_meta = 1 - tanh^2(meta * |W|). Updates that grow |W| are never attenuated; with meta = 0 this is
exactly Adam with L2 weight decay. The math is written once with multi-tensor (foreach) ops; the same
function runs eagerly or compiled by torch.compile into one fused pass per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch.optim import Optimizer

from .errors import UserError

Implementation = Literal["auto", "compiled", "foreach"]
IMPLEMENTATIONS: tuple[str, ...] = ("auto", "compiled", "foreach")

_NEG_2_OVER_LN2 = -2 / math.log(2)  # exp(y) = 2^(y / ln 2)


def metaplastic_adam_update(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                            exp_avg_sqs: list[torch.Tensor], metas: list[float], step_size: float | torch.Tensor,
                            bias_correction2_sqrt: float | torch.Tensor, beta1: float, beta2: float, eps: float,
                            weight_decay: float) -> None:
    """One metaplastic Adam step in place on lists of tensors.

    `metas[i]` is the coefficient of tensor i (0 for tensors the rule leaves alone, e.g. 1-D ones).
    The compiled version takes the step-dependent scalars as 0-dim tensors, so it never recompiles as
    steps go on; eagerly they are Python floats, as in torch.optim.Adam.
    Every op here has an inductor lowering, so torch.compile turns the whole step into one fused loop
    per tensor (reading W, g, m, v once and writing W, m, v once); keep it that way when editing: an op
    without one (e.g. _foreach_tanh, _foreach_exp, a per-tensor scalar list) runs as separate eager
    passes and allocations in the middle of the compiled step, several times slower on CPU.
    """
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)

    moments = list(exp_avgs)
    meta_idx = [i for i, meta in enumerate(metas) if meta != 0]
    if meta_idx:
        weights = [params[i] for i in meta_idx]
        firsts = [exp_avgs[i] for i in meta_idx]
        # f_meta = 1 - tanh^2(x) = sech^2(x) = 4 e / (1 + e)^2 with x = meta * |W| and e = exp(-2x) in (0, 1]:
        # one exponential, no overflow, and accurate where f_meta is tiny (1 - tanh^2 cancels there).
        # exp(-2x) is computed as 2^(-2x / ln 2), which inductor lowers to a vector exp2.
        scaled = torch._foreach_abs(weights)
        for meta in dict.fromkeys(metas[i] for i in meta_idx):  # one multiply per distinct meta, usually one
            torch._foreach_mul_([s for s, i in zip(scaled, meta_idx, strict=True) if metas[i] == meta],
                                meta * _NEG_2_OVER_LN2)
        quarter_f = torch._foreach_pow(2.0, scaled)  # e
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
    """The update compiled once per process (torch.compile caches one graph per group layout)."""
    global _compiled_update
    if _compiled_update is None:
        _compiled_update = torch.compile(metaplastic_adam_update, dynamic=False, fullgraph=True)
    return _compiled_update


class MetaplasticAdam(Optimizer):
    """Adam with L2 weight decay and the metaplastic attenuation of sign-flipping updates.

    `meta` is a per-param-group value, so layer-wise meta is a list of param groups. It applies to
    tensors with two or more dimensions; 1-D tensors (biases, norms) get plain Adam.
    `implementation`: "foreach" (eager multi-tensor ops), "compiled" (torch.compile of the same math),
    or "auto" (compiled on CUDA, foreach on CPU where compiling costs more than a short run saves).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, meta: float = 0.0,
                 implementation: Implementation = "auto") -> None:
        if not lr > 0:
            raise UserError(f"lr must be > 0, got {lr}")
        if not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1:
            raise UserError(f"betas must lie in [0, 1), got {tuple(betas)}")
        if implementation not in IMPLEMENTATIONS:
            raise UserError(f"unknown implementation {implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, meta=meta)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_meta(group["meta"])
        self.implementation = implementation

    def add_param_group(self, param_group: dict[str, Any]) -> None:  # noqa: D102
        super().add_param_group(param_group)
        _check_meta(self.param_groups[-1]["meta"])

    def _compiles(self, device: torch.device) -> bool:
        return self.implementation == "compiled" or (self.implementation == "auto" and device.type == "cuda")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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
            beta1, beta2 = group["betas"]
            step = float(self.state[params[0]]["step"])
            step_size = group["lr"] / (1 - beta1**step)
            bias_correction2_sqrt = math.sqrt(1 - beta2**step)
            update = metaplastic_adam_update
            if self._compiles(params[0].device):
                update = _compiled()
                step_size = torch.tensor(step_size, device=params[0].device)
                bias_correction2_sqrt = torch.tensor(bias_correction2_sqrt, device=params[0].device)
            metas = [float(group["meta"]) if p.dim() >= 2 else 0.0 for p in params]
            update(
                params, [p.grad for p in params], [self.state[p]["exp_avg"] for p in params],
                [self.state[p]["exp_avg_sq"] for p in params], metas, step_size, bias_correction2_sqrt,
                beta1, beta2, group["eps"], group["weight_decay"])
        return loss


def _check_meta(meta: Any) -> None:
    if isinstance(meta, bool) or not isinstance(meta, int | float) or not math.isfinite(meta) or meta < 0:
        raise UserError(f"meta must be a finite number >= 0, got {meta!r}")
