"""Task boundaries announced, withheld, or blended away: what the learner hears, what it trains on."""

import re

import pytest
import torch
from conftest import run, tiny
from test_trainer import Recorder, _trainer

from metaplastic_vit.data import build_tasks, parse_task_sequence
from metaplastic_vit.data.boundaries import gradual, neighbour_share, steps_per_task
from metaplastic_vit.errors import UserError


def test_the_neighbours_share_rises_linearly_across_each_boundary():
    steps = 100  # window 0.5: the last 25 steps of a task and the first 25 of the next
    assert neighbour_share(10, steps, 0.5) == (-1, 0.5 - 10 / 50)
    assert neighbour_share(50, steps, 0.5) == (0, 0.0)
    assert neighbour_share(75, steps, 0.5) == (1, 0.0)
    assert neighbour_share(99, steps, 0.5) == (1, 24 / 50)
    assert neighbour_share(0, steps, 0.5) == (-1, 0.5)  # at the boundary: half and half, from both sides
    shares = [neighbour_share(s, steps, 0.5) for s in range(75, 100)] + [neighbour_share(s, steps, 0.5)
                                                                         for s in range(25)]
    next_share = [p if side == 1 else 1 - p for side, p in shares]  # the later task's share across the window
    assert next_share == pytest.approx([k / 50 for k in range(50)])


def test_gradual_batches_mix_in_the_neighbour_as_often_as_its_share():
    data = build_tasks(parse_task_sequence(["pdigits", "pdigits", "pdigits"]), "unused", None, False, "auto", None,
                       torch.device("cpu"), boundaries="gradual", transition=1.0)
    epochs, batch = 4, 50
    steps = steps_per_task(data, 1, batch, epochs)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        batches = data.tasks[1].batches("train", batch, torch.Generator().manual_seed(epoch))
        for k, mixed in enumerate(gradual(data, 1, epoch, epochs, batch, 1.0, batches, generator)):
            side, share = neighbour_share(epoch * (steps // epochs) + k, steps, 1.0)
            others = mixed.task != 1
            assert set(mixed.task[others].tolist()) <= {1 + side}  # only the neighbour on that side
            assert abs(others.float().mean().item() - share) < 0.25  # drawn per sample with that probability
            sample = int(others.nonzero()[0]) if others.any() else None
            if sample is not None:  # a replaced sample is the neighbour's, whole
                source = data.tasks[int(mixed.task[sample])].batch_at("train", mixed.index[sample:sample + 1])
                assert torch.equal(mixed.x[sample], source.x[0]) and mixed.y[sample] == source.y[0]


def test_without_boundaries_the_learner_hears_no_task_begin_or_end(tmp_path):
    rec = Recorder()
    trainer = _trainer(tmp_path, [rec], boundaries="none")
    first = trainer.parts.optimizer
    record = trainer.run()
    assert trainer.parts.optimizer is first  # one optimizer throughout
    assert [c for c in rec.calls if c[0] in ("before_task", "after_task")] == []
    assert [c for c in rec.calls if c[0] == "epoch"] == [("epoch", t, e) for t in (0, 1) for e in (0, 1)]
    assert len(record.acc_matrix) == 2 and len(record.acc_matrix[0]) == 2  # tested on the same schedule


@pytest.mark.parametrize("boundaries", ["none", "gradual"])
def test_without_announced_boundaries_runs_keep_no_per_task_state_and_resume_exactly(tmp_path, boundaries):
    args = tiny("net=bvit_full_ln", "epochs_per_task=2", f"data.boundaries={boundaries}", "strategy=replay")
    record = run(tmp_path / "a", *args)
    assert record.acc_matrix_task_aware == record.acc_matrix  # no per-task snapshot: the live state is tested
    again = run(tmp_path / "b", *args)
    assert again.epochs == record.epochs  # reproducible, the mixing included


@pytest.mark.parametrize("overrides, message", [
    (["strategy=ewc"], "EWC takes its Fisher at a task's end: without task boundaries use its boundary-free"),
    (["strategy=ewc", "strategy.every_steps=5"], "strategy.every_steps refreshes online EWC's Fisher"),
    (["strategy=si"], "SI consolidates at a task's end: without task boundaries use its boundary-free variant"),
    (["strategy=lwf"], "LwF distils the model as it was when a task began: it needs task boundaries"),
    (["strategy=freeze"], "the freeze probe acts at a task's end: it needs task boundaries"),
    (["gamma=2"], "a learning rate per task (gamma) needs task boundaries: set gamma=1"),
    (["optimizer.meta_from_task=1"], "optimizer.meta_from_task needs task boundaries: set it to 0"),
])
def test_what_needs_boundaries_is_refused_without_them(tmp_path, overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        run(tmp_path, *tiny("data.boundaries=none", *overrides))


@pytest.mark.parametrize("strategy", [["strategy=si", "strategy.every_steps=3"],
                                      ["strategy=ewc", "strategy.mode=online", "strategy.every_steps=3",
                                       "strategy.fisher=empirical"]])
def test_ewc_and_si_consolidate_every_k_steps_without_boundaries(tmp_path, strategy):
    from conftest import config

    from metaplastic_vit.experiment import run_experiment

    cfg = config(*tiny("data.boundaries=gradual", "net=bnn", "net.hidden=[16]", "epochs_per_task=1", *strategy))
    record = run_experiment(cfg, tmp_path)
    assert record.status == "completed"
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["strategies"]
    name = strategy[0].split("=")[1]
    assert state[name]["steps"] == 14  # 2 tasks x 7 batches
    protected = state[name]["importance"] if name == "si" else state[name]["fishers"][0]
    assert any(t.abs().sum() > 0 for t in protected)  # consolidated without a task's end
