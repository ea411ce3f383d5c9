"""The baselines' mathematics, checked against independent computations, and per-task state."""

import pytest
import torch
import torch.nn.functional as F

from metaplastic_vit.data import Batch, Scenario, build_tasks, parse_task_sequence
from metaplastic_vit.data.loader import batch_bounds
from metaplastic_vit.errors import UserError
from metaplastic_vit.loop.hooks import TaskContext
from metaplastic_vit.loop.per_task import PerTaskState
from metaplastic_vit.models import create_model
from metaplastic_vit.strategies import protected_parameters
from metaplastic_vit.strategies.ewc import EWC, FisherLabels, fisher_diagonal
from metaplastic_vit.strategies.joint import Joint
from metaplastic_vit.strategies.lwf import LwF
from metaplastic_vit.strategies.replay import Replay
from metaplastic_vit.strategies.si import SI

VIT = dict(img_size=8, in_chans=1, num_classes=10, patch_size=2, embed_dim=16, depth=1, num_heads=4)
MLP = dict(img_size=8, in_chans=1, num_classes=10, hidden=[24, 24])


def _forward(fn, x):
    return fn(x).float()


def _data(tokens=("pdigits", "pdigits"), scenario="auto"):
    return build_tasks(parse_task_sequence(list(tokens)), "unused", None, False, scenario, None, torch.device("cpu"))


def _ctx(model, data, index=0, optimizer=None):
    return TaskContext(index, data, model, optimizer, _forward, lambda logits, tasks: logits, batch_size=64, seed=0,
                       generator=torch.Generator().manual_seed(0))


def _trained(name, **kw):
    """A model moved away from its initialisation, so gradients are not degenerate."""
    torch.manual_seed(0)
    model = create_model(name, **kw)
    data = _data(("pdigits",))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for batch in data.tasks[0].batches("train", 100, torch.Generator().manual_seed(0)):
        opt.zero_grad()
        F.cross_entropy(model(batch.x), batch.y).backward()
        opt.step()
    return model.eval(), data


def _independent_fisher(model, params, batch, labels):
    """Mean over samples, one forward and backward each (batch of one), of the squared log-likelihood gradient."""
    fisher = [torch.zeros_like(p) for p in params]
    for i in range(len(batch)):
        x = batch.x[i:i + 1]
        with torch.no_grad():
            probs = F.softmax(model(x), 1)[0]
        targets = range(probs.numel()) if labels == FisherLabels.exact else [int(batch.y[i])]
        for c in targets:
            weight = probs[c] if labels == FisherLabels.exact else 1.0
            grads = torch.autograd.grad(-F.log_softmax(model(x), 1)[0, c], params, allow_unused=True)
            for f, g in zip(fisher, grads, strict=True):
                if g is not None:
                    f += weight * g.square()
    return [f / len(batch) for f in fisher]


@pytest.mark.parametrize("name, kw", [("bnn", MLP), ("bvit_full_ln", VIT)])
@pytest.mark.parametrize("labels", [FisherLabels.empirical, FisherLabels.exact])
def test_fisher_equals_an_independent_per_sample_computation(name, kw, labels):
    model, data = _trained(name, **kw)
    params = protected_parameters(model, Scenario.task)
    batch = data.tasks[0].batch_at("train", torch.arange(12))
    ours = fisher_diagonal(model, params, [batch], _forward, torch.ones(1, 10, dtype=torch.bool), labels)
    reference = _independent_fisher(model, params, batch, labels)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # the square of a batch-mean gradient is far smaller: the weak Fisher the issue measured
    model.zero_grad()
    F.cross_entropy(model(batch.x), batch.y).backward()
    weak = params[0].grad.square().sum()
    assert weak < 0.5 * ours[0].sum()


@pytest.mark.parametrize("scenario", list(Scenario))
def test_ewc_and_si_protect_what_every_task_is_tested_with(scenario):
    """Per-task modules are left out only in the task scenario (each task gets its own copy back); in domain and
    class their live parameters serve every task. Frozen parameters are never protected."""
    if scenario == Scenario.auto:
        return
    data = _data(scenario=scenario)
    model = create_model("bnn", **MLP)
    names = {id(p): n for n, p in model.named_parameters()}
    weights = ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "fc3.bias", "fc3.weight"]
    norms = [f"bn{i}.{k}" for i in (1, 2, 3) for k in ("bias", "weight")]
    expected = sorted(weights if scenario == Scenario.task else weights + norms)
    for strategy in (EWC(model, data), SI(model, data)):
        assert sorted(names[id(p)] for p in strategy.params) == expected
    vit = create_model("bvit_full_ln", **VIT, frozen=["pos_embed"])
    protected = {id(p) for p in protected_parameters(vit, scenario)}
    assert id(vit.pos_embed) not in protected
    assert any(id(p) in protected for n, p in vit.named_parameters() if "norm" in n) == (scenario != Scenario.task)


