"""Searches and testing: a meta search with and without pruning, and the share of a run spent testing.

Pruning: the embedded `+search=meta` (8 trials, one search seed to keep the benchmark short), through the local
launcher, once with `hydra.sweeper.pruner=none` and once with `median` (warm-up: the first task's epochs);
the best trial of each and the training time every run of the search spent (sum of results.json train and
test seconds), side by side in one run. Testing: the embedded default tested in the loop (`threads=1`) and
beside training (a second core, the default on a multi-core CPU), with this tree and with the landed revision
before this round (`--baseline REV`, whose evaluator counted the task-aware matrix apart and tested under
no_grad), in alternating processes; the
share is test seconds over train + test seconds as results.json reports them (beside training, the seconds
the loop waits for a test and copies the model).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import PYTHON, ROOT, check, median, report, run_child, table, worktree

BASELINE = "74c35d8"  # the landed main before this round


def search(pruner: str) -> dict:
    """One 8-trial meta search on the embedded default: its best trial, and the seconds its runs trained."""
    with tempfile.TemporaryDirectory(prefix="bench-search-") as out:
        args = ["-m", "+search=meta", "hydra/launcher=local", "hydra.sweeper.n_trials=8", "hydra.sweeper.n_jobs=2",
                "hydra.sweeper.seeds=[100]", f"hydra.sweeper.pruner={pruner}", "hydra.sweeper.prune_warmup_epochs=20",
                f"hydra.sweep.dir={out}/s", "logger.files.plots=false", "logger.console.progress=none"]
        code, wall, _, log = run_child([PYTHON, str(ROOT / "run.py"), *args], env={"METAPLASTIC_OUTPUT": out},
                                       timeout=7200)
        check(code, log, f"the search with pruner={pruner}")
        trials = json.loads((Path(out) / "s" / "trials.json").read_text())
        runs = [json.loads(p.read_text()) for p in (Path(out) / "s").glob("*/results.json")]
    done = [t for t in trials if t["state"] == "COMPLETE"]
    best = max(done, key=lambda t: t["values"]["val_avg_acc"])
    return {"best": best["params"]["meta"], "val": best["values"]["val_avg_acc"], "wall": wall,
            "seconds": sum(r["train_time_s"] + r["eval_time_s"] for r in runs),
            "pruned": sum(t["state"] == "PRUNED" for t in trials), "epochs": sum(len(r["epochs"]) for r in runs)}


def testing_share(tree: Path, threads: str | None) -> float:
    """The test share (%) of the embedded default run with the package of `tree`."""
    with tempfile.TemporaryDirectory(prefix="bench-share-") as out:
        extra = [f"threads={threads}"] if threads else []
        code, _, _, log = run_child([PYTHON, str(tree / "run.py"), *extra, "logger.files.plots=false",
                                     "logger.console.progress=none"],
                                    env={"METAPLASTIC_OUTPUT": out, "PYTHONPATH": str(tree)})
        check(code, log, f"run.py in {tree}")
        (res,) = [json.loads(p.read_text()) for p in Path(out).glob("**/results.json")]
    return 100 * res["eval_time_s"] / (res["train_time_s"] + res["eval_time_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="the revision the testing share is compared with")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per revision and testing mode")
    parser.add_argument("--skip-search", action="store_true", help="only the testing share")
    args = parser.parse_args()
    blocks = []
    if not args.skip_search:
        results = {p: search(p) for p in ("none", "median")}
        rows = [[p, f"{r['best']:.4g}", r["val"], r["pruned"], r["epochs"], r["seconds"], r["wall"]]
                for p, r in results.items()]
        same = results["none"]["best"] == results["median"]["best"]
        blocks += ["Meta search on the embedded default (`+search=meta`, 8 trials, seed 100, local launcher):",
                   table(["pruner", "best meta", "best validation ACC", "trials pruned", "epochs trained",
                          "train + test s (all runs)", "search wall s"], rows),
                   f"Same best trial with and without pruning: {'yes' if same else 'no'}; training time with "
                   f"pruning / without: {results['median']['seconds'] / results['none']['seconds']:.2f}x."]
    with worktree(args.baseline) as tree:
        revisions = {"this tree": ROOT, **({f"before ({args.baseline})": tree} if tree is not None else {})}
        shares: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for mode, threads in (("in the loop (threads=1)", "1"), ("beside training (default)", None)):
                for name, path in revisions.items():
                    shares.setdefault((name, mode), []).append(testing_share(path, threads))
    rows = [[name, mode, median(v), f"{min(v):.1f}-{max(v):.1f}"] for (name, mode), v in shares.items()]
    blocks += ["Testing share of the embedded default (test s / (train + test s), results.json; median and range "
               f"over {args.rounds} alternating runs):",
               table(["revision", "testing", "share %", "range %"], rows)]
    report("Searches and testing (bench_search.py)", blocks)


if __name__ == "__main__":
    main()
