import copy

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from metaplastic_vit.errors import UserError
from metaplastic_vit.models import create_model
from metaplastic_vit.optim import MetaplasticAdam, attenuation, param_groups


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, 5, generator=g), torch.randn(5, generator=g), torch.randn(2, 3, 4, generator=g)]


def _run(opt_params, opt, grads):
    for step_grads in grads:
        for p, g in zip(opt_params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()


def _grads(n, like, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g) for p in like] for _ in range(n)]


def test_meta_zero_is_torch_adam():
    ps = _params()
    ours = [p.clone().requires_grad_() for p in ps]
    ref = [p.clone().requires_grad_() for p in ps]
    grads = _grads(300, ps)
    _run(ours, MetaplasticAdam(ours, lr=1e-2, weight_decay=1e-3, meta=0.0), grads)
    _run(ref, torch.optim.Adam(ref, lr=1e-2, weight_decay=1e-3), grads)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_hand_computed_metaplastic_steps():
    w0 = torch.tensor([[0.5, -0.5, 0.2, -2.0]])
    g1 = torch.tensor([[1.0, -1.0, -1.0, -3.0]])
    g2 = torch.tensor([[0.5, -2.0, 1.0, 1.0]])
    lr, b1, b2, eps, wd, meta = 0.1, 0.9, 0.999, 1e-8, 0.01, 1.5
    w = w0.clone().requires_grad_()
    opt = MetaplasticAdam([w], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, meta=meta)
    ref, m, v = w0.double(), torch.zeros(1, 4).double(), torch.zeros(1, 4).double()
    branches = set()
    for t, g in enumerate((g1, g2), start=1):
        w.grad = g.clone()
        opt.step()
        gg = g.double() + wd * ref
        m = b1 * m + (1 - b1) * gg
        v = b2 * v + (1 - b2) * gg**2
        shrinks = torch.sign(ref) * m > 0
        f = 1 - torch.tanh(meta * ref.abs()) ** 2
        m_used = torch.where(shrinks, f * m, m)
        ref = ref - lr / (1 - b1**t) * m_used / ((v / (1 - b2**t)).sqrt() + eps)
        torch.testing.assert_close(w.detach().double(), ref, rtol=1e-6, atol=1e-7)
        branches.update(shrinks.flatten().tolist())
    assert branches == {True, False}  # both branches exercised


def test_updates_that_grow_magnitude_are_never_attenuated():
    # gradient always pushes |w| up: the metaplastic run must equal plain Adam whatever meta is
    w0 = torch.tensor([[0.3, -0.7], [1.2, -0.1]])
    grads = [[-torch.sign(w0) * (k + 1)] for k in range(20)]
    a, b = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    _run([a], MetaplasticAdam([a], lr=0.05, meta=5.0), grads)
    _run([b], torch.optim.Adam([b], lr=0.05), grads)
    torch.testing.assert_close(a, b)
    # the opposite direction is attenuated: |w| shrinks less than under Adam
    a, b = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    shrink = [[torch.sign(w0) * 0.1]]
    _run([a], MetaplasticAdam([a], lr=0.05, meta=5.0), shrink)
    _run([b], torch.optim.Adam([b], lr=0.05), shrink)
    assert (a.abs() > b.abs()).all()


def test_one_dimensional_params_are_plain_adam():
    bias0 = torch.tensor([0.5, -0.5, 2.0])
    grads = _grads(50, [bias0])
    a, b = bias0.clone().requires_grad_(), bias0.clone().requires_grad_()
    _run([a], MetaplasticAdam([a], lr=0.05, meta=10.0), grads)
    _run([b], torch.optim.Adam([b], lr=0.05), grads)
    torch.testing.assert_close(a, b)


