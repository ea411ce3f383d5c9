"""Comparison reports across runs: `python -m metaplastic_vit.report <dir> [<dir> ...]`.

Reads every results.json under the given directories (each run once, however it is reached), groups the
completed runs by every scientific config key that differs between them except the seed, and writes a
table (mean and 95% confidence interval over seeds), plots, report.md and a self-contained report.html into
a `report/` folder. Runs that did not complete or whose results are malformed are skipped and listed.
`--wandb ENTITY/PROJECT` also builds a W&B Report.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import shutil
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .errors import UserError
from .record import RESULTS, SEARCH, TRIALS, MalformedRecordError, RunRecord, read_record

METRICS: list[tuple[str, str]] = [
    ("avg_acc", "ACC"),
    ("avg_acc_task_aware", "ACC task-aware"),
    ("first_task", "task 1 final"),
    ("newest_task", "newest task final"),
    ("bwt", "BWT"),
    ("forgetting", "forgetting"),
    ("val_avg_acc", "validation ACC"),
]
ATTENUATED_BELOW = 0.5
NO_EFFECT_BELOW = 0.005  # a consolidated share below this shows as 0.00: no measurable effect


@dataclass
class Run:
    """One completed run: where it lives, its record and its scientific config (flat, without the seed)."""

    path: Path
    record: RunRecord
    science: dict[str, str]


@dataclass
class Group:
    """Runs that differ only in their seed: the values of the varying keys, and each metric's statistics."""

    key: tuple[str, ...]
    runs: list[Run]
    stats: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # mean, 95% half-width
    consolidated: list[float | None] = field(default_factory=list)  # per task end, mean over runs
    repeats: list[Run] = field(default_factory=list)  # runs of a seed already in `runs` (counted once)

    @property
    def seeds(self) -> list[int]:  # noqa: D102
        return sorted({r.record.seed for r in self.runs})


def _same_number(value: Any) -> Any:
    """`value` with whole floats as ints (recursively), so that meta 0 and meta 0.0 are one setting."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_same_number(v) for v in value]
    if isinstance(value, dict):
        return {k: _same_number(v) for k, v in value.items()}
    return value


def science_of(record: RunRecord) -> dict[str, str]:
    """The run's settings that change its numbers (as the run recorded them), without the seed, as text."""
    return {k: json.dumps(v) if isinstance(v, list | dict) else str(v)
            for k, v in _same_number(record.science).items() if k != "seed"}


