"""Real runs of `run.py`: evaluation overhead, end-to-end wall time, peak RSS, and multirun launchers.

Each run is a fresh process with its outputs in a temp dir (METAPLASTIC_OUTPUT). Evaluation overhead is
the share of the run's train + test time that `results.json` reports as testing (every task after every
epoch). The embedded default runs as configured (one CPU thread for a model this small) and with 2
threads.
A single run taking longer than CAP_S is stopped and its wall time extrapolated from the epochs it
finished (results.json is written after every epoch), so `make bench` stays short on a loaded machine.
The meta multirun compares Hydra's basic launcher (jobs one after another in one process, all cores each)
with `hydra/launcher=local` (submitit, cores // cpus_per_task jobs at once, 1 thread each); its jobs are
shortened to EPOCHS_MULTIRUN epochs per task.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path

from common import PYTHON, check, report, run_child, table

CAP_S = 150
EPOCHS_SPLIT = 5  # the eval share does not depend on the number of epochs
EPOCHS_MULTIRUN = 2
METAS = "0,1.35,15,50"


def run(args: list[str], cap: float | None = None) -> tuple[float, bool, float, list[dict]]:
    """Run `python run.py ARGS` in a fresh output dir: wall seconds, whether it was stopped at `cap`, peak
    RSS MiB and the results.json of every run in it."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as out:
        code, wall, rss, log = run_child([PYTHON, "run.py", *args], env={"METAPLASTIC_OUTPUT": out},
                                         timeout=cap or 900)
        capped = code == -signal.SIGKILL
        if not capped:
            check(code, log, f"run.py {' '.join(args)}")
        results = [json.loads(p.read_text()) for p in sorted(Path(out).glob("**/results.json"))]
    return wall, capped, rss, results


def eval_row(name: str, args: list[str]) -> list:
    load = os.getloadavg()[0]
    wall, capped, rss, (results,) = run(args, CAP_S)
    train, test = results["train_time_s"], results["eval_time_s"]
    done, total = len(results["epochs"]), results["config"]["epochs_per_task"] * len(results["tasks"])
    shown = f"~{wall * total / done:.0f} (stopped at {wall:.0f} s, {done}/{total} epochs)" if capped else wall
    return [name, results["net"], results["threads"], f"{load:.1f}", f"{len(results['tasks'])} x "
            f"{results['config']['epochs_per_task']}", shown, train, test, 100 * test / (train + test),
            "" if capped else wall - train - test, rss]


def main() -> None:
    rows = [eval_row("embedded default", []), eval_row("embedded default, 2 threads", ["threads=2"]),
            eval_row("5-task split", ["task_sequence=[digits-5]", f"epochs_per_task={EPOCHS_SPLIT}"])]
    cores = os.cpu_count() or 1
    multi = []
    for launcher, extra in (("basic (sequential)", []), (f"local ({cores} at once, 1 thread each)",
                                                         ["hydra/launcher=local"])):
        load = os.getloadavg()[0]
        wall, _, rss, results = run(["-m", f"meta={METAS}", f"epochs_per_task={EPOCHS_MULTIRUN}", *extra])
        if len(results) != len(METAS.split(",")):
            raise SystemExit(f"multirun with the {launcher} launcher wrote {len(results)} results.json")
        multi.append([launcher, f"{load:.1f}", len(results), wall, 0.0,
                      sum(r["train_time_s"] + r["eval_time_s"] for r in results), rss])
    for row in multi:
        row[4] = multi[0][3] / row[3]
    report("Runs: evaluation overhead, end to end, memory", [
        "`python run.py` with the defaults (the embedded permuted digits), with 2 threads, and a 5-task split "
        f"({EPOCHS_SPLIT} epochs per task); eval % = testing every task after every epoch, as a share of train "
        "+ test time; other s = wall - train - test (start-up, data, checkpoints, plots); load = 1-minute load "
        f"average before the run (other work on the machine); runs over {CAP_S} s are stopped and "
        "extrapolated. Peak RSS: the run's process. Goal: eval <= 15%.",
        table(["run", "net", "threads", "load", "tasks x epochs", "wall s", "train s", "test s", "eval %",
               "other s", "peak RSS MiB"], rows),
        f"`python run.py -m meta={METAS} epochs_per_task={EPOCHS_MULTIRUN}` (4 jobs, embedded default "
        "otherwise); train+test s = sum over jobs from results.json; peak RSS: the largest process.",
        table(["launcher", "load", "jobs", "wall s", "speed-up", "train+test s", "peak RSS MiB"], multi)])


if __name__ == "__main__":
    main()
