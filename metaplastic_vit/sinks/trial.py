"""A search trial's link to its study: after every epoch the run's validation accuracy is reported to the search's
Optuna study, and the run stops (`pruned`) when the study's pruner finds its trial behind the others.

The search sweeper (hydra/sweeper=optuna with `pruner` set) adds this sink to each job's `logger` dict. The
study lives in the sweep directory's journal file, which every job of the search can reach (the same machine,
or a file system shared by Slurm nodes). Of a trial's runs (one per search seed) the first reports; every one
follows the pruner's decision on what was reported, so a trial stops as a whole.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from ..errors import RunPruned
from ..loop.hooks import RunObserver
from ..record import EpochRecord, RunRecord
from . import register_sink

PRUNERS = ("none", "median", "hyperband")


def make_pruner(name: str, startup_trials: int = 4, warmup_epochs: int = 0) -> Any:
    """An Optuna pruner by name (one of PRUNERS): median stops a trial whose value at an epoch is below the median
    of earlier trials' at that epoch (after `startup_trials` trials and `warmup_epochs` epochs); hyperband
    runs successive halving over brackets of trials."""
    import optuna

    return {"none": lambda: optuna.pruners.NopPruner(),
            "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                                          n_warmup_steps=warmup_epochs),
            "hyperband": lambda: optuna.pruners.HyperbandPruner()}[name]()


@register_sink("trial")
@dataclass
class TrialSinkConfig:
    """logger.trial: the search trial this run belongs to (set by the search sweeper, not by hand)."""

    _target_: str = "metaplastic_vit.sinks.trial.TrialReporter"
    _partial_: bool = True
    journal: str = MISSING  # the study's journal file
    study: str = MISSING  # the study's name
    number: int = MISSING  # the trial's number
    report: bool = True  # whether this run reports (the first of the trial's seeds)
    pruner: str = "median"
    startup_trials: int = 4
    warmup_epochs: int = 0


class TrialReporter(RunObserver):
    """Reports each epoch's mean validation accuracy (over every task, as the objective `val_avg_acc` is after the
    last) to trial `number` of the study, and raises RunPruned when the pruner prunes the trial."""

    def __init__(self, run_dir: str | Path, journal: str, study: str, number: int, report: bool = True,
                 pruner: str = "median", startup_trials: int = 4, warmup_epochs: int = 0) -> None:
        self.journal, self.study_name, self.number, self.report = journal, study, number, report
        self.pruner = (pruner, startup_trials, warmup_epochs)
        self._trial: Any = None

    def _load(self) -> Any:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = JournalStorage(JournalFileBackend(self.journal))
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=make_pruner(*self.pruner))
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(self.study_name),
                                                                   self.number)
        return optuna.trial.Trial(study, trial_id)

    def epoch(self, epoch: EpochRecord, record: RunRecord) -> None:  # noqa: D102
        if not epoch.val_acc:
            return
        if self._trial is None:
            self._trial = self._load()
        step, value = len(record.epochs) - 1, statistics.fmean(epoch.val_acc)
        if self.report:
            self._trial.report(value, step)
        if self._trial.should_prune():
            raise RunPruned(f"pruned by the search's {self.pruner[0]} pruner after epoch {step + 1} (trial "
                            f"{self.number}: validation accuracy {value:.1f}% over every task)")
