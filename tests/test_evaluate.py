"""Testing every task three ways computes each distinct matrix once."""

import contextlib

import torch

from metaplastic_vit.data import build_tasks, parse_task_sequence
from metaplastic_vit.loop.evaluate import Evaluator
from metaplastic_vit.loop.hooks import Strategy
from metaplastic_vit.models import create_model


def _setup(tokens, scenario="auto"):
    data = build_tasks(parse_task_sequence(list(tokens)), "unused", None, False, scenario, None, torch.device("cpu"))
    torch.manual_seed(0)
    model = create_model("bvit_full", num_classes=data.num_classes, img_size=8, in_chans=1, patch_size=2,
                         embed_dim=16, depth=1, num_heads=4).eval()
    return data, model


class Counting:
    """The model's logits, counting the samples passed through it."""

    def __init__(self, model):
        self.model, self.samples, self.calls = model, 0, 0

    def __call__(self, x):
        self.samples += len(x)
        self.calls += 1
        return self.model(x)


def _sizes(data, splits):
    return sum(len(t.splits[s]) for t in data.tasks for s in splits)


def test_without_task_state_or_masks_one_pass_gives_every_matrix():
    """Domain scenario, no per-task state: the task-aware matrix is the scenario's, from the same single pass
    over the test and validation splits (two batches of 1000 here)."""
    data, model = _setup(("pdigits", "pdigits", "pdigits"))
    evaluator = Evaluator(data, 1000, True, [])
    assert evaluator.masks_change_nothing
    logits = Counting(model)
    ev = evaluator.test(logits, evaluator.task_states(model))
    assert ev.task_aware == ev.test and len(ev.val) == 3
    assert logits.samples == _sizes(data, ("test", "val")) and logits.calls == 2


class SwapFirstTask(Strategy):
    """Per-task state for task 0 only (a context that changes nothing here: what counts is the extra pass)."""

    def task_state(self, task, model):
        return contextlib.nullcontext() if task == 0 else None


def test_per_task_state_and_masks_add_only_their_own_passes():
    data, model = _setup(("pdigits", "pdigits"))
    evaluator = Evaluator(data, 1000, True, [SwapFirstTask()])
    logits = Counting(model)
    evaluator.test(logits, evaluator.task_states(model))
    # every split once without the task id, then task 0's test split again with its own state
    assert logits.samples == _sizes(data, ("test", "val")) + len(data.tasks[0].splits["test"])
    split, split_model = _setup(("digits-5",), scenario="class")
    evaluator = Evaluator(split, 1000, True, [])
    assert not evaluator.masks_change_nothing
    logits = Counting(split_model)
    ev = evaluator.test(logits, evaluator.task_states(split_model))
    assert logits.samples == _sizes(split, ("test", "val"))  # masks need no pass of their own
    assert ev.task_aware != ev.test  # told the task, the mask keeps only its two classes
