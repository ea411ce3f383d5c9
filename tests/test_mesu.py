"""MESU: the update checked against its equations written out by hand, Gaussian synapses in every net, testing
with weight samples, and exact resumption."""

import pytest
import torch
import torch.nn.functional as F
from conftest import run, tiny
from helpers import stopped_after_epochs

from metaplastic_vit.mesu import MESU, Gaussian, make_bayesian, mesu, synapses


def _layer():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


@pytest.mark.parametrize("ratio_max", [None, 0.1])
def test_the_update_follows_its_equations(ratio_max):
    """Five steps of a Bayesian linear layer, against the published rule computed by hand: w = mu + sigma eps,
    C the loss summed over the batch, mu += lr (-s^2 dC/dmu - s^2 mu / (N sp^2)), sigma += lr_s (-s^2/2 dC/ds
    + s (sp^2 - s^2) / (2 N sp^2)), each step clipped to +-ratio_max * sigma where set."""
    lr, lr_s, prior, memory, batch = 0.5, 2.0, 0.2, 50.0, 6
    x = torch.randn(batch, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    layer = make_bayesian(_layer(), sigma_init=0.05)
    opt = MESU(synapses(layer), lr=lr, lr_sigma=lr_s, sigma_prior=prior, memory=memory, batch_size=batch,
               ratio_max=ratio_max)
    ref = _layer()
    mus = [ref.weight.detach().clone(), ref.bias.detach().clone()]
    sigmas = [torch.full_like(m, 0.05) for m in mus]
    for step in range(5):
        torch.manual_seed(100 + step)
        opt.zero_grad()
        F.cross_entropy(layer(x), y).backward()
        opt.step()
        torch.manual_seed(100 + step)  # the same eps, drawn in the same order (weight, then bias)
        leaves = [t.clone().requires_grad_() for t in (*mus, *sigmas)]
        mu_w, mu_b, s_w, s_b = leaves
        w, b = mu_w + s_w * torch.randn_like(mu_w), mu_b + s_b * torch.randn_like(mu_b)
        cost = F.cross_entropy(x @ w.T + b, y, reduction="sum")  # the summed cost itself
        grads = torch.autograd.grad(cost, leaves)
        with torch.no_grad():
            for k in range(2):
                mu, s, g_mu, g_s = mus[k], sigmas[k], grads[k], grads[k + 2]
                d_mu = lr * (-s**2 * g_mu - s**2 * mu / (memory * prior**2))
                d_s = lr_s * (-s**2 / 2 * g_s + s * (prior**2 - s**2) / (2 * memory * prior**2))
                if ratio_max is not None:
                    d_mu, d_s = d_mu.clamp(-ratio_max * s, ratio_max * s), d_s.clamp(-ratio_max * s, ratio_max * s)
                mus[k], sigmas[k] = mu + d_mu, s + d_s
    ours = synapses(layer)
    for (mu, s), mu_ref, s_ref in zip(ours, mus, sigmas, strict=True):
        torch.testing.assert_close(mu, mu_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-6)
    assert all((s > 0).all() for _, s in ours)


def test_every_parameter_of_a_vit_becomes_a_gaussian_synapse_and_tests_on_its_mean_or_samples():
    from metaplastic_vit.models import create_model

    torch.manual_seed(0)
    model = create_model("bvit_full", img_size=8, in_chans=1, num_classes=10, patch_size=2, embed_dim=16, depth=1,
                         num_heads=4)
    count = sum(1 for p in model.parameters() if p.requires_grad)
    opt = mesu(model, lr=1.0, lr_sigma=1.0, sigma_prior=0.1, memory=100.0, batch_size=10, samples_test=3, seed=0)
    assert len(synapses(model)) == count and len(opt.param_groups[0]["params"]) == 2 * count
    assert mesu(model, lr=1.0, lr_sigma=1.0, sigma_prior=0.1, memory=100.0, batch_size=10).pairs == opt.pairs
    x = torch.randn(5, 1, 8, 8)
    model.train()
    assert not torch.equal(model(x), model(x))  # a new weight sample at every training forward
    model.eval()
    assert torch.equal(model(x), model(x))  # the mean weights at test
    for g in (m for m in model.modules() if isinstance(m, Gaussian)):
        g.sample = 1
    sampled = model(x)
    for g in (m for m in model.modules() if isinstance(m, Gaussian)):
        g.sample = None
    assert not torch.equal(sampled, model(x))


def test_a_mesu_run_trains_tests_with_samples_independent_of_the_batch_and_resumes_exactly(tmp_path, monkeypatch):
    args = tiny("net=bnn_ln", "net.hidden=[32,32]", "optimizer=mesu", "lr=1", "optimizer.samples_test=2",
                "optimizer.samples_train=2")
    reference = run(tmp_path / "reference", *args)
    assert reference.status == "completed" and reference.metaplastic_weights == 0
    small_batches = run(tmp_path / "small", *args, "data.eval_batch_size=7")
    assert small_batches.acc_matrix == reference.acc_matrix  # fixed weight samples, whatever the test batches

    with stopped_after_epochs(monkeypatch, 3):
        run(tmp_path / "resumed", *args)
    resumed = run(tmp_path / "resumed", *args)
    assert resumed.resumes and resumed.epochs == reference.epochs


def test_mesu_settings_are_checked(tmp_path):
    from metaplastic_vit.errors import UserError

    for override, message in (("optimizer.sigma_prior=0", "optimizer.sigma_prior must be > 0"),
                              ("optimizer.ratio_max=1", "optimizer.ratio_max must lie in (0, 1)"),
                              ("optimizer.samples_train=0", "optimizer.samples_train must be >= 1")):
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            run(tmp_path, *tiny("optimizer=mesu", override))
