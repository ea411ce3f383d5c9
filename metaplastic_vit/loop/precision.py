"""Numeric precision of the forward and backward passes, and CPU threads while testing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from enum import StrEnum

import torch
from torch import nn

from ..errors import UserError
from ..mesu import averaged_logits


class Precision(StrEnum):
    """Numeric precision of forward and backward passes (hidden weights and optimizer state stay fp32)."""

    auto = "auto"  # bf16 on CUDA, fp32 elsewhere
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # with a gradient scaler, where bf16 is unavailable


def resolve_precision(precision: Precision | str, device: torch.device) -> Precision:
    """`auto` made concrete for `device`."""
    precision = Precision(precision)
    if precision == Precision.auto:
        return Precision.bf16 if device.type == "cuda" else Precision.fp32
    return precision


def forward_in(precision: Precision, device: torch.device) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """forward(model, x): `model`'s float32 logits for `x`, computed in `precision` on `device` (eagerly, so
    that torch.func transforms go through it; `model` may be any callable of inputs, as EWC's functional
    calls are); at test, a Bayesian model (MESU) with test samples predicts their average."""
    dtype = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}.get(precision)

    def once(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(x).float()

    def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if getattr(model, "mc_samples_test", 0) and not model.training:
            return averaged_logits(model, once, x)
        return once(model, x)
    return forward


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[None]:
    """torch's CPU thread count set to `count` (None: unchanged) for the duration of the context."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ModelLogits:
    """The trained model's logits for inputs in training and testing: `forward`, through torch.compile when
    `compile` (strategies keep the eager forward, which torch.func transforms go through)."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                 compile: bool) -> None:
        self.model, self.forward = model, forward
        self.compiled = torch.compile(model) if compile else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.compiled is None:
            return self.forward(self.model, x)
        from torch._dynamo.exc import BackendCompilerFailed

        try:
            return self.forward(self.compiled, x)
        except BackendCompilerFailed as exc:
            raise UserError(f"compile=true: torch.compile could not compile the model "
                            f"({' '.join(str(exc).split())[:200]}); run with compile=false") from exc