def _ewc_after_two_tasks(mode):
    model, data = _trained("bnn", **MLP)
    ewc = EWC(model, data, strength=4.0, mode=mode, fisher_decay=0.5, fisher="empirical", fisher_samples=32)
    ctx = _ctx(model, data)
    assert ewc.loss(ctx, None, None) is None  # nothing to protect before the first task ends
    ewc.after_task(ctx)
    first_anchor, first_fisher = [a.clone() for a in ewc.anchors[0]], [f.clone() for f in ewc.fishers[0]]
    assert ewc.loss(ctx, None, None).item() == 0.0  # zero at the anchor
    with torch.no_grad():
        model.fc1.weight.add_(0.1)
    ewc.after_task(ctx)
    return model, ewc, ctx, first_anchor, first_fisher


def test_separate_ewc_keeps_one_anchor_and_fisher_per_task():
    model, ewc, ctx, first_anchor, first_fisher = _ewc_after_two_tasks("separate")
    assert len(ewc.anchors) == len(ewc.fishers) == 2
    with torch.no_grad():
        model.fc1.weight.add_(0.1)
    params = ewc.params
    expected = sum(2.0 * (f * (p - a) ** 2).sum() for anchor, fisher in zip(ewc.anchors, ewc.fishers, strict=True)
                   for p, a, f in zip(params, anchor, fisher, strict=True))
    assert ewc.loss(ctx, None, None).item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(ewc.anchors[0], first_anchor, strict=True))


def test_online_ewc_keeps_one_decayed_fisher_and_the_latest_anchor():
    model, ewc, ctx, first_anchor, first_fisher = _ewc_after_two_tasks("online")
    assert len(ewc.anchors) == len(ewc.fishers) == 1
    assert torch.equal(ewc.anchors[0][0], model.fc1.weight.detach())
    model.eval()
    second = fisher_diagonal(model, ewc.params, [ctx.data.tasks[0].batch_at("train", torch.arange(32))], _forward,
                             torch.ones(1, 10, dtype=torch.bool), FisherLabels.empirical)
    assert ewc.fishers[0][0].shape == second[0].shape
    # F* = decay * F_1 + F_2, with F_2 measured on the same kind of sample as F_1
    assert torch.all(ewc.fishers[0][0] >= 0.5 * first_fisher[0] - 1e-9)


