"""Comparison reports across runs: `python -m metaplastic_vit.report <dir> [<dir> ...]`.

Reads every results.json under the given output or multirun directories, groups completed runs by
net and meta (mean and spread over seeds), and writes a table, plots, report.md and a self-contained
report.html into a `report/` folder. `--wandb ENTITY/PROJECT` also builds a W&B Report.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .errors import UserError
from .plots import plt

COLUMNS = [("avg_acc", "ACC (%)"), ("bwt", "BWT"), ("forgetting", "forgetting"), ("first_task", "task 1 final (%)"),
           ("train_time_s", "train time (s)")]


def load_runs(dirs: Sequence[str | Path]) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Completed runs under `dirs`, and (path, status) of the runs skipped because they did not complete."""
    runs, skipped = [], []
    for d in dirs:
        if not Path(d).exists():
            raise UserError(f"no such directory: {d}")
        for path in sorted(Path(d).rglob("results.json")):
            try:
                res = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                skipped.append((path, f"unreadable ({exc})"))
                continue
            if res.get("status") != "completed":
                skipped.append((path, str(res.get("status"))))
                continue
            res["path"] = str(path.parent)
            runs.append(res)
    if not runs:
        where = ", ".join(map(str, dirs))
        raise UserError(f"no completed results.json under {where}" + (f" ({len(skipped)} not completed)"
                                                                          if skipped else ""))
    return runs, skipped


def _meta_key(meta: Any) -> str:
    return json.dumps(meta) if isinstance(meta, list) else f"{meta:g}"


