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


def _scaled_sign(w: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """alpha * sign(w) as one new tensor (scaled in place; no multiply when alpha is 1)."""
    signs = torch.sign(w)
    return signs if isinstance(alpha, float) and alpha == 1.0 else signs.mul_(alpha)


class _SignWeight(torch.autograd.Function):
    """alpha * sign(w) forward; backward hands alpha * the gradient to w (straight through the sign).

    Folding the output scale alpha into the +-1 weights costs a pass over the weight instead of one over
    the (larger) output, forward and backward. Written in the setup_context style with a generated vmap
    rule, so torch.func transforms (per-sample gradients for EWC's Fisher) go through it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(w: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:  # noqa: D102
        return _scaled_sign(w, alpha)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:  # noqa: D102
        ctx.alpha = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        alpha = ctx.alpha
        return (grad if isinstance(alpha, float) and alpha == 1.0 else grad * alpha), None


class _SignActivation(torch.autograd.Function):
    """sign(x) forward; backward passes the gradient where |x| <= 1 (hardtanh straight-through).

    Only a 1-byte mask of |x| <= 1 is kept for the backward pass, not the full-precision input. The mask is
    int8 made from an in-place float comparison: on CPU, comparisons into bool and bool-to-float casts run
    unvectorised, several times slower than these (see benchmarks/RESULTS.md). The forward returns the mask
    as a second output and the vmap rule passes the batched tensor through whole (both are elementwise), so
    under torch.func (EWC's per-sample gradients) it is made on a plain tensor: functorch has no batching
    rule for the in-place comparison.
    """

    @staticmethod
    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        return torch.sign(x), x.abs().le_(1).to(torch.int8)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:  # noqa: D102
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype)  # out of place: under vmap the gradient may be batched, the mask not

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: torch.Tensor) -> tuple[tuple, tuple]:  # noqa: D102
        return _SignActivation.apply(x), (in_dims[0], in_dims[0])


def sign_weight(w: torch.Tensor, alpha: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Binarize a hidden weight: alpha * sign(w), gradient (times alpha) passed straight through to w."""
    return _SignWeight.apply(w, alpha)


def sign_activation(x: torch.Tensor) -> torch.Tensor:
    """Binarize an activation: sign(x), gradient passed where |x| <= 1."""
    return _SignActivation.apply(x)[0]


def _weight_scale(weight: torch.Tensor, scale: BinaryScale) -> torch.Tensor | float:
    """The factor the +-1 weights are multiplied by: global, or per output channel (shaped to broadcast).

    `fan_in` keeps the output variance of +-1 weights on +-1 inputs near 1; `mean_abs` is XNOR-Net's
    per-output-channel mean |W_h| (detached: the weights stay exactly sign(W_h) up to that factor).
    """
    if scale == BinaryScale.none:
        return 1.0
    if scale == BinaryScale.fan_in:
        return 1.0 / math.sqrt(weight[0].numel())
    return weight.detach().abs().flatten(1).mean(1).view(-1, *([1] * (weight.dim() - 1)))


class _Binarized:
    """What BinaryLinear and BinaryConv2d share: which of weight and input are binarized, and the scale."""

    binary_weight: bool
    binary_input: bool
    scale: BinaryScale

    def _setup(self, scale: BinaryScale | str, binary_weight: bool, binary_input: bool) -> None:
        self.scale = _check_scale(scale)
        self.binary_weight = binary_weight
        self.binary_input = binary_input

    def _operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.weight
        grad = torch.is_grad_enabled()  # without autograd (testing) the same values, without the estimators
        if self.binary_input:
            x = sign_activation(x) if grad else torch.sign(x)
        if self.binary_weight:
            alpha = _weight_scale(weight, self.scale)
            weight = sign_weight(weight, alpha) if grad else _scaled_sign(weight, alpha)
        return x, weight.to(x.dtype)  # the sign is taken in fp32, so binary weights stay exact in any precision

    def _describe(self) -> str:
        parts = [f"binary_weight={self.binary_weight}", f"binary_input={self.binary_input}"]
        if self.binary_weight:
            parts.append(f"scale={self.scale.value}")
        return ", ".join(parts)


class BinaryLinear(_Binarized, nn.Linear):
    """nn.Linear computing with scale * sign(W_h) and/or sign(x); the parameter `weight` is the hidden weight."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 scale: BinaryScale | str = BinaryScale.fan_in, device: torch.device | None = None,
                 dtype: torch.dtype | None = None, binary_weight: bool = True, binary_input: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._setup(scale, binary_weight, binary_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x, weight = self._operands(x)
        # The bias is added in place (no second output tensor), not through F.linear's bias: its fused addmm
        # takes another path for the input gradient, which changes results in their last bits.
        out = F.linear(x, weight)
        return out if self.bias is None else out.add_(self.bias.to(out.dtype))

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, {self._describe()}"


class BinaryConv2d(_Binarized, nn.Conv2d):
    """nn.Conv2d computing with scale * sign(W_h) and/or sign(x); the parameter `weight` is the hidden weight."""

    def __init__(self, *args: Any, scale: BinaryScale | str = BinaryScale.fan_in, binary_weight: bool = True,
                 binary_input: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup(scale, binary_weight, binary_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x, weight = self._operands(x)
        out = self._conv_forward(x, weight, None)
        return out if self.bias is None else out.add_(self.bias.to(out.dtype).view(1, -1, 1, 1))

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, {self._describe()}"


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
    """Forward pre-hook: binarize the first positional input of a module that is not a Linear/Conv2d."""
    return (sign_activation(args[0]), *args[1:])


def has_binary_input(module: nn.Module) -> bool:
    """True when `module` binarizes its input (set by `binarize_model`)."""
    return getattr(module, "binary_input", False)


def has_binary_weight(module: nn.Module) -> bool:
    """True when `module` computes with the sign of its hidden weight."""
    return isinstance(module, BINARY_LAYERS) and module.binary_weight


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


def _binarized(module: nn.Module, scale: BinaryScale, weight: bool, inputs: bool) -> nn.Module:
    """A BinaryLinear / BinaryConv2d twin of a Linear / Conv2d holding the same hidden weight and bias tensors,
    binarizing its weight and/or input (what the module already binarizes stays binarized)."""
    if isinstance(module, BINARY_LAYERS):
        module.binary_weight = module.binary_weight or weight
        module.binary_input = module.binary_input or inputs
        return module
    flags = dict(scale=scale, binary_weight=weight, binary_input=inputs, device=module.weight.device,
                 dtype=module.weight.dtype)
    if type(module) is nn.Linear:
        twin = BinaryLinear(module.in_features, module.out_features, bias=module.bias is not None, **flags)
    else:
        twin = BinaryConv2d(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                            padding=module.padding, dilation=module.dilation, groups=module.groups,
                            bias=module.bias is not None, padding_mode=module.padding_mode, **flags)
    twin.weight = module.weight
    twin.bias = module.bias
    twin.train(module.training)
    return twin


def binarize_model(model: nn.Module, binary_weights: Iterable[str] = (), binary_inputs: Iterable[str] = (),
                   scale: BinaryScale | str = BinaryScale.fan_in) -> nn.Module:
    """Binarize `model` in place by module-name patterns and return it.

    `binary_weights`: modules (Linear/Conv2d) whose weights become scale * sign(W_h), keeping W_h as the
    parameter. `binary_inputs`: modules whose input activation is binarized with the straight-through sign;
    a Linear/Conv2d does it itself (BinaryLinear/BinaryConv2d), any other module through a forward pre-hook.
    Patterns are fnmatch globs on `named_modules()` names, e.g. ``blocks.*.mlp.fc1``.
    """
    scale = _check_scale(scale)
    names = [n for n, _ in model.named_modules()]
    weights = _match(names, binary_weights, "binary_weights")
    inputs = _match(names, binary_inputs, "binary_inputs")
    for name in weights:
        if type(model.get_submodule(name)) not in (nn.Linear, nn.Conv2d, *BINARY_LAYERS):
            raise UserError(f"cannot binarize the weights of a {type(model.get_submodule(name)).__name__} "
                            f"({name}); only Linear and Conv2d")
    for name in dict.fromkeys([*weights, *inputs]):
        module = model.get_submodule(name)
        if type(module) in (nn.Linear, nn.Conv2d, *BINARY_LAYERS):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child,
                    _binarized(module, scale, weight=name in weights, inputs=name in inputs))
        elif not has_binary_input(module):
            module.register_forward_pre_hook(_binarize_input_hook)
            module.binary_input = True
    return model


def hidden_weight(module: nn.Module) -> torch.Tensor:
    """A layer's hidden weight as a tensor of its own: the parameter, or, where the weight is computed from one
    (a Gaussian synapse of MESU, metaplastic_vit.mesu), the parameter it is computed from (its mean)."""
    parametrizations = getattr(module, "parametrizations", None)
    return parametrizations.weight.original if parametrizations is not None and "weight" in parametrizations \
        else module.weight


def binary_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The binary-weight layers of a model by name (for diagnostics and layer-wise settings)."""
    return {name: m for name, m in model.named_modules() if has_binary_weight(m)}
