"""The training loop with small fake plugins, and exact resumption of every strategy."""

import pytest
import torch
from conftest import run, tiny
from helpers import Stop, stopped_after_epochs

from metaplastic_vit.data import build_tasks, parse_task_sequence
from metaplastic_vit.loop.checkpoint import Checkpointer
from metaplastic_vit.loop.hooks import RunObserver, Strategy
from metaplastic_vit.loop.precision import Precision
from metaplastic_vit.loop.trainer import ContinualTrainer, TrainSettings
from metaplastic_vit.models import create_model
from metaplastic_vit.optim import metaplastic_adam
from metaplastic_vit.record import RunRecord


class Recorder(Strategy, RunObserver):
    """Records the hooks the trainer calls, in order: a strategy's and an observer's."""

    name = "recorder"

    def __init__(self):
        self.calls = []
        self.steps = 0

    def before_task(self, ctx):
        self.calls.append(("before_task", ctx.index))

    def after_task(self, ctx):
        self.calls.append(("after_task", ctx.index))

    def after_step(self, ctx, batch):
        self.steps += 1

    def start(self, record, resumed):
        self.calls.append(("start", resumed))

    def epoch(self, epoch, record):
        self.calls.append(("epoch", epoch.task, epoch.epoch))

    def task_end(self, record):
        self.calls.append(("task_end", len(record.acc_matrix)))

    def finish(self, record):
        self.calls.append(("finish", record.status))

    def close(self):
        self.calls.append(("close",))

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


class Freeze(Strategy):
    """An extra loss term that pins the head to zero, and a stream of only the first batch."""

    name = "freeze"

    def train_batches(self, ctx, batches):
        yield next(iter(batches))

    def loss(self, ctx, batch, logits):
        return 1e6 * ctx.model.head.weight.square().sum()


class SecretState(Strategy):
    """Per-task state for task 0 only: the head zeroed (a task-aware test then predicts class 0)."""

    name = "secret"

    def task_state(self, task, model):
        if task != 0:
            return None
        head = model.head

        class Swap:
            def __enter__(self):
                self.saved = head.weight.detach().clone(), head.bias.detach().clone()
                head.weight.data.zero_()
                head.bias.data.zero_()

            def __exit__(self, *exc):
                head.weight.data.copy_(self.saved[0])
                head.bias.data.copy_(self.saved[1])
        return Swap()


def _trainer(tmp_path, plugins, epochs=2, tokens=("pdigits", "pdigits"), checkpoint=True, boundaries="hard",
             **settings):
    torch.manual_seed(0)
    data = build_tasks(parse_task_sequence(tokens), "unused", None, False, "auto", None, torch.device("cpu"),
                       boundaries=boundaries)
    model = create_model("vit", num_classes=data.num_classes, img_size=8, in_chans=1, patch_size=4, embed_dim=8,
                         depth=1, num_heads=2)
    for p in plugins:
        p.model = model
    template = RunRecord(status="running", config={"epochs_per_task": epochs}, tasks=[], scenario="domain",
                         net="vit", meta=0.0, seed=0, strategy="test")
    make = lambda m, task: metaplastic_adam(m, task, lr=0.01, weight_decay=0.0, meta=0.0)  # noqa: E731
    observers = [p for p in plugins if isinstance(p, RunObserver)]
    return ContinualTrainer(model, data, make, plugins, observers, TrainSettings(epochs, batch_size=200, **settings),
                            Checkpointer(tmp_path, "fp", checkpoint), template)


HOOK_ORDER = [("start", False), ("before_task", 0), ("epoch", 0, 0), ("after_task", 0), ("epoch", 0, 1),
              ("task_end", 1), ("before_task", 1), ("epoch", 1, 0), ("after_task", 1), ("epoch", 1, 1),
              ("task_end", 2), ("finish", "completed"), ("close",)]


@pytest.mark.parametrize("beside", [False, True])
def test_hooks_are_called_in_one_order_whether_tested_in_the_loop_or_beside(tmp_path, beside):
    """A task's last epoch is recorded (epoch, task_end) before the next task begins, in both testing modes."""
    rec = Recorder()
    trainer = _trainer(tmp_path, [rec], test_beside_training=beside)
    record = trainer.run()
    assert record.status == "completed" and trainer.tester.beside == beside
    assert rec.calls == HOOK_ORDER
    assert rec.steps == 4 * 7  # 1294 training samples in batches of 200 (the last one merged)


def test_extra_loss_terms_and_train_streams_reach_the_optimizer(tmp_path):
    rec = Recorder()
    frozen = _trainer(tmp_path / "a", [Freeze(), rec])
    frozen.run()
    assert rec.steps == 4  # one batch per epoch: the stream came from the plugin
    free = _trainer(tmp_path / "b", [])
    free.run()
    assert frozen.model.head.weight.norm() < 0.5 * free.model.head.weight.norm()  # the penalty pulled it to 0