def _si_tasks():
    """Two tasks of a small classification problem, each a list of batches (x, y)."""
    g = torch.Generator().manual_seed(3)
    tasks = []
    for shift in (0.0, 2.0):
        x = torch.randn(96, 6, generator=g) + shift
        y = (x[:, 0] - x[:, 1] + 0.3 * torch.randn(96, generator=g) > shift).long() + (x[:, 2] > shift).long()
        x[:, 5] = 0.0  # an input that never carries signal: its weights get no gradient
        tasks.append([(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)] * 3)
    return tasks


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def test_si_importance_over_two_tasks_equals_an_independent_computation():
    """Zenke et al.'s SI, written out by hand as the reference code computes it: omega from the task loss's
    gradient alone (taken apart from the penalty's), Omega <- relu(Omega + omega / (Delta^2 + xi)) at each
    task's end, and SGD stepping on the task loss plus c * sum Omega (theta - theta*)^2."""
    strength, damping, lr = 20.0, 0.1, 0.2  # a strong pull: the penalty drives some paths negative
    tasks = _si_tasks()
    # the plugin, driven as the trainer drives it
    model = _net()
    si = SI(model, _data(), strength=strength, damping=damping)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx = _ctx(model, None)
    for batches in tasks:
        si.before_task(ctx)
        for x, y in batches:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            si.before_step(ctx)
            opt.step()
            si.after_step(ctx, None)
        si.after_task(ctx)
    # the independent computation
    ref = _net()
    params = list(ref.parameters())
    importance = [torch.zeros_like(p) for p in params]
    anchor = None
    clipped = False
    for batches in tasks:
        start = [p.detach().clone() for p in params]
        omega = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            task_grads = torch.autograd.grad(F.cross_entropy(ref(x), y), params)
            if anchor is None:
                penalty_grads = [torch.zeros_like(p) for p in params]
            else:
                penalty = strength * sum((o * (p - a) ** 2).sum() for o, p, a in zip(importance, params, anchor,
                                                                                      strict=True))
                penalty_grads = torch.autograd.grad(penalty, params)
            with torch.no_grad():
                for p, g, h, w in zip(params, task_grads, penalty_grads, omega, strict=True):
                    before = p.clone()
                    p -= lr * (g + h)
                    w -= g * (p - before)
        with torch.no_grad():
            for k, (p, s0, w) in enumerate(zip(params, start, omega, strict=True)):
                term = w / ((p - s0) ** 2 + damping)
                clipped |= bool(((term < 0) & (importance[k] + term < 0) & (importance[k] > 0)).any())
                importance[k] = (importance[k] + term).clamp_min(0)
        anchor = [p.detach().clone() for p in params]
    assert clipped  # the second task's path integral lowers some importances to the clip: the rule is exercised
    for ours, expected in zip(si.importance, importance, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    for ours, expected in zip(model.parameters(), params, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    assert torch.all(si.importance[0][:, 5] == 0)  # no gradient, no path, no importance


def test_replay_fills_a_reservoir_and_replays_it_into_every_batch():
    data = _data()
    model = create_model("bnn", **MLP)
    replay = Replay(model, data, buffer_size=50, replay_batch_size=20)
    ctx = _ctx(model, data, index=0)
    stream = data.tasks[0].batches("train", 30, torch.Generator().manual_seed(0))
    sizes = []
    for batch in replay.train_batches(ctx, stream):
        sizes.append(len(batch))
        replay.after_step(ctx, batch)
    assert sizes[0] == 30 and set(sizes[1:-1]) == {50}  # the stream part, plus 20 replayed from the buffer
    assert len(replay.tasks) == 50 and replay.seen == len(data.tasks[0].splits["train"])
    ctx1 = _ctx(model, data, index=1)
    for batch in replay.train_batches(ctx1, data.tasks[1].batches("train", 30, torch.Generator().manual_seed(1))):
        replay.after_step(ctx1, batch)
        assert batch.task[:replay._stream].tolist() == [1] * replay._stream  # the stream part is task 2
    assert 10 < replay.tasks.count(0) < 40  # reservoir: about half of each task after two equal tasks
    replayed = next(replay.train_batches(ctx1, data.tasks[1].batches("train", 30)))
    slot = [i for i, t in enumerate(replayed.task.tolist()) if t == 0][0]
    expected = data.tasks[0].batch_at("train", replayed.index[slot:slot + 1])
    assert torch.equal(replayed.x[slot], expected.x[0]) and replayed.y[slot] == expected.y[0]
    state = replay.state_dict()
    again = Replay(model, data, buffer_size=50, replay_batch_size=20)
    again.load_state_dict(state)
    assert (again.tasks, again.positions, again.seen) == (replay.tasks, replay.positions, replay.seen)
    with pytest.raises(UserError, match="buffer_size must be >= 1"):
        from metaplastic_vit.strategies.replay import ReplayConfig

        ReplayConfig(buffer_size=0)


def test_lwf_distils_the_previous_model_on_the_earlier_tasks_outputs():
    data = _data(("digits-5",), scenario="class")
    model, _ = _trained("dnn", **MLP)
    lwf = LwF(model, data, strength=2.0, temperature=2.0)
    ctx = _ctx(model, data, index=2)
    lwf.before_task(ctx)
    assert lwf.units.tolist() == [0, 1, 2, 3]
    batch = data.tasks[2].batch_at("train", torch.arange(8))
    with torch.no_grad():
        model.fc1.weight.add_(0.05)
    logits = model(batch.x)
    with torch.no_grad():
        old = lwf.old(batch.x)[:, :4] / 2
    expected = -2.0 * (F.softmax(old, 1) * F.log_softmax(logits[:, :4] / 2, 1)).sum(1).mean()
    torch.testing.assert_close(lwf.loss(ctx, batch, logits), expected)
    assert not any(p.requires_grad for p in lwf.old.parameters())


def test_joint_batches_mix_every_task():
    data = _data(("pdigits", "pdigits", "pdigits"))
    batches = list(Joint(None, data).train_batches(_ctx(None, data), iter(())))
    assert len(batches) == min(len(batch_bounds(len(t.splits["train"]), 21)) for t in data.tasks)
    assert torch.bincount(batches[0].task).tolist() == [21, 21, 21]


def test_per_task_state_round_trip():
    model = create_model("bnn", **MLP)
    bank = PerTaskState(model, ["bn*"])
    assert bank.names == ["bn1", "bn2", "bn3"]
    ctx = _ctx(model, None)
    bank.after_task(ctx)
    assert bank.task_state(1, model) is None  # not learned yet: the live state is its own
    with torch.no_grad():
        model.bn1.weight.add_(1.0)
    weight = model.bn1.weight
    with bank.task_state(0, model):
        assert model.bn1.weight is weight and torch.equal(model.bn1.weight, torch.ones(24))
    assert torch.equal(model.bn1.weight, torch.full((24,), 2.0))
    under_test = create_model("bnn", **MLP)  # a copy under test gets the trained model's state for the task
    with torch.no_grad():
        under_test.bn1.weight.fill_(5.0)
    with bank.task_state(0, under_test):
        assert torch.equal(under_test.bn1.weight, torch.ones(24))
    assert torch.equal(under_test.bn1.weight, torch.full((24,), 5.0))
    assert torch.equal(model.bn1.weight, torch.full((24,), 2.0))
    with pytest.raises(UserError, match="match no module"):
        PerTaskState(model, ["ln*"])


def test_batches_know_their_task_and_positions():
    data = _data()
    batch = next(data.tasks[1].batches("train", 10))
    assert isinstance(batch, Batch) and batch.task.tolist() == [1] * 10 and batch.index.tolist() == list(range(10))