def test_meta_is_per_param_group():
    w0 = torch.tensor([[0.5, -1.0]])
    grads = [[torch.sign(w0)] * 2 for _ in range(10)]  # shrinking |w|
    plain, damped = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    opt = MetaplasticAdam([{"params": [plain], "meta": 0.0}, {"params": [damped], "meta": 3.0}], lr=0.05)
    _run([plain, damped], opt, grads)
    ref = w0.clone().requires_grad_()
    _run([ref], torch.optim.Adam([ref], lr=0.05), [[g[0]] for g in grads])
    torch.testing.assert_close(plain, ref)
    assert (damped.abs() > plain.abs()).all()


def test_state_dict_round_trip():
    ps = _params()
    grads = _grads(20, ps)
    a = [p.clone().requires_grad_() for p in ps]
    opt_a = MetaplasticAdam(a, lr=1e-2, meta=2.0)
    _run(a, opt_a, grads[:10])
    b = [p.detach().clone().requires_grad_() for p in a]
    opt_b = MetaplasticAdam(b, lr=1e-2, meta=2.0)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as after torch.save + torch.load
    _run(a, opt_a, grads[10:])
    _run(b, opt_b, grads[10:])
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.slow  # compiling the step on a CPU takes half a minute
def test_compiled_matches_foreach():
    pytest.importorskip("torch._inductor")
    ps = _params()
    grads = _grads(5, ps)
    a = [p.clone().requires_grad_() for p in ps]
    b = [p.clone().requires_grad_() for p in ps]
    _run(a, MetaplasticAdam(a, lr=1e-2, weight_decay=1e-3, meta=2.0, implementation="foreach"), grads)
    _run(b, MetaplasticAdam(b, lr=1e-2, weight_decay=1e-3, meta=2.0, implementation="compiled"), grads)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


# --- training behaviour on real data (scikit-learn digits) ---

def _digits():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return (x - 0.3) / 0.4, torch.tensor(d.target)


