import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaplastic_vit.regularizers import EWC, SI


def _tiny():
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def _loss(model):
    return lambda x, y: F.cross_entropy(model(x), y)


def test_ewc_penalty_is_zero_at_anchor_and_quadratic():
    model = _tiny()
    ewc = EWC(model, strength=4.0)
    assert ewc.penalty() is None  # nothing to protect before the first task ends
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    ewc.end_task([(x[i:i + 1], y[i:i + 1]) for i in range(8)], _loss(model))
    assert ewc.penalty().item() == 0.0
    with torch.no_grad():
        model.weight.add_(0.1)
    p1 = ewc.penalty().item()
    with torch.no_grad():
        model.weight.add_(0.1)  # twice as far from the anchor
    assert p1 > 0 and ewc.penalty().item() == pytest.approx(4 * p1, rel=1e-5)
    expected = 4.0 / 2 * (ewc.importance[0] * 0.2**2).sum()
    assert ewc.penalty().item() == pytest.approx(expected.item(), rel=1e-5)


def test_ewc_fisher_matches_hand_computation():
    model = _tiny()
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    # d(-log softmax(Wx+b)_y)/dW = (p - onehot(y)) x^T, per sample; Fisher = mean of its square
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
        err = p - F.one_hot(y, 2).float()
        fw = torch.stack([torch.outer(err[i], x[i]) ** 2 for i in range(5)]).mean(0)
        fb = (err**2).mean(0)
    ewc = EWC(model, strength=1.0)
    fisher = ewc.fisher([(x[i:i + 1], y[i:i + 1]) for i in range(5)], _loss(model))
    torch.testing.assert_close(fisher[0], fw)
    torch.testing.assert_close(fisher[1], fb)
    # importance sums the Fisher of every finished task
    ewc.end_task([(x[i:i + 1], y[i:i + 1]) for i in range(5)], _loss(model))
    ewc.end_task([(x[i:i + 1], y[i:i + 1]) for i in range(5)], _loss(model))
    torch.testing.assert_close(ewc.importance[0], 2 * fw)


def test_si_importance_accumulates_only_along_the_path_travelled():
    model = _tiny()
    si = SI(model, strength=1.0, damping=0.5)
    si.begin_task()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    frozen_col = model.weight[:, 2].detach().clone()
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    x[:, 2] = 0.0  # the third input never carries signal: its weights get no gradient, never move
    start = [p.detach().clone() for p in model.parameters()]
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for _ in range(5):
        opt.zero_grad()
        _loss(model)(x, y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        before = [p.detach().clone() for p in model.parameters()]
        si.before_step()
        opt.step()
        si.after_step()
        for e, g, b, p in zip(expected, grads, before, model.parameters(), strict=True):
            e -= g * (p.detach() - b)
    for got, e in zip(si.path, expected, strict=True):
        torch.testing.assert_close(got, e)
    si.end_task([], _loss(model))
    assert torch.equal(model.weight[:, 2].detach(), frozen_col)
    assert torch.all(si.importance[0][:, 2] == 0)  # no path, no importance
    assert torch.all(si.importance[0][:, :2] > 0)
    delta = [(p.detach() - s) ** 2 + 0.5 for p, s in zip(model.parameters(), start, strict=True)]
    torch.testing.assert_close(si.importance[0], (expected[0] / delta[0]).clamp_min(0))
    with torch.no_grad():
        model.weight.add_(1.0)
    assert si.penalty().item() == pytest.approx((si.importance[0] * 1.0).sum().item(), rel=1e-5)
