"""`hydra/sweeper=optuna`: a search over any config keys with Optuna's ask-and-tell API, on validation metrics.

Each trial is one job (through whatever launcher is configured); its objectives are read from the job's
results.json (`val_avg_acc`, `val_old_acc`, `val_new_acc`, ...: validation numbers, never test ones).
The study lives in the sweep directory as an Optuna journal file (`study.journal`), so the same search
command again continues it up to `n_trials` finished trials: trials an interrupted search left running are
run again with the same values, in the same job directories, where they resume from their checkpoints.

Search spaces use Hydra's override grammar: `choice(a, b)`, `range(1, 8)`, `interval(0.1, 10)`,
`tag(log, interval(1, 300))` for a log scale, and the extra tag `zero` for a separate arm at 0, e.g.
`meta: tag(log, zero, interval(1, 300))`: one trial at meta 0 (the first of the study), the others sampled
log-uniformly between 1 and 300.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

JOURNAL = "study.journal"
SEARCH = "search.json"  # objectives, directions, budget and space
TRIALS = "trials.json"  # every trial: values, state, objectives and job directory (what reports read)
ZERO_ARM = "zero"


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


def objectives_of(result: JobReturn, objectives: Sequence[str]) -> list[float] | None:
    """The objective values a finished job recorded, or None when it failed or recorded none."""
    if result.status != JobStatus.COMPLETED:
        return None
    path = Path(result.hydra_cfg.hydra.runtime.output_dir) / "results.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    values = [record.get(k) for k in objectives]
    if record.get("status") != "completed" or any(not isinstance(v, int | float) for v in values):
        return None
    return [float(v) for v in values]


def _quiet(sampler: Any, **kwargs: Any) -> Any:
    """An Optuna sampler built without its "experimental" warning (QMCSampler's interface is stable enough here)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return sampler(**kwargs)


class OptunaSearchSweeper(Sweeper):
    """A resumable Optuna search over config keys; objectives are validation metrics from results.json."""

    def __init__(self, objectives: Sequence[str] = ("val_avg_acc",), directions: Sequence[str] | None = None,
                 n_trials: int = 20, n_jobs: int = 1, sampler: str = "tpe", seed: int = 0, startup_trials: int = 4,
                 study_name: str | None = None, params: dict[str, Any] | None = None) -> None:
        self.objectives = list(objectives)
        self.directions = list(directions or ["maximize"] * len(self.objectives))
        if len(self.directions) != len(self.objectives):
            raise ValueError(f"{len(self.objectives)} objectives but {len(self.directions)} directions")
        self.n_trials = n_trials
        self.n_jobs = max(1, n_jobs)
        self.sampler = sampler
        self.seed = seed
        self.startup_trials = startup_trials
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

    def _study(self, sweep_dir: Path) -> Any:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=self.seed, multivariate=True,
                                                              n_startup_trials=self.startup_trials),
                    "random": lambda: optuna.samplers.RandomSampler(seed=self.seed),
                    "qmc": lambda: _quiet(optuna.samplers.QMCSampler, seed=self.seed, scramble=True),
                    "nsgaii": lambda: optuna.samplers.NSGAIISampler(seed=self.seed)}
        if self.sampler not in samplers:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(samplers)}")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL)))
        return optuna.create_study(study_name=self.study_name or sweep_dir.name, storage=storage,
                                   sampler=samplers[self.sampler](), directions=self.directions, load_if_exists=True)

    def sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        """Run trials in batches of n_jobs until n_trials have finished (counting earlier runs of the search)."""
        from optuna.trial import TrialState

        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        space, fixed = parse_space(self.params, arguments)
        study = self._study(sweep_dir)
        (sweep_dir / SEARCH).write_text(json.dumps({
            "objectives": self.objectives, "directions": self.directions, "n_trials": self.n_trials,
            "space": {k: v.input_line for k, v in space.items()}, "fixed": fixed}, indent=2))
        stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
        if stale:
            log.info("search: %d trials of an earlier, interrupted run are run again (they resume)", len(stale))
        returns: list[list[JobReturn]] = []
        run_dirs = self._run_dirs(sweep_dir)
        while True:
            finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
            room = self.n_trials - finished
            if room <= 0:
                break
            batch = stale[:min(self.n_jobs, room)]
            stale = stale[len(batch):]
            while len(batch) < min(self.n_jobs, room):
                tried = {a for t in study.get_trials(deepcopy=False) for a in t.user_attrs}
                trial = study.ask()
                for name, override in space.items():
                    suggest(trial, name, override, f"{ZERO_ARM}:{name}" in tried)
                batch.append(trial)
            quoted = str(sweep_dir).replace("\\", "\\\\").replace("'", "\\'")
            overrides = [[*fixed, f"hydra.sweep.dir='{quoted}'",  # the jobs' sweep directory, resolved once
                          *(f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in trial_values(t).items())]
                         for t in batch]
            self.validate_batch_is_legal(overrides)
            results = self.launcher.launch(overrides, initial_job_idx=min(t.number for t in batch))
            for trial, result in zip(batch, results, strict=True):
                values = objectives_of(result, self.objectives)
                run_dirs[trial.number] = str(result.hydra_cfg.hydra.runtime.output_dir)
                if values is None:
                    study.tell(trial.number, state=TrialState.FAIL)
                    log.warning("search: trial %d failed (see %s)", trial.number,
                                result.hydra_cfg.hydra.runtime.output_dir)
                else:
                    study.tell(trial.number, values)
            returns.append(list(results))
            self._write_trials(sweep_dir, study, run_dirs)
        self._write_trials(sweep_dir, study, run_dirs)
        self._summarize(study)
        return returns

    @staticmethod
    def _run_dirs(sweep_dir: Path) -> dict[int, str]:
        try:
            return {t["number"]: t["run_dir"] for t in json.loads((sweep_dir / TRIALS).read_text()) if t["run_dir"]}
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            return {}

    def _write_trials(self, sweep_dir: Path, study: Any, run_dirs: dict[int, str]) -> None:
        """trials.json: what a report needs, without reading the study."""
        rows = [{"number": t.number, "state": t.state.name, "params": trial_values(t),
                 "values": dict(zip(self.objectives, t.values, strict=True)) if t.values else None,
                 "run_dir": run_dirs.get(t.number)} for t in study.get_trials(deepcopy=False)]
        tmp = sweep_dir / f".{TRIALS}.tmp"
        tmp.write_text(json.dumps(rows, indent=2))
        tmp.replace(sweep_dir / TRIALS)

    def _summarize(self, study: Any) -> None:
        best = study.best_trials if len(self.objectives) > 1 else [study.best_trial]
        for trial in best:
            log.info("search: best trial %d: %s -> %s", trial.number, trial_values(trial),
                     dict(zip(self.objectives, trial.values, strict=True)))