def load_runs(dirs: Sequence[str | Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Completed runs under `dirs` (each results.json once), and (path, why) of every run skipped."""
    runs, skipped, seen = [], [], set()
    for d in dirs:
        if not Path(d).exists():
            raise UserError(f"no such directory: {d}")
        for path in sorted(Path(d).rglob(RESULTS)):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                record = read_record(path)
            except (OSError, MalformedRecordError) as exc:
                skipped.append((path, f"unreadable: {exc}"))
                continue
            if record.status != "completed" or not record.complete:
                skipped.append((path, record.status))
                continue
            runs.append(Run(path.parent, record, science_of(record)))
    if not runs:
        where = ", ".join(map(str, dirs))
        raise UserError(f"no completed results.json under {where}" + (f" ({len(skipped)} skipped)" if skipped else ""))
    return runs, skipped


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Scientific keys whose values differ between the runs that have them, net and meta first (a setting of
    one strategy only, such as EWC's strength, is a column only when it differs between that strategy's runs)."""
    keys = sorted({k for r in runs for k in r.science})
    varying = [k for k in keys if len({r.science[k] for r in runs if k in r.science}) > 1]
    first = [k for k in ("net.name", "meta", "strategy._target_", "optimizer._target_") if k in varying]
    return first + [k for k in varying if k not in first]


def _order(value: str | None) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (a 95% two-sided interval)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_interval(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and the half-width of its 95% confidence interval (Student t; None for a single value)."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def _metric(record: RunRecord, key: str) -> float | None:
    if key == "first_task":
        return record.acc_matrix[-1][0]
    if key == "newest_task":
        return record.acc_matrix[-1][-1]
    return getattr(record, key)


def _consolidated(record: RunRecord) -> list[float | None]:
    """The model-wide consolidated share (f_meta < 0.5) at each task's last epoch."""
    return [e.diagnostics.attenuated for e in record.epochs if e.diagnostics.histograms is not None]


def group_runs(runs: Sequence[Run]) -> tuple[list[str], list[Group]]:
    """The varying keys and the groups of runs equal in every other scientific key, in a stable order."""
    keys = varying_keys(runs)
    by_key: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        by_key.setdefault(tuple(run.science.get(k, "-") for k in keys), []).append(run)
    groups = []
    for key in sorted(by_key, key=lambda k: [_order(v) for v in k]):
        seeds: dict[int, Run] = {}
        repeats = [run for run in by_key[key] if seeds.setdefault(run.record.seed, run) is not run]
        members = list(seeds.values())  # a seed is one sample, however many directories ran it
        group = Group(key, members, repeats=repeats)
        for metric, _ in METRICS:
            group.stats[metric] = mean_interval([v for r in members if (v := _metric(r.record, metric)) is not None])
        shares = [_consolidated(r.record) for r in members]
        group.consolidated = [None if any(s[t] is None for s in shares) else statistics.fmean(s[t] for s in shares)
                              for t in range(min(len(s) for s in shares))]
        groups.append(group)
    return keys, groups


def _cell(stat: tuple[float | None, float | None]) -> str:
    mean, half = stat
    if mean is None:
        return "n/a"
    return f"{mean:.1f}" + (f" ± {half:.1f}" if half is not None else "")


def _share(values: list[float | None]) -> str:
    return " / ".join("–" if v is None else f"{v:.2f}" for v in values) or "–"


def _label(key: str) -> str:
    return {"net.name": "net", "strategy._target_": "strategy", "optimizer._target_": "optimizer"}.get(key, key)


def _value(key: str, value: str) -> str:
    if key in ("strategy._target_", "optimizer._target_"):
        return value.rsplit(".", 1)[-1]
    try:
        return f"{float(value):.4g}" if "." in value else value
    except ValueError:
        return value


OBJECTIVE_LABELS = {"val_old_acc": "earlier tasks, validation accuracy (%)",
                    "val_new_acc": "newest task, validation accuracy (%)",
                    "val_avg_acc": "all tasks, validation accuracy (%)"}


def _sizes(record: RunRecord) -> list[str]:
    """Parameters, binary weights, metaplastic weights and the binary layers' fan-in range of a run."""
    fan_in = sorted(set(record.fan_in.values()))
    span = "–" if not fan_in else str(fan_in[0]) if len(fan_in) == 1 else f"{fan_in[0]}–{fan_in[-1]}"
    return [f"{record.parameters:,}", f"{record.binary_weights:,}", f"{record.metaplastic_weights:,}", span]


SIZE_COLUMNS = ["parameters", "binary weights", "metaplastic weights", "fan-in"]


def table_rows(keys: list[str], groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table."""
    head = [*(_label(k) for k in keys), "tested", "runs", "seeds", *(title for _, title in METRICS),
            "consolidated at task ends", *SIZE_COLUMNS]
    rows = [[*(_value(k, v) for k, v in zip(keys, g.key, strict=True)), g.runs[0].record.tested, str(len(g.runs)),
             str(len(g.seeds)), *(_cell(g.stats[m]) for m, _ in METRICS), _share(g.consolidated),
             *_sizes(g.runs[0].record)] for g in groups]
    return head, rows


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def notes_for(runs: list[Run], keys: list[str], groups: list[Group]) -> list[str]:
    """Plain-words notes: what was tested how, single seeds, and every meta that consolidated nothing."""
    protocols = sorted({r.record.protocol for r in runs})
    notes = [f"{len(runs)} completed runs in {len(groups)} groups (runs equal in every scientific setting but the "
             f"seed). Values: mean ± half-width of the 95% confidence interval over seeds (Student t); a value "
             f"without an interval comes from a single run.",
             f"ACC, task 1 final, newest task final, BWT and forgetting are tested as each run's protocol says "
             f"({'; '.join(protocols)}); ACC task-aware tests every task with its identity (per-task state "
             "restored, outputs masked). Choose settings on the validation ACC, never on the test columns."]
    repeats = [r for g in groups for r in g.repeats]
    if repeats:
        notes.append("Counted once, as they repeat the settings and seed of another run: "
                     + ", ".join(str(r.path) for r in repeats) + ".")
    if any(r.record.transductive for r in runs):
        notes.append("Runs with transductive BatchNorm normalise each test batch, which holds a single task, with "
                     "its own statistics: their accuracies use the task identity even outside the task scenario "
                     "(the column 'tested' names them).")
    if any(len(g.seeds) < 3 for g in groups):
        notes.append("Groups with fewer than 3 seeds: " + ", ".join(
            "/".join(_value(k, v) for k, v in zip(keys, g.key, strict=True)) or "all"
            for g in groups if len(g.seeds) < 3) + ".")
    idle = []
    for g in groups:
        meta = g.runs[0].record.meta
        shares = [s for s in g.consolidated if s is not None]
        if meta and shares and max(shares) < NO_EFFECT_BELOW:
            others = _series_key(keys, g)
            idle.append(f"meta {meta}" + (f" ({others})" if others else ""))
    if idle:
        notes.append(f"No measurable effect on this budget: {_join(idle)} consolidated under "
                     f"{NO_EFFECT_BELOW:.1%} of the metaplastic hidden weights (f < {ATTENUATED_BELOW}) at every "
                     "task end (0.00 in the table).")
    return notes


def _join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _describe(settings: Iterable[tuple[str, str]]) -> str:
    """(key, value) settings as 'label value, label value' for titles, legends and notes."""
    return ", ".join(f"{_label(k)} {_value(k, v)}" for k, v in settings)


def _series_key(keys: list[str], group: Group) -> str:
    return _describe((k, v) for k, v in zip(keys, group.key, strict=True) if k != "meta")


def _accuracy_axes(ax: Any, xlabel: str, ylabel: str, title: str, legend: dict[str, Any] | None = None,
                   title_pad: float | None = None) -> None:
    """Label an accuracy plot: axes titles, 0-100%, a light grid, the legend (`legend`: its options; None: none)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    if legend is not None:
        ax.legend(**{"fontsize": 7, **legend})
    ax.set_title(title, fontsize=10, pad=title_pad)


def acc_vs_meta(keys: list[str], groups: list[Group], path: Path) -> Path | None:
    """Final ACC and task-1 accuracy against meta, one colour per other setting (95% intervals)."""
    if "meta" not in keys:
        return None
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[Group]] = {}
    for g in groups:
        if _order(g.key[keys.index("meta")])[0] == 0:
            series.setdefault(_series_key(keys, g), []).append(g)
    for k, (name, members) in enumerate(series.items()):
        xs = [float(g.key[keys.index("meta")]) for g in members]
        for metric, style, what in (("avg_acc", "-o", "ACC"), ("first_task", ":s", "task 1")):
            ys = [g.stats[metric][0] for g in members]
            err = [g.stats[metric][1] or 0.0 for g in members]
            ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, color=f"C{k}", label=f"{name or 'all'}: {what}")
    ax.set_xscale("symlog", linthresh=1.0)
    _accuracy_axes(ax, "meta (symlog scale)", "test accuracy after the last task (%)",
                   "final accuracy against the metaplastic coefficient (95% intervals)", legend={})
    return plots.save(fig, path)


def distinct_labels(keys: list[str], groups: list[Group]) -> list[str]:
    """A legend label per group naming only the settings that differ among `groups` (the lines of one figure),
    so that settings shared by every line, or varying only in the report's other groups, do not crowd it."""
    shown = [i for i in range(len(keys)) if len({g.key[i] for g in groups}) > 1]
    return [_describe((keys[i], g.key[i]) for i in shown) for g in groups]


def stream_curves(keys: list[str], groups: list[Group], path: Path) -> Path | None:
    """Streams (stream:<dataset>:<N>): test accuracy on the whole test set after every part (mean over seeds, 95%
    intervals), one line per setting, beside the same nets trained on the whole dataset at once (their final
    accuracy, dashed): the paper's stream-learning figure."""
    streams = [g for g in groups if g.runs[0].record.stream]
    if not streams:
        return None
    wholes = [g for g in groups if not g.runs[0].record.stream and len(g.runs[0].record.tasks) == 1]
    labels = distinct_labels(keys, streams + wholes)
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, g in enumerate(streams):
        curves = np.array([[row[0] for row in r.record.acc_matrix] for r in g.runs])
        x = np.arange(1, curves.shape[1] + 1)
        mean = curves.mean(0)
        ax.plot(x, mean, "-", color=f"C{k}", label=f"stream: {labels[k]}" if labels[k] else "stream")
        if len(g.runs) > 1:
            half = [mean_interval(list(col))[1] for col in curves.T]
            ax.fill_between(x, mean - half, mean + half, color=f"C{k}", alpha=0.15)
    for k, g in enumerate(wholes, start=len(streams)):
        ax.axhline(g.stats["avg_acc"][0], color=f"C{k}", linestyle="--", label=f"whole dataset: {labels[k]}")
    _accuracy_axes(ax, "parts of the training set learned", "test accuracy on the whole test set (%)",
                   "stream learning: accuracy after every part (mean over seeds, 95% intervals)",
                   legend={"loc": "upper center", "bbox_to_anchor": (0.5, -0.13)})
    return plots.save(fig, path)


def task1_curves(keys: list[str], groups: list[Group], path: Path) -> Path:
    """Test accuracy on task 1 through the whole run (mean over seeds), one panel per setting other than meta."""
    plt = plots.pyplot()
    panels: dict[str, list[Group]] = {}
    for g in groups:
        panels.setdefault(_series_key(keys, g), []).append(g)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for ax, (name, members) in zip(axes.flat, panels.items(), strict=False):
        epochs = None
        for g in members:
            length = min(len(r.record.epochs) for r in g.runs)
            curve = np.mean([[e.test_acc[0] for e in r.record.epochs[:length]] for r in g.runs], axis=0)
            label = f"meta {g.key[keys.index('meta')]}" if "meta" in keys else "mean over seeds"
            ax.plot(np.arange(1, length + 1), curve, label=label, linewidth=1.5)
            epochs = g.runs[0].record.epochs[:length]
        plots.task_boundaries(ax, epochs)
        _accuracy_axes(ax, "epoch (all tasks, in training order)", "test accuracy on task 1 (%)",
                       f"{name or 'all runs'}: does task 1 survive?", legend={"fontsize": 8, "loc": "lower left"},
                       title_pad=16)  # above the task labels
    fig.tight_layout()
    return plots.save(fig, path)


def size_series(groups: list[Group]) -> dict[tuple[str, bool], list[Group]]:
    """Groups as lines over size: (net, with its depth where the net comes at several; meta 0?) -> its groups in
    order of binary weights."""
    depths: dict[str, set[str]] = {}
    for g in groups:
        depths.setdefault(g.runs[0].record.net, set()).add(g.runs[0].science.get("arch.depth", ""))
    series: dict[tuple[str, bool], list[Group]] = {}
    for g in groups:
        record = g.runs[0].record
        name = record.net + (f", depth {g.runs[0].science['arch.depth']}" if len(depths[record.net]) > 1 else "")
        metas = record.meta if isinstance(record.meta, list) else [record.meta]
        series.setdefault((name, not any(metas)), []).append(g)
    return {k: sorted(v, key=lambda g: g.runs[0].record.binary_weights) for k, v in series.items()}


def retention_vs_size(groups: list[Group], path: Path) -> Path | None:
    """Task 1 final and newest task final against the number of binary weights (95% intervals), one line per net
    and meta arm (0, or its own meta > 0): drawn when the groups span at least three sizes (a capacity study)."""
    if len({g.runs[0].record.binary_weights for g in groups}) < 3:
        return None
    series = size_series(groups)
    colours = {name: f"C{k}" for k, name in enumerate(dict.fromkeys(name for name, _ in series))}
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (metric, what) in zip(axes, (("first_task", "task 1"), ("newest_task", "newest task")), strict=True):
        for (name, off), members in series.items():
            ax.errorbar([g.runs[0].record.binary_weights for g in members], [g.stats[metric][0] for g in members],
                        yerr=[g.stats[metric][1] or 0.0 for g in members], fmt=":s" if off else "-o", capsize=3,
                        color=colours[name], label=f"{name}, {'meta 0' if off else 'its own meta'}")
        ax.set_xscale("log")
        first = metric == "first_task"
        _accuracy_axes(ax, "binary weights", "test accuracy (%)" if first else "",
                       f"{what} after the last task (mean, 95% intervals)", legend=None if first else {})
    fig.tight_layout()
    return plots.save(fig, path)


def matrix_grid(keys: list[str], groups: list[Group], path: Path) -> Path:
    """Accuracy matrices (mean over seeds, each run's own protocol), one per group."""
    plt = plots.pyplot()
    cols = min(4, len(groups))
    rows = -(-len(groups) // cols)
    size = 0.7 * max(len(g.runs[0].record.tasks) for g in groups) + 2.2
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax, g in zip(axes.flat, groups, strict=False):
        record = g.runs[0].record
        mean = np.mean([r.record.acc_matrix for r in g.runs], axis=0).tolist()
        title = _describe(zip(keys, g.key, strict=True)) or "all runs"
        im = plots.matrix_heatmap(ax, mean, record.tasks, title=f"{title}\n(tested: {record.tested})",
                                  columns=record.columns or record.tasks)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="test accuracy (%)", shrink=0.8)
    return plots.save(fig, path)


# ------------------------------------------------------------------ searches (hydra/sweeper=optuna)


@dataclass
class Search:
    """A search directory's study: objectives, directions and finished trials (with their test numbers)."""

    path: Path
    objectives: list[str]
    directions: list[str]
    seeds: list[int | None]
    trials: list[dict[str, Any]]  # COMPLETE trials: number, params, values, stderr, run_dirs, test numbers (means)
    pruned: list[dict[str, Any]] = field(default_factory=list)  # trials the search's pruner stopped early

    def front(self) -> list[dict[str, Any]]:
        """The trials no other trial beats in every objective (in the objectives' directions)."""
        signs = [1 if d == "maximize" else -1 for d in self.directions]

        def score(t: dict[str, Any]) -> list[float]:
            return [s * t["values"][o] for s, o in zip(signs, self.objectives, strict=True)]

        def dominated(a: dict[str, Any]) -> bool:
            return any(all(x >= y for x, y in zip(score(b), score(a), strict=True)) and score(b) != score(a)
                       for b in self.trials)

        return sorted((t for t in self.trials if not dominated(t)), key=lambda t: score(t)[0], reverse=True)

    def best(self) -> dict[str, Any]:
        """The best trial on the single objective (the lowest trial number among equals)."""
        if len(self.objectives) != 1:
            raise UserError(f"{self.path}: a search on {len(self.objectives)} objectives has a front, not one best "
                            "trial")
        if not self.trials:
            raise UserError(f"{self.path}: no trial of the search completed")
        sign = 1 if self.directions[0] == "maximize" else -1
        return min(self.trials, key=lambda t: (-sign * t["values"][self.objectives[0]], t["number"]))


TEST_NUMBERS = ("avg_acc", "avg_acc_task_aware", "first_task", "newest_task")


def _test_numbers(run_dirs: Sequence[str]) -> dict[str, float | None]:
    """The test numbers of a trial's runs, averaged over them (None where a run cannot be read)."""
    try:
        records = [read_record(Path(d) / RESULTS) for d in run_dirs]
        values = {k: [_metric(r, k) for r in records] for k in TEST_NUMBERS}
    except (OSError, MalformedRecordError, TypeError, IndexError):
        return dict.fromkeys(TEST_NUMBERS)
    return {k: statistics.fmean(v) if v and None not in v else None for k, v in values.items()}


def load_search(path: Path) -> Search | None:
    """The search in `path` (search.json and trials.json written by the sweeper), or None."""
    try:
        spec = json.loads((path / SEARCH).read_text())
        rows = json.loads((path / TRIALS).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    trials = [{**t, **_test_numbers(t.get("run_dirs", []))} for t in rows
              if t.get("state") == "COMPLETE" and t.get("values")]
    return Search(path, spec["objectives"], spec["directions"], spec.get("seeds", [None]), trials,
                  [t for t in rows if t.get("state") == "PRUNED"])


def _params(trial: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in trial["params"].items())


def search_section(search: Search, out: Path) -> tuple[list[str], list[Path]]:
    """Markdown lines (best trials or the Pareto front, with their test numbers kept apart) and figures."""
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}"

    def value(t: dict[str, Any], o: str) -> str:
        se = (t.get("stderr") or {}).get(o)
        return fmt(t["values"][o]) + (f" ± {se:.1f}" if se is not None else "")

    multi = len(search.objectives) > 1
    chosen = search.front() if multi else sorted(
        search.trials, key=lambda t: t["values"][search.objectives[0]],
        reverse=search.directions[0] == "maximize")[:5]
    head = ["trial", "values", *search.objectives, "test: ACC", "test: task 1 final", "test: newest task final",
            "test: ACC task-aware"]
    rows = [[str(t["number"]), _params(t), *(value(t, o) for o in search.objectives), fmt(t["avg_acc"]),
             fmt(t["first_task"]), fmt(t["newest_task"]), fmt(t["avg_acc_task_aware"])] for t in chosen]
    what = "Pareto front" if multi else "best trials"
    seeds = [s for s in search.seeds if s is not None]
    over = (f"each trial's mean over its runs at seeds {', '.join(map(str, seeds))} ± the standard error of that "
            "mean" if len(seeds) > 1 else f"one run per trial (seed {seeds[0] if seeds else 'of the config'})")
    lines = [f"## Search {search.path.name}: {what}", "",
             f"{len(search.trials)} finished trials"
             + (f" and {len(search.pruned)} pruned (stopped early by the search's pruner: "
                f"{', '.join(_params(t) for t in search.pruned)})" if search.pruned else "")
             + f", chosen on {', '.join(search.objectives)} (validation: {over}); "
             "the test columns (means over the same runs) are reported for the chosen trials only, never used to "
             "choose them.", "", markdown_table(head, rows), ""]
    figures = []
    if multi and len(search.objectives) == 2:
        figures.append(pareto_plot(search, out / f"pareto_{len(list(out.glob('pareto_*.png')))}.png"))
        lines += [f"![{figures[-1].stem}]({figures[-1].name})", ""]
    return lines, figures


def pareto_plot(search: Search, path: Path) -> Path:
    """Every trial as a point (first objective against the second), labelled with its values; the front drawn."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    x_key, y_key = search.objectives
    xs = [t["values"][x_key] for t in search.trials]
    ys = [t["values"][y_key] for t in search.trials]
    ax.scatter(xs, ys, color="C0", alpha=0.6, label="trials")
    for t, x, y in zip(search.trials, xs, ys, strict=True):
        ax.annotate(_params(t), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = sorted(search.front(), key=lambda t: t["values"][x_key])
    ax.plot([t["values"][x_key] for t in front], [t["values"][y_key] for t in front], "-o", color="C3",
            label="Pareto front")
    ax.set_xlabel(OBJECTIVE_LABELS.get(x_key, x_key))
    ax.set_ylabel(OBJECTIVE_LABELS.get(y_key, y_key))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"stability against plasticity on validation data\n{search.path.name}", fontsize=9)
    return plots.save(fig, path)


def _html(title: str, head: list[str], rows: list[list[str]], figures: list[Path], notes: list[str],
          extra: str = "") -> str:
    th = "".join(f"<th>{html.escape(t)}</th>" for t in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    imgs = "".join(f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
                   f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{p.stem}</figcaption></figure>'
                   for p in figures)
    note = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{note}"
            f"<table><tr>{th}</tr>{body}</table>{extra}{imgs}</body></html>")


def build_report(dirs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Write the table, plots, report.md, report.html and summary.json into `out`; returns what was written."""
    runs, skipped = load_runs(dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys, groups = group_runs(runs)
    head, rows = table_rows(keys, groups)
    figures = [p for p in (acc_vs_meta(keys, groups, out / "acc_vs_meta.png"),
                           stream_curves(keys, groups, out / "stream_accuracy.png"),
                           retention_vs_size(groups, out / "retention_vs_size.png"),
                           task1_curves(keys, groups, out / "task1_accuracy.png"),
                           matrix_grid(keys, groups, out / "acc_matrices.png")) if p is not None]
    notes = notes_for(runs, keys, groups)
    if skipped:
        notes.append(f"Skipped {len(skipped)} runs: " + ", ".join(f"{p.parent.name} ({s})" for p, s in skipped))
    table = markdown_table(head, rows)
    searches = [found for d in dirs for p in sorted({q.parent for q in Path(d).rglob(SEARCH)})
                if (found := load_search(p)) is not None]
    search_lines: list[str] = []
    for search in searches:
        keep = out / "searches" / search.path.name  # the finished search's summary, for exporting its values
        keep.mkdir(parents=True, exist_ok=True)
        for name in (SEARCH, TRIALS):
            shutil.copyfile(search.path / name, keep / name)
        lines, more = search_section(search, out)
        search_lines += lines
        figures += more
    title = "metaplastic-vit comparison report"
    md = [f"# {title}", "", f"Runs from {', '.join(map(str, dirs))}.", "", *notes, "", table, "",
          "Forgetting: mean over the earlier tasks of the best accuracy the task had before the last task "
          "(from the row where it was learned on) minus its final accuracy. BWT: mean final minus just-learned "
          "accuracy of the earlier tasks. Consolidated: share of metaplastic hidden weights with "
          f"f_meta < {ATTENUATED_BELOW} at each task's end.", "", *search_lines,
          *(f"![{p.stem}]({p.name})" for p in figures if not p.stem.startswith("pareto")), ""]
    (out / "report.md").write_text("\n".join(md))
    extra = "".join(f"<pre>{html.escape(line)}</pre>" if line.startswith("|") else f"<p>{html.escape(line)}</p>"
                    for line in search_lines if line and not line.startswith("!["))
    (out / "report.html").write_text(_html(title, head, rows, figures, notes, extra))
    summary = [{"key": dict(zip(keys, g.key, strict=True)), "runs": [str(r.path) for r in g.runs], "seeds": g.seeds,
                **{m: {"mean": g.stats[m][0], "ci95": g.stats[m][1]} for m, _ in METRICS},
                "consolidated": g.consolidated, "tested": g.runs[0].record.tested,
                **{k: getattr(g.runs[0].record, k) for k in ("parameters", "binary_weights", "metaplastic_weights",
                                                             "fan_in")}} for g in groups]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"keys": keys, "groups": groups, "skipped": skipped, "figures": figures, "table": table, "out": out,
            "searches": searches}


def wandb_report(entity: str, project: str, group: str | None = None, nets: Sequence[str] = ()) -> Any:
    """A W&B Report comparing metas: runs grouped by config.meta, filtered by net and sweep group.

    Built without network access; call `.save()` on it to publish (needs W&B credentials).
    """
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    from .sinks.wandb_sink import MEAN_SEEN, task_metric

    filters = []
    if group:
        filters.append(expr.Metric("Group") == group)
    if nets:
        filters.append(expr.Config("net").isin(list(nets)))
    runset = wr.Runset(entity=entity, project=project, name="runs by meta", filters=filters,
                       groupby=["config.meta"])
    panels = [
        wr.LinePlot(title="mean test accuracy over the tasks seen so far (run's scenario)", x="Step",
                    y=[MEAN_SEEN], groupby="meta", groupby_aggfunc="mean", groupby_rangefunc="stddev"),
        wr.LinePlot(title="test accuracy on task 1 (run's scenario)", x="Step", y=[task_metric("test", 0)],
                    groupby="meta", groupby_aggfunc="mean", groupby_rangefunc="stddev"),
        wr.LinePlot(title="validation accuracy on task 1 (choose meta on this)", x="Step", y=[task_metric("val", 0)],
                    groupby="meta", groupby_aggfunc="mean", groupby_rangefunc="stddev"),
        wr.BarPlot(title="ACC after the last task", metrics=[wr.SummaryMetric("avg_acc"),
                                                             wr.SummaryMetric("avg_acc_task_aware")]),
        wr.RunComparer(diff_only="split"),
    ]
    return wr.Report(project=project, entity=entity, title="metaplastic-vit: metaplasticity sweep",
                     description=f"group {group}" if group else "all runs",
                     blocks=[wr.H1("Effect of the metaplastic coefficient"), wr.PanelGrid(runsets=[runset],
                                                                                          panels=panels)])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: report on the runs under the given directories."""
    parser = argparse.ArgumentParser(prog="metaplastic-vit-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="output, multirun or search directories holding results.json files")
    parser.add_argument("--out", help="where to write the report (default: <first dir>/report)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also publish a W&B Report there")
    parser.add_argument("--group", help="with --wandb: only runs of this W&B group (a sweep)")
    args = parser.parse_args(argv)
    try:
        done = build_report(args.dirs, args.out or Path(args.dirs[0]) / "report")
        if args.wandb:
            if args.wandb.count("/") != 1:
                raise UserError(f"--wandb takes ENTITY/PROJECT, got {args.wandb!r}")
            entity, project = args.wandb.split("/")
            nets = sorted({r.record.net for g in done["groups"] for r in g.runs})
            print(f"W&B report: {wandb_report(entity, project, args.group, nets).save().url}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(done["table"])
    for path, status in done["skipped"]:
        print(f"skipped {path} ({status})")
    print(f"report written to {done['out']}/report.md and report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
