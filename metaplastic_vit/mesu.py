"""MESU, metaplasticity from synaptic uncertainty (Bonnet et al. 2025), the successor of the paper's rule.

Every trainable parameter becomes a Gaussian synapse: a mean mu (the parameter as the net had it) and a standard
deviation sigma. `make_bayesian` turns a net's parameters into such synapses with torch's parametrizations
(`module.<name>` is then mu + sigma * eps, eps ~ N(0, 1) drawn at every training forward; the mean at test, or
the average prediction over fixed weight samples), so every net of the registry, binarized ones included (their
hidden weights sampled, then signed), works unchanged. `MESU` updates each (mu, sigma) pair by the published
rule, with the cost C the training loss summed over a batch (the batch-mean loss times `batch_size`):

    mu    <- mu    + lr_mu    * ( -sigma^2 dC/dmu         + sigma^2 (mu_prior - mu) / (N sigma_prior^2) )
    sigma <- sigma + lr_sigma * ( -sigma^2 / 2 dC/dsigma  + sigma (sigma_prior^2 - sigma^2) / (2 N sigma_prior^2) )

with mu_prior = 0. Updates shrink where sigma is small (a well-determined synapse: consolidated), and the prior
terms bound the memory to about N batches. No task boundary enters anywhere. As the reference's PyTorch code does,
each step of mu and of sigma is clipped to +-`ratio_max` * sigma (null: not clipped, as its JAX code), which
also keeps sigma positive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.optim import Optimizer

from . import seeds


class Gaussian(nn.Module):
    """The parametrization of one Gaussian synapse tensor: mu -> mu + sigma * eps while training; at test the
    mean, or weight sample `sample` of `test_noise` (fixed draws, the same at every test)."""

    def __init__(self, mu: torch.Tensor, sigma_init: float, generator: torch.Generator, test_samples: int) -> None:
        super().__init__()
        self.sigma = nn.Parameter(torch.full_like(mu, sigma_init))
        noise = torch.randn((test_samples, *mu.shape), generator=generator) if test_samples else torch.empty(0)
        self.register_buffer("test_noise", noise.to(mu.device))
        self.sample: int | None = None  # the test sample in use; None: the mean

    def forward(self, mu: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.training:
            return mu + self.sigma * torch.randn_like(mu)
        return mu if self.sample is None else mu + self.sigma * self.test_noise[self.sample]


def make_bayesian(model: nn.Module, sigma_init: float, samples_train: int = 1, samples_test: int = 0,
                  seed: int = 0) -> nn.Module:
    """Turn every trainable parameter of `model` into a Gaussian synapse (in place; returns the model), and note
    on the model how many weight samples a training step averages its loss over and a test its predictions."""
    generator = seeds.generator(seed, seeds.Stream.mesu_test)
    for module_name, module in list(model.named_modules()):
        for name, p in list(module.named_parameters(recurse=False)):
            if p.requires_grad and not module_name.split(".")[-1] == "parametrizations":
                parametrize.register_parametrization(module, name, Gaussian(p.detach(), sigma_init, generator,
                                                                            samples_test))
    model.mc_samples_train, model.mc_samples_test = samples_train, samples_test
    return model


def synapses(model: nn.Module) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """(mu, sigma) of every Gaussian synapse tensor of a model made by `make_bayesian`."""
    pairs = []
    for module in model.modules():
        for plist in getattr(module, "parametrizations", {}).values():
            pairs += [(plist.original, g.sigma) for g in plist if isinstance(g, Gaussian)]
    return pairs


def averaged_logits(model: nn.Module, forward: Any, x: torch.Tensor) -> torch.Tensor:
    """At test, with test samples: the log of the predictive probabilities averaged over the fixed weight samples
    (what Bayesian inference predicts); otherwise `forward(model, x)`."""
    samples = getattr(model, "mc_samples_test", 0)
    if model.training or not samples:
        return forward(model, x)
    gaussians = [m for m in model.modules() if isinstance(m, Gaussian)]
    total = None
    try:
        for k in range(samples):
            for g in gaussians:
                g.sample = k
            probs = torch.softmax(forward(model, x), dim=1)
            total = probs if total is None else total + probs
    finally:
        for g in gaussians:
            g.sample = None
    return (total / samples).log()


class MESU(Optimizer):
    """The MESU update of (mu, sigma) pairs (see the module's doc). `batch_size` turns the batch-mean loss the
    trainer minimises into MESU's summed cost; `lr` is the means' rate (the trainer's schedule acts on it)."""

    def __init__(self, pairs: Iterable[tuple[nn.Parameter, nn.Parameter]], lr: float = 1.0, lr_sigma: float = 1.0,
                 sigma_prior: float = 0.1, memory: float = 1e5, batch_size: int = 1,
                 ratio_max: float | None = 0.1) -> None:
        self.pairs = list(pairs)
        params = [p for pair in self.pairs for p in pair]
        super().__init__(params, dict(lr=lr, lr_sigma=lr_sigma, sigma_prior=sigma_prior, memory=memory,
                                      batch_size=batch_size, ratio_max=ratio_max))

    @torch.no_grad()
    def step(self, closure: Any = None) -> float | None:  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        n, prior2, scale = group["memory"], group["sigma_prior"] ** 2, group["batch_size"]
        for mu, sigma in self.pairs:
            if mu.grad is None or sigma.grad is None:
                continue
            var = sigma * sigma
            d_mu = ((-var * mu.grad * scale) - var * mu / (n * prior2)).mul_(group["lr"])
            d_sigma = ((-var / 2 * sigma.grad * scale) + sigma * (prior2 - var) / (2 * n * prior2)).mul_(
                group["lr_sigma"])
            if group["ratio_max"] is not None:
                bound = sigma * group["ratio_max"]
                d_mu = torch.clamp(d_mu, -bound, bound)
                d_sigma = torch.clamp(d_sigma, -bound, bound)
            mu.add_(d_mu)
            sigma.add_(d_sigma)
        return loss


def mesu(model: nn.Module, task: int = 0, *, lr: float, lr_sigma: float, sigma_prior: float, memory: float,
         batch_size: int, ratio_max: float | None = 0.1, sigma_init: float | None = None, samples_train: int = 1,
         samples_test: int = 0, seed: int = 0) -> MESU:
    """MESU over the Gaussian synapses of `model`: the optimizer config's target. The first call makes the model's
    parameters Gaussian (`make_bayesian`, sigma starting at `sigma_init`, else at the prior's); later calls (a new
    optimizer per task, where the trainer makes one) reuse them. Nothing in MESU knows of tasks."""
    if not synapses(model):
        make_bayesian(model, sigma_prior if sigma_init is None else sigma_init, samples_train, samples_test, seed)
    return MESU(synapses(model), lr=lr, lr_sigma=lr_sigma, sigma_prior=sigma_prior, memory=memory,
                batch_size=batch_size, ratio_max=ratio_max)