def test_task_state_is_used_only_by_the_task_aware_test(tmp_path):
    record = _trainer(tmp_path, [SecretState()]).run()
    assert record.acc_matrix_task_aware[-1][1] == record.acc_matrix[-1][1]
    assert record.acc_matrix_task_aware[-1][0] != record.acc_matrix[-1][0]
    beside = _trainer(tmp_path / "beside", [SecretState()], test_beside_training=True).run()  # on a copy
    assert beside.epochs == record.epochs and beside.acc_matrix_task_aware == record.acc_matrix_task_aware
    trainer = _trainer(tmp_path / "task", [SecretState()], checkpoint=False)
    trainer.data.scenario = type(trainer.data.scenario)("task")
    trainer.tester.evaluator.data.scenario = trainer.data.scenario
    done = trainer.run()
    assert done.acc_matrix == done.acc_matrix_task_aware  # the task scenario tests with the task id


def test_plugin_state_survives_a_resume(tmp_path):
    rec = Recorder()
    trainer = _trainer(tmp_path, [rec])
    trainer.run()
    again = Recorder()
    resumed = _trainer(tmp_path, [again])
    assert resumed.restore()
    resumed.run()
    assert again.steps == rec.steps and again.calls[0] == ("start", True)


def test_fp16_precision_trains_with_a_gradient_scaler(tmp_path):
    trainer = _trainer(tmp_path, [], epochs=1, tokens=("pdigits",), precision=Precision.fp16)
    assert trainer.parts.scaler is not None
    assert trainer.run().status == "completed"


@pytest.mark.parametrize("strategy", ["naive", "ewc", "si", "joint", "replay", "lwf"])
def test_every_strategy_resumes_exactly(tmp_path, monkeypatch, strategy):
    """Interrupted after the third epoch (mid-task 2), then run again: the same record as without interruption."""
    args = tiny(f"strategy={strategy}", "net=bvit_full_ln", "epochs_per_task=2")
    reference = run(tmp_path / "reference", *args)
    with stopped_after_epochs(monkeypatch, 3):
        run(tmp_path / "resumed", *args)
    resumed = run(tmp_path / "resumed", *args)
    assert resumed.resumes == [{"task": 1, "epoch": 1}]
    assert resumed.epochs == reference.epochs
    assert resumed.acc_matrix == reference.acc_matrix and resumed.val_acc_matrix == reference.val_acc_matrix


@pytest.mark.slow  # compiling on a CPU takes a minute
def test_a_compiled_model_trains_like_the_eager_one(tmp_path):
    from torch._dynamo.utils import counters

    args = tiny("net=bvit_full_ln", "epochs_per_task=1")
    eager = run(tmp_path / "eager", *args)
    counters.clear()
    compiled = run(tmp_path / "compiled", *args, "compile=true")
    assert compiled.status == "completed" and counters["stats"]["unique_graphs"] >= 2  # training and testing
    assert [e.train_loss for e in compiled.epochs] == pytest.approx([e.train_loss for e in eager.epochs], rel=1e-3)
    for ours, theirs in zip(compiled.acc_matrix_task_aware, eager.acc_matrix_task_aware, strict=True):
        assert ours == pytest.approx(theirs, abs=2.0)  # fused kernels round differently: a sample may flip


class StopAtStep(Recorder):
    """A recorder that stops the run (as a fault would) at a given training step."""

    def __init__(self, stop_at):
        super().__init__()
        self.stop_at = stop_at

    def after_step(self, ctx, batch):
        super().after_step(ctx, batch)
        if self.steps == self.stop_at:
            raise Stop


def test_testing_beside_training_records_the_same_run(tmp_path):
    """Each epoch tested on a copy of the model in a second thread while the next one trains: the same
    records and checkpoint as testing in the loop."""
    inline, beside = Recorder(), Recorder()
    reference = _trainer(tmp_path / "inline", [inline]).run()
    trainer = _trainer(tmp_path / "beside", [beside], test_beside_training=True)
    record = trainer.run()
    assert trainer.tester.beside and record.status == "completed"
    assert record.epochs == reference.epochs and record.initial_acc == reference.initial_acc
    assert record.acc_matrix == reference.acc_matrix and record.val_acc_matrix == reference.val_acc_matrix
    assert record.acc_matrix_task_aware == reference.acc_matrix_task_aware
    assert beside.calls == inline.calls == HOOK_ORDER
    ours, theirs = (torch.load(d / "checkpoint.pt", weights_only=False) for d in (tmp_path / "beside",
                                                                                  tmp_path / "inline"))
    for key in ("model", "strategies", "generator", "torch_rng"):
        assert repr(ours[key]) == repr(theirs[key]), key
    assert repr(ours["optimizer"]) == repr(theirs["optimizer"])


def test_a_run_stopped_while_testing_beside_training_keeps_the_tested_epoch_and_resumes_exactly(tmp_path):
    """Stopped in the third epoch (the second still under test): the second epoch is recorded and
    checkpointed with the state it ended with, and the resumed run ends as an uninterrupted one."""
    reference = _trainer(tmp_path / "reference", [Recorder()]).run()
    with pytest.raises(Stop):
        _trainer(tmp_path / "run", [StopAtStep(17)], test_beside_training=True).run()  # 7 steps per epoch
    kept = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert len(kept["history"]["epochs"]) == 2 and kept["strategies"]["recorder"] == {"steps": 14}
    again = StopAtStep(None)
    resumed = _trainer(tmp_path / "run", [again], test_beside_training=True)
    assert resumed.restore()
    record = resumed.run()
    assert record.resumes == [{"task": 1, "epoch": 0}] and again.steps == 28
    assert record.epochs == reference.epochs and record.acc_matrix == reference.acc_matrix
