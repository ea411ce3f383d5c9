"""`hydra/sweeper=optuna`: a search over any config keys with Optuna's ask-and-tell API, on validation metrics.

Each trial runs one job per seed of `seeds` (through whatever launcher is configured; null: the config's own
seed, one job), and its objectives are the means over those jobs of validation numbers read from their
results (`val_avg_acc`, `val_old_acc`, `val_new_acc`); a test-set objective is refused unless
`allow_test_objective` is set. Search on seeds that are not the evaluation seeds (the named searches use
100-102), so the values chosen were never measured on the runs that are reported. trials.json keeps every
seed's values and the standard error of each objective's mean.

The study lives in the sweep directory as an Optuna journal file (`study.journal`), so the same search
command again continues it up to `n_trials` finished trials: trials an interrupted search left running are
run again with the same values, in the same job directories, where they resume from their checkpoints. Each
trial is drawn by a sampler seeded from (`seed`, the trial's number), so a continued search draws what an
uninterrupted one would have drawn; a draw equal to an earlier trial's values is not run again and does not
count as a trial (a small choice space may run out of new points: the search then stops early).

Search spaces use Hydra's override grammar: `choice(a, b)`, `range(1, 8)`, `interval(0.1, 10)`,
`tag(log, interval(1, 300))` for a log scale, and the extra tag `zero` for a separate arm at 0, e.g.
`meta: tag(log, zero, interval(1, 300))`: one trial at meta 0 (the first of the study), the others sampled
log-uniformly between 1 and 300.
"""

import dataclasses
import json
import logging
import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from metaplastic_vit.errors import UserError
from metaplastic_vit.record import (
    RESULTS,
    SEARCH,
    TRIALS,
    VALIDATION_METRICS,
    MalformedRecordError,
    RunRecord,
    read_record,
)
from metaplastic_vit.sinks.trial import PRUNERS

log = logging.getLogger(__name__)


@dataclass
class OptunaSearchSweeperConf:
    """hydra/sweeper=optuna: a resumable search on validation metrics (see the module's doc)."""

    _target_: str = "hydra_plugins.metaplastic_vit_plugins.search_sweeper.OptunaSearchSweeper"
    objectives: list[str] = field(default_factory=lambda: ["val_avg_acc"])  # validation metrics of results.json
    directions: list[str] | None = None  # null: maximize every objective
    n_trials: int = 20  # finished trials the study ends with, over every run of the command
    n_jobs: int = 1  # trials launched together (the launcher runs their jobs in parallel where it can)
    sampler: str = "tpe"  # tpe | random | qmc (quasi-random: even coverage of the space) | nsgaii
    seed: int = 0  # the sampler's (each trial's draw is seeded from it and the trial's number)
    startup_trials: int = 4  # tpe: random trials before it models the objective (small budgets want few)
    seeds: list[int] | None = None  # run seeds of every trial, objectives averaged over them; null: the config's
    allow_test_objective: bool = False  # true lets a test-set metric be the objective (results tuned on the test)
    # none | median (stop a trial below the median of earlier trials at the same epoch) | hyperband, on each
    # epoch's validation accuracy; a pruned trial's runs end with status `pruned`
    pruner: str = "none"
    prune_warmup_epochs: int = 0  # epochs a trial always trains before it may be pruned
    study_name: str | None = None  # null: the sweep directory's name
    params: dict[str, Any] = field(default_factory=dict)  # key: search space, in Hydra's override grammar

JOURNAL = "study.journal"
ZERO_ARM = "zero"
DUPLICATE = "duplicate_of"  # user attribute of a draw that repeated an earlier trial's values


def parse_space(params: dict[str, Any], arguments: Sequence[str]) -> tuple[dict[str, Override], list[str]]:
    """Split the search space (sweep overrides from `params` and the command line) from the fixed overrides."""
    parser = OverridesParser.create()
    overrides = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + list(arguments))
    space: dict[str, Override] = {}
    fixed: list[str] = []
    for override in overrides:
        if override.is_sweep_override():
            space[override.get_key_element()] = override
        else:
            fixed.append(override.input_line)
    return space, fixed


