"""The continual-learning loop: learn tasks in sequence, test every task after every epoch, checkpoint.

Everything else is a plugin (metaplastic_vit.strategies.base.Plugin): baselines, per-task state, the
diagnostics and the result sinks. After every epoch the trainer tests every task three ways (the run's
scenario, task-aware, and the validation split), builds the results record and checkpoints atomically
(model, optimizer, plugins, RNG, history), so running again in the same directory resumes from the last
finished epoch and ends with the same results as an uninterrupted run. With
`TrainSettings.test_beside_training` (a small model training on one of several CPU cores) each epoch's
test runs on a copy of the model in a second thread while the next epoch trains; its record and
checkpoint (of the state the copy was taken from) follow when it ends.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import seeds
from .atomic import save_torch
from .data import Batch, Scenario, TaskSet
from .data.loader import EvalSet
from .errors import EnvironmentFaultError, TrainingFailedError, UserError
from .models import uses_batch_statistics
from .record import EpochRecord, RunRecord
from .runtime import InterruptedRunError, process_age
from .strategies.base import Plugin, TaskContext

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 2


class Precision(StrEnum):
    """Numeric precision of forward and backward passes (hidden weights and optimizer state stay fp32)."""

    auto = "auto"  # bf16 on CUDA, fp32 elsewhere
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # with a gradient scaler, where bf16 is unavailable


def resolve_precision(precision: Precision | str, device: torch.device) -> Precision:
    """`auto` made concrete for `device`."""
    precision = Precision(precision)
    if precision == Precision.auto:
        return Precision.bf16 if device.type == "cuda" else Precision.fp32
    return precision


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[None]:
    """torch's CPU thread count set to `count` (None: unchanged) for the duration of the context."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class NonFiniteLossError(TrainingFailedError):
    """The training loss or the parameters became NaN or inf."""


@dataclass
class TrainSettings:
    """What the loop needs beyond the model, the data, the optimizer and the plugins."""

    epochs_per_task: int
    batch_size: int
    eval_batch_size: int = 1000
    gamma: float = 1.0  # task i learns with lr * gamma ** (-i)
    fresh_optimizer: bool = True  # a new optimizer (fresh moments) at every task, as in the paper
    precision: Precision = Precision.fp32  # resolved (not auto)
    checkpoint: bool = True
    seed: int = 0
    eval_threads: int | None = None  # CPU threads while testing (large batches); None: those of training
    # test each epoch on a copy of the model in a second thread while the next epoch trains (the same results;
    # for a CPU with a core to spare: torch's thread count is per process, so both threads use training's)
    test_beside_training: bool = False
    compile: bool = False  # the trainer's own passes (training, testing) through torch.compile; plugins' stay eager