def _meta_order(key: str) -> tuple[int, float, str]:
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def group_runs(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Runs keyed by (net, meta), in net order then ascending meta."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["net"], _meta_key(r["meta"]))].append(r)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], _meta_order(kv[0][1]))))


def _value(run: dict[str, Any], key: str) -> float | None:
    if key == "first_task":
        return run["acc_matrix"][-1][0]
    return run.get(key)


def summarize(groups: dict[tuple[str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (net, meta): seeds and tasks, then mean and standard deviation of each column."""
    rows = []
    for (net, meta), runs in groups.items():
        row: dict[str, Any] = {"net": net, "meta": meta, "seeds": len(runs),
                               "tasks": " ".join(runs[0]["tasks"]), "runs": [r["path"] for r in runs]}
        for key, _ in COLUMNS:
            values = [v for r in runs if (v := _value(r, key)) is not None]
            row[key] = statistics.fmean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
        rows.append(row)
    return rows


def _cell(row: dict[str, Any], key: str) -> str:
    if row[key] is None:
        return "n/a"
    std = row[f"{key}_std"]
    return f"{row[key]:.2f}" + (f" ± {std:.2f}" if row["seeds"] > 1 else "")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    head = "| net | meta | seeds | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    for row in rows:
        lines.append(f"| {row['net']} | {row['meta']} | {row['seeds']} | "
                     + " | ".join(_cell(row, key) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def acc_vs_meta(rows: list[dict[str, Any]], path: Path) -> Path:
    """Final ACC against meta, one line per net (error bars: standard deviation over seeds)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, net in enumerate(dict.fromkeys(r["net"] for r in rows)):
        pts = [r for r in rows if r["net"] == net and _meta_order(r["meta"])[0] == 0]
        if not pts:
            continue
        xs = [float(r["meta"]) for r in pts]
        color = f"C{k}"
        ax.errorbar(xs, [r["avg_acc"] for r in pts], yerr=[r["avg_acc_std"] for r in pts], marker="o", capsize=3,
                    color=color, label=f"{net}: ACC (all tasks)")
        ax.errorbar(xs, [r["first_task"] for r in pts], yerr=[r["first_task_std"] for r in pts], marker="s",
                    capsize=3, linestyle=":", color=color, label=f"{net}: task 1")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("meta (symlog scale)")
    ax.set_ylabel("accuracy after the last task (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("final accuracy against the metaplastic coefficient")
    return plots._save(fig, path)


def task1_curves(groups: dict[tuple[str, str], list[dict[str, Any]]], path: Path) -> Path:
    """Accuracy on task 1 through the whole run, one line per meta, one panel per net (mean over seeds)."""
    nets = list(dict.fromkeys(net for net, _ in groups))
    cols = min(3, len(nets))
    rows = -(-len(nets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax in list(axes.flat)[len(nets):]:
        ax.axis("off")
    for ax, net in zip(axes.flat, nets, strict=False):
        records = None
        for (n, meta), runs in groups.items():
            if n != net:
                continue
            length = min(len(r["epochs"]) for r in runs)
            curve = np.mean([[e["test_acc"][0] for e in r["epochs"][:length]] for r in runs], axis=0)
            ax.plot(np.arange(1, length + 1), curve, label=f"meta {meta}", linewidth=1.5)
            records = runs[0]["epochs"][:length]
        plots._task_boundaries(ax, records)
        ax.set_xlabel("epoch (all tasks, in training order)")
        ax.set_ylabel("test accuracy on task 1 (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        ax.set_title(f"{net}: does task 1 survive the later tasks?", pad=16)
    fig.tight_layout()
    return plots._save(fig, path)


def matrix_grid(groups: dict[tuple[str, str], list[dict[str, Any]]], path: Path) -> Path:
    """Accuracy-matrix heatmaps (mean over seeds), one per (net, meta)."""
    items = list(groups.items())
    cols = min(4, len(items))
    rows = -(-len(items) // cols)
    n_tasks = len(items[0][1][0]["tasks"])
    size = 0.7 * n_tasks + 2
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for k, (ax, ((net, meta), runs)) in enumerate(zip(axes.flat, items, strict=False)):
        mean = np.mean([r["acc_matrix"] for r in runs], axis=0).tolist()
        im = plots.matrix_heatmap(ax, {"acc_matrix": mean, "tasks": runs[0]["tasks"]}, title=f"{net}, meta {meta}")
        if k % cols:
            ax.set_ylabel("")
            ax.set_yticklabels([])
        if k < len(items) - cols:
            ax.set_xlabel("")
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="test accuracy (%)", shrink=0.8)
    return plots._save(fig, path)


def _html(title: str, rows: list[dict[str, Any]], figures: list[Path], notes: list[str]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in ["net", "meta", "seeds", *(t for _, t in COLUMNS)])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in
                                    [r["net"], r["meta"], r["seeds"], *(_cell(r, k) for k, _ in COLUMNS)]) + "</tr>"
                   for r in rows)
    imgs = "".join(f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
                   f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{p.stem}</figcaption></figure>'
                   for p in figures)
    note = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{note}"
            f"<table><tr>{head}</tr>{body}</table>{imgs}</body></html>")


def build_report(dirs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Write the table, plots, report.md and report.html into `out`; returns what was written."""
    runs, skipped = load_runs(dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    rows = summarize(groups)
    figures = [acc_vs_meta(rows, out / "acc_vs_meta.png"), task1_curves(groups, out / "task1_accuracy.png"),
               matrix_grid(groups, out / "acc_matrices.png")]
    notes = [f"{len(runs)} completed runs from {', '.join(map(str, dirs))}."]
    if skipped:
        notes.append(f"Skipped {len(skipped)} runs that did not complete: "
                     + ", ".join(f"{p.parent.name} ({s})" for p, s in skipped))
    table = markdown_table(rows)
    md = ["# metaplastic-vit comparison report", "", *notes, "", table, "",
          "ACC: mean accuracy over all tasks after the last task; BWT: mean change of earlier tasks since they "
          "were learned; forgetting: mean drop from each earlier task's best; spreads are standard deviations "
          "over seeds.", "", *(f"![{p.stem}]({p.name})" for p in figures), ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(_html("metaplastic-vit comparison report", rows, figures, notes))
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    return {"rows": rows, "skipped": skipped, "figures": figures, "table": table, "out": out}


def wandb_report(entity: str, project: str, group: str | None = None, nets: Sequence[str] = ()) -> Any:
    """A W&B Report comparing metas: runs grouped by config.meta, filtered by net and sweep group.

    Built without network access; call `.save()` on it to publish (needs W&B credentials).
    """
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    filters = []
    if group:
        filters.append(expr.Metric("Group") == group)
    if nets:
        filters.append(expr.Config("net").isin(list(nets)))
    runset = wr.Runset(entity=entity, project=project, name="runs by meta", filters=filters,
                       groupby=["config.meta"])
    panels = [
        wr.LinePlot(title="mean accuracy over the tasks seen so far", x="Step", y=["test/mean_seen_acc"],
                    groupby="meta", groupby_aggfunc="mean", groupby_rangefunc="stddev"),
        wr.LinePlot(title="accuracy on task 1 (forgetting)", x="Step", y=["test/acc_task0"],
                    groupby="meta", groupby_aggfunc="mean", groupby_rangefunc="stddev"),
        wr.BarPlot(title="ACC after the last task", metrics=[wr.SummaryMetric("avg_acc")]),
        wr.RunComparer(diff_only="split"),
    ]
    return wr.Report(project=project, entity=entity, title="metaplastic-vit: metaplasticity sweep",
                     description=f"group {group}" if group else "all runs",
                     blocks=[wr.H1("Effect of the metaplastic coefficient"), wr.PanelGrid(runsets=[runset],
                                                                                          panels=panels)])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: report on the runs under the given directories."""
    parser = argparse.ArgumentParser(prog="metaplastic-vit-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="output or multirun directories holding results.json files")
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
            report = wandb_report(entity, project, args.group, sorted({r["net"] for r in done["rows"]}))
            print(f"W&B report: {report.save().url}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(done["table"])
    for path, status in done["skipped"]:
        print(f"skipped {path} (status: {status})")
    print(f"report written to {done['out']}/report.md and report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