def suggest(trial: Any, name: str, override: Override, zero_tried: bool) -> None:
    """Draw `name` from its sweep description (choice, range or interval, with the tags log and zero); the
    zero arm is one trial of its own, marked by a user attribute instead of a sampled value."""
    sweep = override.value()
    if isinstance(sweep, ChoiceSweep):
        trial.suggest_categorical(name, [str(v) if not isinstance(v, int | float) else v for v in sweep.list])
    elif isinstance(sweep, RangeSweep):
        trial.suggest_categorical(name, list(override.sweep_iterator()))
    elif ZERO_ARM in sweep.tags and not zero_tried:
        trial.set_user_attr(f"{ZERO_ARM}:{name}", True)
    elif isinstance(sweep.start, int) and isinstance(sweep.end, int):
        trial.suggest_int(name, sweep.start, sweep.end, log="log" in sweep.tags)
    else:
        trial.suggest_float(name, float(sweep.start), float(sweep.end), log="log" in sweep.tags)


def trial_values(trial: Any) -> dict[str, Any]:
    """The config values of a (possibly earlier) trial: its sampled parameters and its zero arms."""
    values = dict(trial.params)
    for attr in trial.user_attrs:
        if attr.startswith(f"{ZERO_ARM}:"):
            values[attr.split(":", 1)[1]] = 0
    return values