@dataclass
class _State:
    """Everything a checkpoint restores besides the model, the optimizer and the plugins."""

    next_task: int = 0
    next_epoch: int = 0
    epochs: list[EpochRecord] = field(default_factory=list)
    acc_matrix: list[list[float]] = field(default_factory=list)
    acc_matrix_task_aware: list[list[float]] = field(default_factory=list)
    val_acc_matrix: list[list[float]] = field(default_factory=list)
    initial_acc: list[float] | None = None
    train_time: float = 0.0
    eval_time: float = 0.0
    resumes: list[dict[str, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint (the epochs' own fields, not copies: it is written at once)."""
        return {**self.__dict__, "epochs": [vars(e) for e in self.epochs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _State:  # noqa: D102
        return cls(**{**data, "epochs": [EpochRecord(**e) for e in data["epochs"]]})


@dataclass
class Evaluation:
    """One test of every task: under the run's scenario, task-aware, and on the validation splits."""

    test: list[float]
    task_aware: list[float]
    val: list[float]


@dataclass
class _Trained:
    """An epoch that has trained and waits for its test: what its record and checkpoint need besides it."""

    task: int
    epoch: int
    loss: float
    acc: float
    train_s: float
    extra: dict[str, Any]
    test: Callable[[], Evaluation]  # the test's results (waits for a test running beside training)
    training_state: dict[str, Any] | None  # what the checkpoint keeps, copied at the epoch's end; None: live


class ContinualTrainer:
    """Trains `model` on `data.tasks` in order and measures every task after every epoch.

    `make_optimizer(model, task)` builds the optimizer for a task (at every task when `fresh_optimizer`);
    `plugins` get the loop's hooks in order; `template` holds the record's fixed fields (config, net, meta, ...);
    `stop_check()` is called between batches and raises to stop the run (runtime.Interrupts.check).
    """

    def __init__(self, model: nn.Module, data: TaskSet,
                 make_optimizer: Callable[[nn.Module, int], torch.optim.Optimizer], plugins: Sequence[Plugin],
                 settings: TrainSettings, run_dir: str | Path, fingerprint: str, template: RunRecord,
                 stop_check: Callable[[], None] | None = None) -> None:
        self.model = model
        self.data = data
        self.make_optimizer = make_optimizer
        self.plugins = list(plugins)
        self.s = settings
        self.run_dir = Path(run_dir)
        self.fingerprint = fingerprint
        self.template = template
        self.stop_check = stop_check or (lambda: None)
        self.resumed = False
        self.startup_s: float | None = None
        self._current = (0, 0)  # the epoch being trained (task, epoch)
        self._next = (0, 0)  # the epoch to train next
        self._pending: _Trained | None = None  # the newest trained epoch, until its test is recorded
        # testing beside training uses an eager copy of the model: only where the loop's own passes are eager
        self._tester = (ThreadPoolExecutor(1, "tester") if settings.test_beside_training and not settings.compile
                        else None)
        self._saved: tuple[int, int] | None = None  # the epoch of the newest checkpoint
        self.device = next(model.parameters()).device
        self.compiled = torch.compile(model) if settings.compile else None
        if self.compiled is not None:
            from torch._dynamo.exc import BackendCompilerFailed

            self._compile_failure = BackendCompilerFailed
        self.generator = seeds.generator(settings.seed, seeds.Stream.shuffle)
        self.masks = data.task_masks
        self.has_val = all(len(t.splits["val"]) for t in data.tasks)
        self.eval_set = EvalSet(data.tasks, settings.eval_batch_size, mix_tasks=not uses_batch_statistics(model))
        self.base_lr = 0.0
        self.optimizer = self._new_optimizer(0)  # built now, so a bad optimizer setting fails before the run starts
        self.scaler = torch.amp.GradScaler(self.device.type) if settings.precision == Precision.fp16 else None
        self.state = _State()
        names = [p.name for p in self.plugins]
        if len(set(names)) != len(names):
            raise ValueError(f"plugin names must be unique, got {names}")

    # ------------------------------------------------------------------ model calls

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`model`'s float32 logits for `x`, computed in the run's precision (eagerly: what plugins use, also
        under torch.func transforms)."""
        dtype = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}.get(self.s.precision)
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(x).float()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The trained model's logits for `x` in training and testing: compiled when the run compiles."""
        if self.compiled is None:
            return self.forward(self.model, x)
        try:
            return self.forward(self.compiled, x)
        except self._compile_failure as exc:
            raise UserError(f"compile=true: torch.compile could not compile the model "
                            f"({' '.join(str(exc).split())[:200]}); run with compile=false") from exc

    def train_logits(self, logits: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """Logits as the training loss sees them: masked to each sample's task in the task scenario."""
        if self.data.scenario != Scenario.task:
            return logits
        return logits.masked_fill(~self.masks[tasks], float("-inf"))

    def _context(self, task: int) -> TaskContext:
        return TaskContext(task, self.data, self.model, self.optimizer, self.forward, self.train_logits,
                           self.s.batch_size, self.s.seed, self.generator)

    def _task_lr(self, task: int) -> float:
        return self.base_lr * self.s.gamma ** (-task)

    def _new_optimizer(self, task: int) -> torch.optim.Optimizer:
        optimizer = self.make_optimizer(self.model, task)
        self.base_lr = optimizer.defaults["lr"]
        return optimizer

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:  # noqa: D102
        return self.run_dir / CHECKPOINT

    def _training_state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the history: model, optimizer, scaler, plugins and RNG (live)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "plugins": {p.name: p.state_dict() for p in self.plugins}, "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state()}

    def _save(self, training_state: dict[str, Any] | None) -> None:
        save_torch(self.checkpoint_path, {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint,
                                          "state": self.state.to_dict(),
                                          **(training_state or self._training_state())})

    def restore(self) -> bool:
        """Load the checkpoint if there is one (and checkpoints are on); refuse one from a different experiment.
        Returns whether the run resumes."""
        if not self.s.checkpoint or not self.checkpoint_path.exists():
            return False
        try:
            ckpt = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
            raise UserError(f"cannot read checkpoint {self.checkpoint_path} ({type(exc).__name__}); "
                            "delete it to start over") from exc
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "fingerprint" not in ckpt:
            raise UserError(f"{self.checkpoint_path} is not a checkpoint of this tool's format; "
                            "delete it or use another run directory")
        if ckpt["fingerprint"] != self.fingerprint:
            raise UserError(f"{self.run_dir} holds a checkpoint of a different experiment (its config differs); "
                            "refusing to resume: use another run directory (hydra.run.dir=...) or delete it")
        self.state = _State.from_dict(ckpt["state"])
        self.model.load_state_dict(ckpt["model"])
        self.generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        for plugin in self.plugins:
            plugin.load_state_dict(ckpt["plugins"][plugin.name])
        if self.scaler is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.state.next_task < len(self.data.tasks):
            self.optimizer = self._new_optimizer(self.state.next_task)  # the optimizer of the task it resumes
            self.optimizer.load_state_dict(ckpt["optimizer"])
        last = self.state.epochs[-1]
        self._saved = (last.task, last.epoch)
        self.resumed = True
        return True

    # ------------------------------------------------------------------ train and test

    def _train_epoch(self, ctx: TaskContext) -> tuple[float, float]:
        """One pass over the task's training stream (as the plugins shape it); returns the mean task loss
        (without extra terms) and the training accuracy (percent)."""
        task = self.data.tasks[ctx.index]
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n = 0
        batches: Iterator[Batch] = task.batches("train", self.s.batch_size, self.generator)
        for plugin in self.plugins:
            batches = plugin.train_batches(ctx, batches)
        optimizer = self.optimizer
        for batch in batches:
            self.stop_check()
            logits = self.logits(batch.x)
            masked = self.train_logits(logits, batch.task)
            loss = F.cross_entropy(masked, batch.y)
            total = loss
            for plugin in self.plugins:
                extra = plugin.loss(ctx, batch, logits)
                if extra is not None:
                    total = total + extra
            optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(total).backward()
                self.scaler.unscale_(optimizer)
            else:
                total.backward()
            for plugin in self.plugins:
                plugin.before_step(ctx)
            if self.scaler is not None:
                self.scaler.step(optimizer)
                self.scaler.update()
            else:
                optimizer.step()
            for plugin in self.plugins:
                plugin.after_step(ctx, batch)
            loss_sum += loss.detach() * len(batch)
            correct += (masked.detach().argmax(1) == batch.y).sum()
            n += len(batch)
        loss = loss_sum.item() / n  # one host sync per epoch, none per step
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"training loss is {loss} on task {task.task.name}")
        if not torch.stack([p.detach().isfinite().all() for p in self.model.parameters()]).all():
            raise NonFiniteLossError(f"parameters became NaN or inf on task {task.task.name}")
        return loss, 100.0 * correct.item() / n

    def _task_states(self, model: nn.Module) -> dict[int, contextlib.AbstractContextManager | None]:
        """For every task, the context in which `model` (the trained model or a copy) holds what the trained
        model had for it (plugins' per-task state); None where the live state is the task's own."""
        return {j: next((state for plugin in self.plugins if (state := plugin.task_state(j, model)) is not None),
                        None) for j in range(len(self.data.tasks))}

    def _count(self, segments: list[tuple[int, str]], logits_of: Callable[[torch.Tensor], torch.Tensor]
               ) -> tuple[list[int], list[int]]:
        """Correct predictions of `logits_of` on each (task, split) segment, without and with each task's
        output mask, in as few batches as the test batch size allows."""
        plain = torch.zeros(len(segments), dtype=torch.long, device=self.device)
        masked = torch.zeros(len(segments), dtype=torch.long, device=self.device)
        for batch, segment in self.eval_set.chunks(segments):
            logits = logits_of(batch.x)
            plain.index_add_(0, segment, (logits.argmax(1) == batch.y).long())
            hits = logits.masked_fill(~self.masks[batch.task], float("-inf")).argmax(1) == batch.y
            masked.index_add_(0, segment, hits.long())
        return plain.tolist(), masked.tolist()

    def _percent(self, correct: int, task: int, split: str) -> float:
        return 100.0 * correct / max(len(self.data.tasks[task].splits[split]), 1)

    def evaluate(self) -> Evaluation:
        """Every task's test accuracy under the run's scenario and task-aware, and its validation accuracy,
        of the live model, in this thread."""
        start = time.perf_counter()
        self.model.eval()
        with threads(self.s.eval_threads):
            evaluation = self._test(self.logits, self._task_states(self.model))
        self.state.eval_time += time.perf_counter() - start
        return evaluation

    def _start_test(self) -> tuple[Callable[[], Evaluation], bool]:
        """Test the trained epoch: on a copy of the model beside the next epoch's training when the run has a
        tester thread, else now. Returns the results' getter and whether the test runs beside training."""
        if self._tester is None:
            evaluation = self.evaluate()
            return (lambda: evaluation), False
        start = time.perf_counter()
        frozen = copy.deepcopy(self.model).eval()
        states = self._task_states(frozen)  # taken now: the plugins' task-end work may store new ones
        self.model.eval()  # as after a test in this thread: the plugins' task-end work sees the same mode
        self.state.eval_time += time.perf_counter() - start
        return self._tester.submit(self._test, lambda x: self.forward(frozen, x), states).result, True

    @torch.no_grad()
    def _test(self, logits_of: Callable[[torch.Tensor], torch.Tensor],
              states: dict[int, contextlib.AbstractContextManager | None]) -> Evaluation:
        """The three tests of every task through `logits_of` (the model in eval mode), given each task's
        per-task state (None: the live one).

        Without the task id (domain, class) every task is tested with the live state and no mask, all tasks
        in one pass; the task-aware test masks the outputs to the task's classes, and tasks whose per-task
        state differs from the live one are passed again with it restored.
        """
        tasks = range(len(self.data.tasks))
        splits = ("test", "val") if self.has_val else ("test",)
        aware_scenario = self.data.scenario == Scenario.task
        live = [(j, split) for j in tasks for split in splits if not (aware_scenario and states[j] is not None)]
        own = {}  # (task, split) -> correct with the task's own state and mask
        plain, masked = self._count(live, logits_of)
        for j in tasks:
            if states[j] is not None:
                segments = [(j, split) for split in (splits if aware_scenario else ("test",))]
                with states[j]:
                    own.update(zip(segments, self._count(segments, logits_of)[1], strict=True))
        result = {seg: (p, m) for seg, p, m in zip(live, plain, masked, strict=True)}
        for (j, split), (_, m) in result.items():
            own.setdefault((j, split), m)
        aware = [self._percent(own[(j, "test")], j, "test") for j in tasks]
        if aware_scenario:
            test = aware
            val = [self._percent(own[(j, "val")], j, "val") for j in tasks] if self.has_val else []
        else:
            test = [self._percent(result[(j, "test")][0], j, "test") for j in tasks]
            val = [self._percent(result[(j, "val")][0], j, "val") for j in tasks] if self.has_val else []
        return Evaluation(test, aware, val)

    # ------------------------------------------------------------------ the run

    def record(self, status: str, reason: str | None = None) -> RunRecord:
        """The run's results so far."""
        st = self.state
        record = dataclasses.replace(
            self.template, status=status, reason=reason, tasks=[t.task.name for t in self.data.tasks],
            scenario=self.data.scenario.value, precision=self.s.precision.value, acc_matrix=st.acc_matrix,
            acc_matrix_task_aware=st.acc_matrix_task_aware, val_acc_matrix=st.val_acc_matrix,
            initial_acc=st.initial_acc, epochs=st.epochs, train_time_s=st.train_time, eval_time_s=st.eval_time,
            resumes=st.resumes, startup_s=self.startup_s)
        record.summarize()
        return record

    def _emit(self, hook: str, *args: Any) -> None:
        for plugin in self.plugins:
            getattr(plugin, hook)(*args)

    def _finish(self, status: str, reason: str) -> None:
        """Tell the sinks how the run ended, as far as the disk allows (a full disk may refuse even that)."""
        record = self.record(status, reason)
        for plugin in self.plugins:
            try:
                plugin.finish(record)
            except OSError as exc:
                log.warning("could not record that the run %s (%s)", status, exc)

    def _where(self) -> str:
        """Where the run stopped and which checkpoint is kept, in words (1-based)."""
        task, epoch = self._current
        kept = (f"the checkpoint after task {self._saved[0] + 1} epoch {self._saved[1] + 1}" if self._saved
                else "no checkpoint yet")
        return f"at task {task + 1} epoch {epoch + 1} ({kept})"

    def run(self) -> RunRecord:
        """Train every task from where `restore` left off and return the record; sinks are closed after."""
        try:
            return self._run()
        finally:
            if self._tester is not None:
                self._tester.shutdown()
            self._emit("close")

    def _run(self) -> RunRecord:
        self.startup_s = process_age()
        st = self.state
        self._next = (st.next_task, st.next_epoch)
        if self.resumed:
            st.resumes.append({"task": st.next_task, "epoch": st.next_epoch})
            log.info("resuming from %s at task %d epoch %d", self.checkpoint_path, st.next_task + 1,
                     st.next_epoch + 1)
        self._emit("start", self.record("running"), self.resumed)
        try:
            try:
                if st.initial_acc is None:
                    st.initial_acc = self.evaluate().test  # random-init accuracy, for FWT
                while self._next[0] < len(self.data.tasks):
                    self._epoch()
            finally:
                self._settle()  # an epoch tested beside the one that failed or was stopped is kept
        except NonFiniteLossError as exc:
            self._finish("failed", f"{exc}; the last good checkpoint is kept")
            raise
        except InterruptedRunError as exc:
            self._finish("interrupted", f"stopped by {exc} {self._where()}; run the same command again to resume")
            raise
        except OSError as exc:
            what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
            reason = f"{what} {self._where()}; free space or fix permissions, then run the same command again"
            self._finish("failed", reason)
            raise EnvironmentFaultError(reason) from exc
        record = self.record("completed")
        self._emit("finish", record)
        return record

    def _epoch(self) -> None:
        """Train one epoch of the current task and start its test; record the epoch before it (tested beside
        this one's training), and this one too when its test ran in the loop."""
        i, e = self._current = self._next
        if e == 0 and i > 0 and self.s.fresh_optimizer:
            self.optimizer = self._new_optimizer(i)
        for group in self.optimizer.param_groups:
            group["lr"] = self._task_lr(i)
        ctx = self._context(i)
        if e == 0:
            self._emit("before_task", ctx)
        start = time.perf_counter()
        loss, acc = self._train_epoch(ctx)
        train_s = time.perf_counter() - start
        self._settle()
        last_epoch = e == self.s.epochs_per_task - 1
        test, beside = self._start_test()
        extra: dict[str, Any] = {}
        for plugin in self.plugins:
            extra.update(plugin.measure(ctx, last_epoch))
        if last_epoch:
            self._emit("after_task", ctx)
        state = copy.deepcopy(self._training_state()) if beside and self.s.checkpoint else None
        self._pending = _Trained(i, e, loss, acc, train_s, extra, test, state)
        self._next = self._following(i, e)
        if not beside:
            self._settle()

    def _following(self, task: int, epoch: int) -> tuple[int, int]:
        """The (task, epoch) trained after `epoch` of `task`."""
        return (task + 1, 0) if epoch == self.s.epochs_per_task - 1 else (task, epoch + 1)

    def _settle(self) -> None:
        """Record the pending epoch once its test has ended: the record, the checkpoint, the sinks."""
        done, self._pending = self._pending, None
        if done is None:
            return
        st = self.state
        start = time.perf_counter()
        ev = done.test()
        st.eval_time += time.perf_counter() - start
        st.train_time += done.train_s
        i = done.task
        last_epoch = done.epoch == self.s.epochs_per_task - 1
        epoch = EpochRecord(task=i, epoch=done.epoch, train_loss=done.loss, train_acc=done.acc, test_acc=ev.test,
                            test_acc_task_aware=ev.task_aware, val_acc=ev.val,
                            mean_seen_acc=sum(ev.test[:i + 1]) / (i + 1), lr=self._task_lr(i), **done.extra)
        st.epochs.append(epoch)
        if last_epoch:
            st.acc_matrix.append(ev.test)
            st.acc_matrix_task_aware.append(ev.task_aware)
            st.val_acc_matrix.append(ev.val)
        st.next_task, st.next_epoch = self._following(i, done.epoch)
        if self.s.checkpoint:
            self._save(done.training_state)
            self._saved = (epoch.task, epoch.epoch)
        record = self.record("running")
        self._emit("epoch", epoch, record)
        if last_epoch:
            self._emit("task_end", record)
