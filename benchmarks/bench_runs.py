"""Real runs of `run.py`: end-to-end wall time, start-up, evaluation share, peak RSS; multirun launchers.

Each run is a fresh process with its outputs in a temp dir (METAPLASTIC_OUTPUT). The embedded default runs
as configured, alternately with this revision and with the baseline revision (a temporary git worktree of
the commit before this round's work), so the two are measured side by side on the same machine. The
evaluation share is the part of train + test time that results.json reports as testing: every task after
every epoch, here on three matrices (the run's scenario, task-aware, validation) where the baseline tested
one; where a test runs on a second core beside the next epoch's training, only the time the loop waits
for it (and copies the model) counts. Start-up is from the process's start to its first epoch
(results.json `startup_s`); the library floor beside it is a process that only imports torch, timm and
Hydra (what any run must load): its start-up is the time to the end of those imports, its wall includes the
interpreter's teardown of them, which `run.py` skips. The meta multirun compares Hydra's basic launcher with
`hydra/launcher=local` (jobs shortened to 2 epochs per task).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from common import PYTHON, ROOT, check, report, run_child, table, worktree

BASELINE = "b3a5515"
EPOCHS_MULTIRUN = 2
METAS = "0,1.35,15,50"
SAME_RUN = ("net=bvit_full_ln", "meta=50")  # the baseline's default experiment, run by both revisions
IMPORTS = "import torch, timm, hydra, omegaconf"  # the libraries every run loads before its first epoch
PRINT_AGE = "from metaplastic_vit.runtime import process_age; print(process_age())"


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> tuple[float, float, list[dict]]:
    """Run `python run.py ARGS` in a fresh output dir: wall seconds, peak RSS MiB, every results.json."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as out:
        code, wall, rss, log = run_child([PYTHON, str(cwd / "run.py"), *args],
                                         env={"METAPLASTIC_OUTPUT": out, **(env or {})})
        check(code, log, f"run.py {' '.join(args)}")
        results = [json.loads(p.read_text()) for p in sorted(Path(out).glob("**/results.json"))]
    return wall, rss, results


def default_rows(rev: str, rounds: int) -> list[list]:
    """The baseline's default experiment with this revision and `rev` alternately, and this revision's own default,
    `rounds` times each; medians per row."""
    with worktree(rev) as tree:
        revisions = {"this revision": ({}, ROOT)}
        if tree is not None:
            revisions[f"baseline {rev}"] = ({"PYTHONPATH": str(tree)}, tree)
        measured: dict[str, list[tuple]] = {name: [] for name in revisions}
        for _ in range(rounds):
            for name, (env, cwd) in revisions.items():
                wall, rss, (res,) = run(list(SAME_RUN), env, cwd)
                measured[name].append((wall, res.get("startup_s"), res["train_time_s"], res["eval_time_s"], rss))
            wall, rss, (res,) = run([])
            measured.setdefault("this revision, its default net", []).append(
                (wall, res["startup_s"], res["train_time_s"], res["eval_time_s"], rss))
            code, wall, rss, log = run_child([PYTHON, "-c", f"{IMPORTS}; {PRINT_AGE}"])
            check(code, log, IMPORTS)
            age = log.split()[-1]  # None where the process's start time cannot be read
            measured.setdefault(f"library floor: python -c '{IMPORTS}'", []).append(
                (wall, None if age == "None" else float(age), 0.0, 0.0, rss))
    rows = []
    for name, runs in measured.items():
        runs.sort()
        wall, startup, train, test, rss = runs[len(runs) // 2]
        share = 100 * test / (train + test) if train + test else ""
        rows.append([name, wall, "" if startup is None else startup, train, test, share, wall - train - test, rss])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2, help="runs per revision (the median is reported)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = default_rows(BASELINE, args.rounds)
    cores = len(os.sched_getaffinity(0))
    multi = []
    for launcher, extra in (("basic (sequential)", []), (f"local ({cores} at once, 1 thread each)",
                                                         ["hydra/launcher=local"])):
        wall, rss, results = run(["-m", f"meta={METAS}", f"epochs_per_task={EPOCHS_MULTIRUN}",
                                  "logger.console.progress=none", *extra])
        if len(results) != len(METAS.split(",")):
            raise SystemExit(f"multirun with the {launcher} launcher wrote {len(results)} results.json")
        multi.append([launcher, len(results), wall, multi[0][2] / wall if multi else 1.0, rss])
    report("Runs: end to end, start-up, evaluation share, memory", [
        f"`python run.py {' '.join(SAME_RUN)}` (the baseline's default experiment: three permuted digits tasks x 20 "
        f"epochs), {args.rounds} runs per revision alternating, the median by wall time, and this revision's own "
        "default (`python run.py`); eval % = testing as a share of train + test "
        "time (this revision: three matrices; the baseline: one); other s = wall - train - test (start-up, "
        f"checkpoints, results files, plots); load before: {load:.1f}. Goals: wall <= 25 s and start-up <= 3 s "
        "(set on a faster machine: compare the ratio to the baseline), eval <= 10%.",
        table(["revision", "wall s", "start-up s", "train s", "test s", "eval %", "other s", "peak RSS MiB"], rows),
        f"`python run.py -m meta={METAS} epochs_per_task={EPOCHS_MULTIRUN}` (4 jobs); peak RSS: the largest "
        "process.",
        table(["launcher", "jobs", "wall s", "speed-up", "peak RSS MiB"], multi)])


if __name__ == "__main__":
    main()