def check_objectives(objectives: Sequence[str], allow_test: bool) -> None:
    """Objectives must be validation metrics of the record: a UserError for anything else, and for a test-set
    metric unless `allow_test` (tuning on the test set makes the reported test numbers optimistic)."""
    fields = {f.name for f in dataclasses.fields(RunRecord)}
    for name in objectives:
        if name in VALIDATION_METRICS:
            continue
        if name in fields and allow_test:
            log.warning("search: objective %s is not a validation metric; its results are tuned on it", name)
            continue
        what = "is measured on the test set" if name in fields else "is not a metric of results.json"
        raise UserError(f"search objective {name!r} {what}; choose among {', '.join(VALIDATION_METRICS)}"
                        + ("" if name not in fields else
                           " (hydra.sweeper.allow_test_objective=true forces a test-set objective)"))


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number`: a continued study draws what an uninterrupted one would have."""
    return int(np.random.SeedSequence(entropy=seed, spawn_key=(number,)).generate_state(1)[0])


def _quiet(sampler: Any, **kwargs: Any) -> Any:
    """An Optuna sampler built without its "experimental" warning (QMCSampler's interface is stable enough here)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return sampler(**kwargs)


SAMPLERS = ("tpe", "random", "qmc", "nsgaii")


def make_sampler(name: str, seed: int, startup_trials: int) -> Any:
    """An Optuna sampler by name (one of SAMPLERS), seeded."""
    import optuna

    return {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup_trials),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "qmc": lambda: _quiet(optuna.samplers.QMCSampler, seed=seed, scramble=True),
            "nsgaii": lambda: optuna.samplers.NSGAIISampler(seed=seed)}[name]()


class OptunaSearchSweeper(Sweeper):
    """A resumable Optuna search over config keys; objectives are validation metrics averaged over seeds."""

    def __init__(self, objectives: Sequence[str] = ("val_avg_acc",), directions: Sequence[str] | None = None,
                 n_trials: int = 20, n_jobs: int = 1, sampler: str = "tpe", seed: int = 0, startup_trials: int = 4,
                 seeds: Sequence[int] | None = None, allow_test_objective: bool = False, pruner: str = "none",
                 prune_warmup_epochs: int = 0, study_name: str | None = None,
                 params: dict[str, Any] | None = None) -> None:
        self.objectives = list(objectives)
        self.directions = list(directions or ["maximize"] * len(self.objectives))
        if len(self.directions) != len(self.objectives):
            raise UserError(f"{len(self.objectives)} objectives but {len(self.directions)} directions")
        check_objectives(self.objectives, allow_test_objective)
        if sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        self.n_trials = n_trials
        self.n_jobs = max(1, n_jobs)
        self.sampler = sampler
        self.seed = seed
        self.startup_trials = startup_trials
        if pruner not in PRUNERS:
            raise UserError(f"unknown pruner {pruner!r}; choose one of {', '.join(PRUNERS)}")
        if pruner != "none" and len(self.objectives) > 1:
            raise UserError("a search on several objectives cannot prune (Optuna prunes on one): set "
                            "hydra.sweeper.pruner=none")
        self.pruner, self.prune_warmup_epochs = pruner, prune_warmup_epochs
        self.seeds = list(seeds) if seeds else [None]
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"hydra.sweeper.seeds lists a seed twice: {list(seeds or [])}")
        self.study_name = study_name
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:  # noqa: D102
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def _study(self, sweep_dir: Path, number: int = 0) -> Any:
        """The study in `sweep_dir` (created on first use) with a sampler seeded for trial `number` (QMC keeps
        one seed: its points are one scrambled sequence, indexed by the study itself)."""
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = self.seed if self.sampler == "qmc" else trial_seed(self.seed, number)
        storage = JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL)))
        return optuna.create_study(study_name=self.study_name or sweep_dir.name, storage=storage,
                                   sampler=make_sampler(self.sampler, seed, self.startup_trials),
                                   directions=self.directions, load_if_exists=True)

    def sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        """Run trials in batches of n_jobs until n_trials have finished (counting earlier runs of the search)."""
        from optuna.trial import TrialState

        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        space, fixed = parse_space(self.params, arguments)
        if self.seeds != [None] and any(f.split("=", 1)[0].lstrip("+~") == "seed" for f in fixed):
            raise UserError("seed is set by hydra.sweeper.seeds in a search (each trial runs every one of them); "
                            "set hydra.sweeper.seeds=[...] instead of seed=...")
        study = self._study(sweep_dir)
        (sweep_dir / SEARCH).write_text(json.dumps({
            "objectives": self.objectives, "directions": self.directions, "n_trials": self.n_trials,
            "seeds": self.seeds, "space": {k: v.input_line for k, v in space.items()}, "fixed": fixed}, indent=2))
        stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
        if stale:
            log.info("search: %d trials of an earlier, interrupted run are run again (they resume)", len(stale))
        returns: list[list[JobReturn]] = []
        run_dirs = self._run_dirs(sweep_dir)
        while (room := self.n_trials - len(counted(study.get_trials(deepcopy=False)))) > 0:
            batch = stale[:min(self.n_jobs, room)]
            stale = stale[len(batch):]
            while len(batch) < min(self.n_jobs, room):
                trial = self._ask(sweep_dir, space, batch)
                if trial is None:
                    break
                batch.append(trial)
            if not batch:
                log.warning("search: no untried point is left in the space; stopping at %d trials",
                            len(counted(study.get_trials(deepcopy=False))))
                break
            results = self._launch(sweep_dir, fixed, batch)
            for trial in batch:
                mine = results[trial.number]
                run_dirs[trial.number] = [str(r.hydra_cfg.hydra.runtime.output_dir) for r in mine]
                values = [recorded_objectives(Path(d), self.objectives) if r.status == JobStatus.COMPLETED else None
                          for r, d in zip(mine, run_dirs[trial.number], strict=True)]
                if any(pruned(Path(d)) for d in run_dirs[trial.number]):
                    study.tell(trial.number, state=TrialState.PRUNED)
                    log.info("search: trial %d pruned", trial.number)
                elif any(v is None for v in values):
                    study.tell(trial.number, state=TrialState.FAIL)
                    log.warning("search: trial %d failed (see %s)", trial.number, ", ".join(run_dirs[trial.number]))
                else:
                    study.tell(trial.number, [statistics.fmean(col) for col in zip(*(v for _, v in values),
                                                                                      strict=True)])
            returns.append([r for trial in batch for r in results[trial.number]])
            self._write_trials(sweep_dir, study, run_dirs)
        self._write_trials(sweep_dir, study, run_dirs)
        self._summarize(study)
        return returns

    def _ask(self, sweep_dir: Path, space: dict[str, Override], batch: list[Any], tries: int = 20) -> Any | None:
        """A new trial whose values no earlier trial (nor one of this batch) has; None when `tries` draws in a
        row repeat earlier ones. Repeats are kept in the study as failed trials marked `duplicate_of`."""
        from optuna.trial import TrialState

        count = len(self._study(sweep_dir).get_trials(deepcopy=False))
        for number in range(count, count + tries):
            study = self._study(sweep_dir, number)
            earlier = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL] + batch
            tried = {a for t in study.get_trials(deepcopy=False) for a in t.user_attrs}
            trial = study.ask()
            for name, override in space.items():
                suggest(trial, name, override, f"{ZERO_ARM}:{name}" in tried)
            twin = next((t for t in earlier if trial_values(t) == trial_values(trial)), None)
            if twin is None:
                return trial
            trial.set_user_attr(DUPLICATE, twin.number)
            study.tell(trial, state=TrialState.FAIL)
            log.info("search: trial %d repeats trial %d's values; drawing again", trial.number, twin.number)
        return None

    def _launch(self, sweep_dir: Path, fixed: list[str], batch: list[Any]) -> dict[int, list[JobReturn]]:
        """Every job of the batch (one per trial and seed) in one launch; each trial's results in seed order."""
        jobs = [(t.number, [*fixed, f"hydra.sweep.dir={_quoted(sweep_dir)}",  # the jobs' sweep dir, resolved once
                            *(f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in trial_values(t).items()),
                            *([] if seed is None else [f"seed={seed}"]), *self._reporter(sweep_dir, t.number, k)])
                for t in batch for k, seed in enumerate(self.seeds)]
        overrides = [o for _, o in jobs]
        self.validate_batch_is_legal(overrides)
        results = self.launcher.launch(overrides, initial_job_idx=min(t.number for t in batch) * len(self.seeds))
        by_trial: dict[int, list[JobReturn]] = {}
        for (number, _), result in zip(jobs, results, strict=True):
            by_trial.setdefault(number, []).append(result)
        return by_trial

    def _reporter(self, sweep_dir: Path, number: int, seed_index: int) -> list[str]:
        """With a pruner, the override adding the sink that reports the job's epochs to trial `number` (the
        first seed's job reports, every job follows the pruner's decision)."""
        if self.pruner == "none":
            return []
        fields = {"_target_": "metaplastic_vit.sinks.trial.TrialReporter", "_partial_": "true",
                  "journal": _quoted(sweep_dir / JOURNAL), "study": _quoted(self.study_name or sweep_dir.name),
                  "number": number, "report": str(seed_index == 0).lower(), "pruner": self.pruner,
                  "startup_trials": self.startup_trials, "warmup_epochs": self.prune_warmup_epochs}
        return ["+logger.trial={" + ",".join(f"{k}:{v}" for k, v in fields.items()) + "}"]

    @staticmethod
    def _run_dirs(sweep_dir: Path) -> dict[int, list[str]]:
        try:
            return {t["number"]: t["run_dirs"] for t in json.loads((sweep_dir / TRIALS).read_text()) if t["run_dirs"]}
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            return {}

    def _write_trials(self, sweep_dir: Path, study: Any, run_dirs: dict[int, list[str]]) -> None:
        """trials.json: what a report needs, without reading the study: each trial's values, its objectives'
        means over its seeds with their standard errors, and every seed's own values."""
        rows = []
        for t in study.get_trials(deepcopy=False):
            dirs = run_dirs.get(t.number, [])
            found = [r for d in dirs if (r := recorded_objectives(Path(d), self.objectives)) is not None]
            per_seed = {str(seed): dict(zip(self.objectives, values, strict=True)) for seed, values in found}
            rows.append({"number": t.number, "state": t.state.name, "params": trial_values(t),
                         "values": dict(zip(self.objectives, t.values, strict=True)) if t.values else None,
                         "stderr": {o: standard_error([v[o] for v in per_seed.values()]) for o in self.objectives}
                         if t.values else None,
                         "per_seed": per_seed, "run_dirs": dirs, "duplicate_of": t.user_attrs.get(DUPLICATE)})
        tmp = sweep_dir / f".{TRIALS}.tmp"
        tmp.write_text(json.dumps(rows, indent=2))
        tmp.replace(sweep_dir / TRIALS)

    def _summarize(self, study: Any) -> None:
        if not any(t.values for t in study.get_trials(deepcopy=False)):
            log.warning("search: no trial completed")
            return
        best = study.best_trials if len(self.objectives) > 1 else [study.best_trial]
        for trial in best:
            log.info("search: best trial %d: %s -> %s", trial.number, trial_values(trial),
                     dict(zip(self.objectives, trial.values, strict=True)))


def counted(trials: Sequence[Any]) -> list[Any]:
    """The finished trials that count toward the budget: every finished one but repeats of earlier values."""
    return [t for t in trials if t.state.is_finished() and DUPLICATE not in t.user_attrs]


def _quoted(value: Any) -> str:
    """`value` as a quoted string of Hydra's override grammar."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def pruned(run_dir: Path) -> bool:
    """Whether the run in `run_dir` was stopped by the search's pruner."""
    try:
        return read_record(run_dir / RESULTS).status == "pruned"
    except (OSError, MalformedRecordError):
        return False


def standard_error(values: Sequence[float]) -> float | None:
    """The standard error of the mean of `values` (None for fewer than two)."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def recorded_objectives(run_dir: Path, objectives: Sequence[str]) -> tuple[int, list[float]] | None:
    """The seed of a completed run and the objective values it recorded, or None (failed, unreadable, missing)."""
    try:
        record = read_record(run_dir / RESULTS)
    except (OSError, MalformedRecordError):
        return None
    values = [getattr(record, k, None) for k in objectives]
    if record.status != "completed" or any(not isinstance(v, int | float) for v in values):
        return None
    return record.seed, [float(v) for v in values]


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSearchSweeperConf,
                             provider="metaplastic_vit")
