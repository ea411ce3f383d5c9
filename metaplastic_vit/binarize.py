"""Binarized layers with hidden weights, and binarization of an existing model by module-name patterns.

A binary layer's trainable parameter *is* its real-valued hidden weight W_h; the forward pass multiplies
by sign(W_h) and the straight-through estimator hands the gradient to W_h unchanged, so optimizers and
training loops treat binary layers like any other layer (Laborieux et al. 2021, section "Methods").
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError


class BinaryScale(StrEnum):
    """The factor a binary layer multiplies its output by (see `_output_scale`)."""

    none = "none"
    fan_in = "fan_in"
    mean_abs = "mean_abs"


class _SignWeight(torch.autograd.Function):
    """sign(w) forward; identity backward (the gradient for sign(W_h) is applied to W_h).

    Written in the setup_context style with a generated vmap rule, so torch.func transforms (per-sample
    gradients for EWC's Fisher) go through it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(w: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.sign(w)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:  # noqa: D102
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad


class _SignActivation(torch.autograd.Function):
    """sign(x) forward; backward passes the gradient where |x| <= 1 (hardtanh straight-through)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.sign(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:  # noqa: D102
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_weight(w: torch.Tensor) -> torch.Tensor:
    """Binarize a hidden weight: sign(w), gradient passed straight through."""
    return _SignWeight.apply(w)


def sign_activation(x: torch.Tensor) -> torch.Tensor:
    """Binarize an activation: sign(x), gradient passed where |x| <= 1."""
    return _SignActivation.apply(x)


def _output_scale(weight: torch.Tensor, scale: BinaryScale) -> torch.Tensor | float | None:
    """The factor a binary layer multiplies its output by, per output channel or global.

    `fan_in` keeps the output variance of +-1 weights on +-1 inputs near 1; `mean_abs` is XNOR-Net's
    per-output-channel mean |W_h| (detached: the weights multiplied by stay exactly sign(W_h)).
    """
    if scale == BinaryScale.none:
        return None
    if scale == BinaryScale.fan_in:
        return 1.0 / math.sqrt(weight[0].numel())
    return weight.detach().abs().flatten(1).mean(1)


class BinaryLinear(nn.Linear):
    """nn.Linear whose forward uses sign(W_h); the parameter `weight` is the hidden weight W_h."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 scale: BinaryScale | str = BinaryScale.fan_in, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.scale = _check_scale(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = F.linear(x, sign_weight(self.weight).to(x.dtype))
        alpha = _output_scale(self.weight, self.scale)
        if alpha is not None:
            out = out * (alpha.to(out.dtype) if torch.is_tensor(alpha) else alpha)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, scale={self.scale.value}"


class BinaryConv2d(nn.Conv2d):
    """nn.Conv2d whose forward uses sign(W_h); the parameter `weight` is the hidden weight W_h."""

    def __init__(self, *args, scale: BinaryScale | str = BinaryScale.fan_in, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scale = _check_scale(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = self._conv_forward(x, sign_weight(self.weight).to(x.dtype), None)
        alpha = _output_scale(self.weight, self.scale)
        if alpha is not None:
            out = out * (alpha.to(out.dtype).view(1, -1, 1, 1) if torch.is_tensor(alpha) else alpha)
        return out if self.bias is None else out + self.bias.to(out.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, scale={self.scale.value}"


BINARY_LAYERS = (BinaryLinear, BinaryConv2d)


class SignActivation(nn.Module):
    """The binarized activation as a module: sign(x) forward, hardtanh straight-through backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return sign_activation(x)


def _check_scale(scale: BinaryScale | str) -> BinaryScale:
    try:
        return BinaryScale(scale)
    except ValueError:
        raise UserError(f"unknown binary scale {scale!r}; choose one of "
                        f"{', '.join(s.value for s in BinaryScale)}") from None


def _binarize_input_hook(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: binarize the first positional input of a module."""
    return (sign_activation(args[0]), *args[1:])


def has_binary_input(module: nn.Module) -> bool:
    """True when `module` binarizes its input (set by `binarize_model`)."""
    return getattr(module, "binary_input", False)


def _match(names: Sequence[str], patterns: Iterable[str], what: str) -> list[str]:
    """Module names matched by fnmatch-style patterns; a pattern that matches nothing is an error."""
    matched: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if n and fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            sample = ", ".join(n for n in names[1:8] if n)
            raise UserError(f"{what} pattern {pattern!r} matches no module; module names look like: {sample}, ...")
        matched.extend(h for h in hits if h not in matched)
    return matched


def _to_binary(module: nn.Module, scale: BinaryScale) -> nn.Module:
    """A binary twin of an nn.Linear / nn.Conv2d holding the same hidden weight and bias tensors."""
    if isinstance(module, BINARY_LAYERS):
        return module
    if type(module) is nn.Linear:
        twin = BinaryLinear(module.in_features, module.out_features, bias=module.bias is not None, scale=scale,
                            device=module.weight.device, dtype=module.weight.dtype)
    elif type(module) is nn.Conv2d:
        twin = BinaryConv2d(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                            padding=module.padding, dilation=module.dilation, groups=module.groups,
                            bias=module.bias is not None, padding_mode=module.padding_mode, scale=scale,
                            device=module.weight.device, dtype=module.weight.dtype)
    else:
        raise UserError(f"cannot binarize the weights of a {type(module).__name__}; only Linear and Conv2d")
    twin.weight = module.weight
    twin.bias = module.bias
    twin.train(module.training)
    return twin


def binarize_model(model: nn.Module, binary_weights: Iterable[str] = (), binary_inputs: Iterable[str] = (),
                   scale: BinaryScale | str = BinaryScale.fan_in) -> nn.Module:
    """Binarize `model` in place by module-name patterns and return it.

    `binary_weights`: modules (Linear/Conv2d) whose weights become sign(W_h), keeping their values as W_h.
    `binary_inputs`: modules whose input activation is binarized with the straight-through sign.
    Patterns are fnmatch globs on `named_modules()` names, e.g. ``blocks.*.mlp.fc1``.
    """
    scale = _check_scale(scale)
    names = [n for n, _ in model.named_modules()]
    for name in _match(names, binary_weights, "binary_weights"):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _to_binary(getattr(parent, child), scale))
    for name in _match(names, binary_inputs, "binary_inputs"):
        module = model.get_submodule(name)
        if not has_binary_input(module):
            module.register_forward_pre_hook(_binarize_input_hook)
            module.binary_input = True
    return model


def binary_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The binary-weight layers of a model by name (for diagnostics and layer-wise settings)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BINARY_LAYERS)}
