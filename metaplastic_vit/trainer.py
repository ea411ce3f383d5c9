"""The continual-learning loop: learn tasks in sequence, test every task after every epoch.

After each epoch the trainer checkpoints atomically (model, optimizer, per-task state, RNG, history), so
running again in the same directory resumes from the last finished epoch and ends with the same results
as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import metrics
from .atomic import save_torch
from .binarize import BINARY_LAYERS
from .data import TaskData, TaskSet
from .errors import TrainingFailedError, UserError
from .models import TaskLocalState
from .optim import MetaplasticAdam
from .regularizers import EWC, SI, Regularizer

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
# f_meta below this counts a weight as consolidated in the diagnostics
ATTENUATED_BELOW = 0.5


class NonFiniteLossError(TrainingFailedError):
    """The training loss or the parameters became NaN or inf."""


@dataclass
class TrainSettings:
    """What the loop needs beyond the model and the data."""

    epochs_per_task: int
    batch_size: int
    eval_batch_size: int
    lr: float
    gamma: float
    decay: float
    meta: float | list[float]
    meta_on: str = "all"
    meta_scale: str = "none"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    fresh_per_task: bool = True
    implementation: str = "auto"
    seed: int = 0
    per_task: Sequence[str] = ()
    amp: bool = False  # bf16 autocast (CUDA)
    checkpoint: bool = True
    strategy: str = "naive"  # naive | ewc | si | joint
    ewc_lambda: float = 100.0
    si_lambda: float = 1.0
    si_damping: float = 0.1
    fisher_samples: int = 512



def make_regularizer(model: nn.Module, s: TrainSettings) -> Regularizer | None:
    """The EWC / SI penalty of the strategy, or None."""
    if s.strategy == "ewc":
        return EWC(model, s.ewc_lambda, s.fisher_samples)
    if s.strategy == "si":
        return SI(model, s.si_lambda, s.si_damping)
    return None


def joint_batches(tasks: Sequence[TaskData], batch_size: int,
                  generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches mixing every task in equal parts (the paper's interleaved training: the upper bound)."""
    per_task = max(1, batch_size // len(tasks))
    streams = [t.batches("train", per_task, generator) for t in tasks]
    for parts in zip(*streams, strict=False):
        yield torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


class Sink:
    """Receives the run's progress; every method is optional. `close` is always called."""

    def start(self, results: dict[str, Any], resumed: bool) -> None:  # noqa: D102
        pass

    def epoch(self, record: dict[str, Any], results: dict[str, Any]) -> None:  # noqa: D102
        pass

    def task_end(self, task: int, histograms: dict[str, dict[str, list[float]]]) -> None:  # noqa: D102
        pass

    def finish(self, results: dict[str, Any]) -> None:  # noqa: D102
        pass

    def close(self) -> None:  # noqa: D102
        pass


def meta_targets(model: nn.Module, meta_on: str) -> list[tuple[str, nn.Parameter]]:
    """The weight tensors metaplasticity acts on, in model order: every parameter with >= 2 dimensions
    (meta_on="all", the paper's rule) or only the binary layers' weights (meta_on="binary")."""
    if meta_on == "binary":
        return [(f"{n}.weight", m.weight) for n, m in model.named_modules() if isinstance(m, BINARY_LAYERS)]
    return [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]


def param_groups(model: nn.Module, meta: float | Sequence[float], meta_on: str) -> list[dict[str, Any]]:
    """Param groups for MetaplasticAdam: one per distinct meta value, and meta 0 for everything else.

    A list `meta` gives one value per target tensor (layer-wise meta, as the paper's --meta list).
    """
    targets = meta_targets(model, meta_on)
    if isinstance(meta, int | float):
        metas = [float(meta)] * len(targets)
    else:
        metas = [float(m) for m in meta]
        if len(metas) != len(targets):
            names = ", ".join(n for n, _ in targets)
            raise UserError(f"meta has {len(metas)} values but the model has {len(targets)} metaplastic weight "
                            f"tensors (optimizer.meta_on={meta_on}): {names}")
    by_meta: dict[float, list[nn.Parameter]] = {}
    for (_, p), m in zip(targets, metas, strict=True):
        by_meta.setdefault(m, []).append(p)
    chosen = {id(p) for _, p in targets}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    groups = [{"params": ps, "meta": m} for m, ps in by_meta.items()]
    if rest:
        groups.append({"params": rest, "meta": 0.0})
    return groups


def diagnostic_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers whose hidden weights the diagnostics follow: the binary ones, or every Linear/Conv2d."""
    binary = {n: m for n, m in model.named_modules() if isinstance(m, BINARY_LAYERS)}
    return binary or {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


@dataclass
class _State:
    """Everything a checkpoint restores."""

    next_task: int = 0
    next_epoch: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    acc_matrix: list[list[float]] = field(default_factory=list)
    initial_acc: list[float] | None = None
    histograms: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    train_time: float = 0.0
    eval_time: float = 0.0
    resumes: list[dict[str, int]] = field(default_factory=list)


class ContinualTrainer:
    """Trains `model` on `data.tasks` in order and measures every task after every epoch."""

    def __init__(self, model: nn.Module, data: TaskSet, settings: TrainSettings, run_dir: str | Path,
                 fingerprint: str, sinks: Sequence[Sink] = (), base_results: dict[str, Any] | None = None) -> None:
        self.model = model
        self.data = data
        self.s = settings
        self.run_dir = Path(run_dir)
        self.fingerprint = fingerprint
        self.sinks = list(sinks)
        self.base_results = base_results or {}
        self.device = next(model.parameters()).device
        self.bank = TaskLocalState(model, settings.per_task) if settings.per_task else None
        self.layers = diagnostic_layers(model)
        self.layer_meta = self._layer_meta()
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.regularizer = make_regularizer(model, settings)
        if settings.strategy == "joint" and data.scenario == "task":
            raise UserError("strategy=joint mixes tasks in every batch, which the task scenario's per-task "
                            "output masks do not allow; use data.scenario=domain or class")
        self.optimizer: MetaplasticAdam | None = None
        self.task_start_signs: dict[str, torch.Tensor] = {}
        self.state = _State()

    # ------------------------------------------------------------------ set-up

    def _layer_meta(self) -> dict[str, float]:
        """The meta value each diagnostic layer's weight gets (0 where metaplasticity does not act)."""
        metas = {}
        for group in param_groups(self.model, self.s.meta, self.s.meta_on):
            for p in group["params"]:
                metas[id(p)] = group["meta"]
        return {n: metas[id(m.weight)] for n, m in self.layers.items()}

    def _task_lr(self, task: int) -> float:
        return self.s.lr * self.s.gamma ** (-task)

    def _new_optimizer(self, task: int) -> MetaplasticAdam:
        return MetaplasticAdam(param_groups(self.model, self.s.meta, self.s.meta_on), lr=self._task_lr(task),
                               betas=tuple(self.s.betas), eps=self.s.eps, weight_decay=self.s.decay,
                               meta_scale=self.s.meta_scale, implementation=self.s.implementation)

    def _begin_task(self, task: int) -> None:
        if self.optimizer is None or self.s.fresh_per_task:
            self.optimizer = self._new_optimizer(task)
        for group in self.optimizer.param_groups:
            group["lr"] = self._task_lr(task)
        self.task_start_signs = {n: m.weight.detach().sign().to(torch.int8) for n, m in self.layers.items()}
        if self.regularizer is not None:
            self.regularizer.begin_task()

    def _end_task(self, task: TaskData) -> None:
        """Let the regularizer measure the task just learned (EWC's Fisher, SI's importance)."""
        if self.regularizer is None:
            return
        batch_stats = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats
                          for m in self.model.modules())
        self.model.eval()  # norms with batch statistics need batches of more than one sample
        self.regularizer.end_task(task.batches("train", 64 if batch_stats else 1),
                                  lambda x, y: F.cross_entropy(self._logits(x, task), y))

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:  # noqa: D102
        return self.run_dir / CHECKPOINT

    def _save(self) -> None:
        save_torch(self.checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "state": self.state.__dict__,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "bank": self.bank.saved if self.bank else None, "generator": self.generator.get_state(),
            "regularizer": self.regularizer.state_dict() if self.regularizer else None,
            "torch_rng": torch.get_rng_state(), "task_start_signs": self.task_start_signs,
        })

    def _restore(self) -> bool:
        """Load the checkpoint if there is one; refuse one from a different experiment."""
        if not self.checkpoint_path.exists():
            return False
        try:
            ckpt = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
            raise UserError(f"cannot read checkpoint {self.checkpoint_path} ({type(exc).__name__}); "
                            "delete it to start over") from exc
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{self.checkpoint_path} is not a checkpoint of this tool's format; "
                            "delete it or use another run directory")
        if ckpt["fingerprint"] != self.fingerprint:
            raise UserError(f"{self.run_dir} holds a checkpoint of a different experiment (its config differs); "
                            "refusing to resume: use another run directory (hydra.run.dir=...) or delete it")
        self.state = _State(**ckpt["state"])
        self.model.load_state_dict(ckpt["model"])
        if self.bank is not None:
            self.bank.saved = ckpt["bank"]
        self.generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.task_start_signs = ckpt["task_start_signs"]
        if self.regularizer is not None:
            self.regularizer.load_state_dict(ckpt["regularizer"])
        if ckpt["optimizer"] is not None and self.state.next_task < len(self.data.tasks):
            self.optimizer = self._new_optimizer(self.state.next_task)
            self.optimizer.load_state_dict(ckpt["optimizer"])
        return True

    # ------------------------------------------------------------------ train and test

    def _logits(self, x: torch.Tensor, task: TaskData) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.s.amp):
            logits = self.model(x).float()
        if self.data.scenario == "task":  # only the task's own classes compete
            masked = torch.full_like(logits, float("-inf"))
            masked[:, task.outputs] = logits[:, task.outputs]
            logits = masked
        return logits

    def _train_epoch(self, task: TaskData) -> tuple[float, float]:
        """One pass over the task's training set (every task's, for joint training); returns the mean task
        loss (without penalty) and the accuracy (percent)."""
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n = 0
        reg = self.regularizer
        if self.s.strategy == "joint":
            batches = joint_batches(self.data.tasks, self.s.batch_size, self.generator)
        else:
            batches = task.batches("train", self.s.batch_size, self.generator)
        for x, y in batches:
            logits = self._logits(x, task)
            loss = F.cross_entropy(logits, y)
            penalty = reg.penalty() if reg is not None else None
            self.optimizer.zero_grad(set_to_none=True)
            (loss if penalty is None else loss + penalty).backward()
            if reg is not None:
                reg.before_step()
            self.optimizer.step()
            if reg is not None:
                reg.after_step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            n += len(y)
        loss = loss_sum.item() / n  # one host sync per epoch, none per step
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"training loss is {loss} on task {task.task.name}")
        if not torch.stack([p.detach().isfinite().all() for p in self.model.parameters()]).all():
            raise NonFiniteLossError(f"parameters became NaN or inf on task {task.task.name}")
        return loss, 100.0 * correct.item() / n

    @torch.inference_mode()
    def _test(self, task: TaskData) -> float:
        self.model.eval()
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for x, y in task.batches("test", self.s.eval_batch_size):
            correct += (self._logits(x, task).argmax(1) == y).sum()
        return 100.0 * correct.item() / max(len(task.test_idx), 1)

    def test_all(self, current: int) -> list[float]:
        """Accuracy on every task; tasks finished before `current` use their own per-task state."""
        start = time.perf_counter()
        now = self.bank.snapshot() if self.bank and current else None
        accs = []
        for j, task in enumerate(self.data.tasks):
            own_state = self.bank is not None and j < current
            if own_state:
                self.bank.load(self.bank.saved[j])
            accs.append(self._test(task))
            if own_state:
                self.bank.load(now)
        self.state.eval_time += time.perf_counter() - start
        return accs

    # ------------------------------------------------------------------ diagnostics

    @torch.no_grad()
    def diagnostics(self) -> dict[str, dict[str, float]]:
        """Per layer: share of hidden weights with f_meta < 0.5, share of signs flipped since the task
        began, and mean |W_h| (metaplasticity only bites once |W_h| has grown; ALGORITHM.md section 6)."""
        out = {}
        for name, module in self.layers.items():
            w = module.weight.detach()
            meta = self.layer_meta[name]
            magnitude = w.abs() / w.square().mean().sqrt().clamp_min(1e-12) if self.s.meta_scale == "rms" else w.abs()
            attenuated = (1 - torch.tanh(meta * magnitude) ** 2 < ATTENUATED_BELOW).float().mean() if meta else None
            start = self.task_start_signs.get(name)
            flipped = (w.sign().to(torch.int8) != start).float().mean() if start is not None else None
            out[name] = {"attenuated": 0.0 if attenuated is None else attenuated.item(),
                         "flipped": 0.0 if flipped is None else flipped.item(),
                         "mean_abs": w.abs().mean().item()}
        return out

    @torch.no_grad()
    def histograms(self, bins: int = 60) -> dict[str, dict[str, list[float]]]:
        """Hidden-weight histograms per diagnostic layer."""
        out = {}
        for name, module in self.layers.items():
            w = module.weight.detach().float().flatten().cpu()
            lo, hi = w.min().item(), w.max().item()
            if hi <= lo:
                hi = lo + 1e-6
            counts = torch.histc(w, bins=bins, min=lo, max=hi)
            out[name] = {"edges": torch.linspace(lo, hi, bins + 1).tolist(), "counts": counts.tolist()}
        return out

    # ------------------------------------------------------------------ the run

    def results(self, status: str, reason: str | None = None) -> dict[str, Any]:
        """The run's results so far, in the results.json format."""
        st = self.state
        complete = len(st.acc_matrix) == len(self.data.tasks)
        summary = metrics.summary(st.acc_matrix, st.initial_acc) if complete else {}
        return {
            **self.base_results, "status": status, "reason": reason,
            "tasks": [t.task.name for t in self.data.tasks], "scenario": self.data.scenario,
            "acc_matrix": st.acc_matrix, "initial_acc": st.initial_acc,
            "avg_acc": summary.get("avg_acc"), "bwt": summary.get("bwt"), "forgetting": summary.get("forgetting"),
            "fwt": summary.get("fwt"), "epochs": st.records, "histograms": st.histograms,
            "train_time_s": st.train_time, "eval_time_s": st.eval_time, "resumes": st.resumes,
        }

    def _emit(self, method: str, *args: Any) -> None:
        for sink in self.sinks:
            getattr(sink, method)(*args)

    def run(self) -> dict[str, Any]:
        """Train every task (resuming if a checkpoint exists) and return the results."""
        try:
            return self._run()
        finally:
            self._emit("close")

    def _run(self) -> dict[str, Any]:
        resumed = self.s.checkpoint and self._restore()
        st = self.state
        if resumed:
            st.resumes.append({"task": st.next_task, "epoch": st.next_epoch})
            log.info("resuming from %s at task %d epoch %d", self.checkpoint_path, st.next_task + 1,
                     st.next_epoch + 1)
        self._emit("start", self.results("running"), resumed)
        if st.initial_acc is None:
            st.initial_acc = self.test_all(current=0)  # random-init accuracy, for FWT
        tasks = self.data.tasks
        try:
            while st.next_task < len(tasks):
                i, task = st.next_task, tasks[st.next_task]
                if st.next_epoch == 0:
                    self._begin_task(i)
                start = time.perf_counter()
                loss, acc = self._train_epoch(task)
                st.train_time += time.perf_counter() - start
                test_acc = self.test_all(current=i)
                record = {"task": i, "epoch": st.next_epoch, "train_loss": loss, "train_acc": acc,
                          "test_acc": test_acc, "mean_seen_acc": sum(test_acc[:i + 1]) / (i + 1),
                          "lr": self._task_lr(i), "diagnostics": self.diagnostics()}
                st.records.append(record)
                last_epoch = st.next_epoch == self.s.epochs_per_task - 1
                if last_epoch:
                    st.acc_matrix.append(test_acc)
                    self._end_task(task)
                    if self.bank:
                        self.bank.save_task(i)
                    hist = self.histograms()
                    for name, h in hist.items():
                        st.histograms.setdefault(name, []).append({"task": i, **h})
                st.next_task, st.next_epoch = (i + 1, 0) if last_epoch else (i, st.next_epoch + 1)
                if self.s.checkpoint:
                    self._save()
                self._emit("epoch", record, self.results("running"))
                if last_epoch:
                    self._emit("task_end", i, hist)
        except NonFiniteLossError as exc:
            results = self.results("failed", f"{exc}; the last good checkpoint is kept")
            self._emit("finish", results)
            raise
        results = self.results("completed")
        self._emit("finish", results)
        return results