def _train(model, opt, x, y, epochs, batch=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def _accuracy(model, x, y):
    model.eval()
    with torch.inference_mode():
        return (model(x).argmax(1) == y).float().mean().item()


def test_tiny_bvit_hidden_weights_learn_and_flip():
    torch.manual_seed(0)
    x, y = _digits()
    model = create_model("bvit", img_size=8, in_chans=1, num_classes=10, patch_size=2, embed_dim=64, depth=1,
                         num_heads=4)
    fc1 = model.blocks[0].mlp.fc1.weight
    before = fc1.detach().clone()
    _train(model, MetaplasticAdam(model.parameters(), lr=1e-3), x[:1200], y[:1200], epochs=10, batch=32)
    assert not torch.equal(before, fc1.detach())  # the seed never wrote hidden weights back
    assert (before.sign() != fc1.detach().sign()).any()  # signs can flip
    assert _accuracy(model, x[1200:], y[1200:]) > 0.6  # chance is 0.1


def test_higher_meta_flips_fewer_signs_of_the_first_task():
    x, y = _digits()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(64, generator=g)
    second = x.flatten(1)[:, perm].view_as(x)
    flipped = {}
    for meta in (0.0, 30.0):
        torch.manual_seed(0)
        model = create_model("bnn", img_size=8, in_chans=1, num_classes=10, hidden=[256, 256])
        _train(model, MetaplasticAdam(model.parameters(), lr=5e-3, meta=meta), x, y, epochs=5)
        signs = [m.weight.detach().sign() for m in (model.fc1, model.fc2, model.fc3)]
        _train(model, MetaplasticAdam(model.parameters(), lr=5e-3, meta=meta), second, y, epochs=5)
        after = [m.weight.detach().sign() for m in (model.fc1, model.fc2, model.fc3)]
        changed = sum((a != b).sum().item() for a, b in zip(signs, after, strict=True))
        flipped[meta] = changed / sum(s.numel() for s in signs)
    assert flipped[0.0] > 0.05
    assert flipped[30.0] < 0.5 * flipped[0.0], flipped


def test_rms_meta_scale_matches_hand_computation_and_is_scale_free():
    w0 = torch.tensor([[0.5, -0.5, 0.2, -2.0]])
    g = torch.tensor([[1.0, -1.0, -1.0, -3.0]])
    lr, meta = 0.1, 1.5
    w = w0.clone().requires_grad_()
    w.grad = g.clone()
    MetaplasticAdam([w], lr=lr, meta=meta, meta_scale="rms").step()
    rms = w0.square().mean().sqrt()
    m = 0.1 * g
    f = 1 - torch.tanh(meta * w0.abs() / rms) ** 2
    m_used = torch.where(torch.sign(w0) * m > 0, f * m, m)
    expected = w0 - lr / 0.1 * m_used / ((0.001 * g**2 / 0.001).sqrt() + 1e-8)
    torch.testing.assert_close(w.detach(), expected)
    # scaling all weights (and the gradient direction) by 10 leaves the attenuation unchanged
    big = (10 * w0).clone().requires_grad_()
    big.grad = g.clone()
    MetaplasticAdam([big], lr=lr, meta=meta, meta_scale="rms").step()
    torch.testing.assert_close(big.detach() - 10 * w0, w.detach() - w0)
    with pytest.raises(ValueError, match="log"):
        MetaplasticAdam([w], meta_scale="log")


def test_each_parameter_keeps_its_own_step_count():
    """A parameter that had no gradient for a while gets its own bias correction, not its group neighbour's."""
    a, b = torch.ones(3, 2, requires_grad=True), torch.ones(3, 2, requires_grad=True)
    opt = MetaplasticAdam([a, b], lr=0.1, meta=2.0)
    g = torch.full((3, 2), 0.5)
    for _ in range(5):  # only a learns
        a.grad, b.grad = g.clone(), None
        opt.step()
    a.grad, b.grad = g.clone(), g.clone()
    opt.step()
    ref = torch.ones(3, 2, requires_grad=True)
    ref.grad = g.clone()
    MetaplasticAdam([ref], lr=0.1, meta=2.0).step()  # b's first step
    assert opt.state[b]["step"].item() == 1 and opt.state[a]["step"].item() == 6
    torch.testing.assert_close(b, ref)


def test_attenuation_is_the_papers_formula():
    w = torch.tensor([[0.0, 0.1, -0.5, 2.0, -30.0]])
    for meta in (0.0, 1.35, 50.0):
        torch.testing.assert_close(attenuation(w, meta), 1 - torch.tanh(meta * w.abs()) ** 2)
    rms = w.square().mean().sqrt()
    torch.testing.assert_close(attenuation(w, 3.0, relative=True), 1 - torch.tanh(3.0 * w.abs() / rms) ** 2)
    assert attenuation(torch.tensor([400.0]), 50.0).item() == 0.0  # no overflow where f_meta vanishes


def test_layer_wise_meta_by_named_groups():
    model = create_model("bvit_full", img_size=8, in_chans=1, num_classes=10, patch_size=2, embed_dim=16, depth=2,
                         num_heads=2)
    groups = param_groups(model, 2.0, "all", {"attn": {"patterns": ["blocks.*.attn.*"], "meta": 30.0},
                                              "head": {"patterns": ["head.*"], "meta": 0.0}})
    meta_of = {id(p): g["meta"] for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = (0.0 if p.dim() < 2 or name.startswith("head.") else 30.0 if ".attn." in name else 2.0)
        assert meta_of[id(p)] == expected, name
    with pytest.raises(UserError, match="blocks.0.attn.qkv.weight is in optimizer.meta_layers.a and .b"):
        param_groups(model, 1.0, "all", {"a": {"patterns": ["blocks.*"], "meta": 1.0},
                                         "b": {"patterns": ["*.qkv.*"], "meta": 2.0}})
    with pytest.raises(UserError, match="meta_layers.x matches no metaplastic weight tensor"):
        param_groups(model, 1.0, "all", {"x": {"patterns": ["blocks.*.norm1.*"], "meta": 1.0}})
