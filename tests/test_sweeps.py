"""Sweeps that search and launchers that spread jobs: the Optuna search sweeper and the parallel local launcher."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, read_results, tiny
from helpers import epochs_recorded, start_cli, wait_until

from metaplastic_vit.report import build_report
from metaplastic_vit.runtime import RunDirectory

sys.path.insert(0, str(ROOT))
from hydra_plugins.metaplastic_vit_plugins.local_launcher import Slot, slots  # noqa: E402


def test_slots_spread_jobs_over_gpus_and_pack_them():
    assert slots([0, 1], 1, None, 16, 4) == [Slot(0, 0), Slot(1, 1)]  # one job per GPU
    assert [s.gpu for s in slots([0, 1], 3, None, 16, 4)] == [0, 1, 0, 1, 0, 1]  # three small jobs per GPU
    assert [s.gpu for s in slots([2, 5], 2, 3, 16, 4)] == [2, 5, 2]  # capped
    assert slots([], 2, None, 16, 4) == [Slot(i, None) for i in range(4)]  # CPU: cores // cpus_per_task
    assert len(slots([], 1, None, 2, 8)) == 1


def test_the_local_launcher_gives_each_job_its_gpu_and_a_safe_shared_cache(tmp_path):
    """Four jobs at once, two per (listed) GPU, all building the same dataset cache on first use."""
    from fakes import write_fake_mnist

    write_fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    proc = start_cli(["-m", "hydra/launcher=local", "hydra.launcher.gpus=[0,1]", "hydra.launcher.jobs_per_gpu=2",
                 "meta=0,1,2,3", f"data.root={tmp_path / 'data'}", "arch.patch_size=7", "device=cpu",
                 *tiny("epochs_per_task=1", "task_sequence=[pmnist,pmnist]")], tmp_path / "out",
                     stderr=subprocess.STDOUT)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    results = {read_results(p.parent)["meta"]: read_results(p.parent)
               for p in (tmp_path / "out").glob("multirun/*/*/results.json")}
    assert sorted(results) == [0, 1, 2, 3] and all(r["status"] == "completed" for r in results.values())
    assert sorted(r["visible_devices"] for r in results.values()) == ["0", "0", "1", "1"]  # two jobs per GPU
    assert "at most 4 at once" in log
    assert len(list((tmp_path / "data" / ".cache").glob("mnist-*.pt"))) == 1
    assert not list((tmp_path / "data" / ".cache").glob("*.tmp"))


def _trials(search_dir):
    path = search_dir / "trials.json"
    return json.loads(path.read_text()) if path.exists() else []


def test_an_interrupted_search_continues_to_exactly_its_trial_budget(tmp_path):
    """A 4-trial stability-plasticity search, two trials at a time through the local launcher: stopped while
    its second pair trains (each of those waits after its second epoch, HoldFirstAttempt, so they are surely
    running), then run again with the same command."""
    out = tmp_path / "out"
    hold = "+logger.hold={_target_:helpers.HoldFirstAttempt,_partial_:true,after:2,once_completed:2}"
    args = ["-m", "+search=meta_front", "hydra/launcher=local", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.seeds=[100]", "net=bnn", "net.hidden=[64]", *tiny("epochs_per_task=3"), hold]
    env = {"PYTHONPATH": str(ROOT / "tests")}
    proc = start_cli(args, out, env=env, stderr=subprocess.STDOUT)

    def second_pair_training():
        (search_dir,) = list(out.glob("search/search_meta_front/*")) or [None]
        if search_dir and sum(t["state"] == "COMPLETE" for t in _trials(search_dir)) == 2:
            running = [p.parent for p in search_dir.glob("*/metrics.csv")
                       if read_results(p.parent)["status"] == "running" and epochs_recorded(p.parent) > 1]
            return (search_dir, running) if len(running) == 2 else None
        return None
    search_dir, running = wait_until(second_pair_training, "the second pair of trials training", timeout=240,
                                     proc=proc, interval=0.2)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, log
    assert "Traceback" not in log, log  # the jobs and their controllers stop quietly
    assert [ln for ln in log.splitlines() if ln.startswith("error:")] == [
        "error: interrupted by SIGTERM: the last checkpoint is kept; run the same command again to resume"]
    interrupted = running
    for job in interrupted:  # the jobs were stopped with the sweep: their directories are free again
        wait_until(lambda job=job: read_results(job)["status"] != "running", f"{job.name} stopping", timeout=60)
        with RunDirectory(job):
            pass
    assert [t["state"] for t in _trials(search_dir)] == ["COMPLETE", "COMPLETE"]

    again = start_cli(args, out, env=env, stderr=subprocess.STDOUT)
    log, _ = again.communicate(timeout=300)
    assert again.returncode == 0, log
    trials = _trials(search_dir)
    assert len(trials) == 4 and all(t["state"] == "COMPLETE" for t in trials)  # the budget, not 6
    assert {d for t in trials[2:] for d in t["run_dirs"]} == {str(j) for j in interrupted}  # where they stopped
    assert all(read_results(j)["resumes"] for j in interrupted)  # from their checkpoints
    report = build_report([search_dir], tmp_path / "report")
    (search,) = report["searches"]
    assert len(search.trials) == 4 and search.front()
    assert (tmp_path / "report" / "pareto_0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Pareto front" in md and "| trial | values | val_old_acc | val_new_acc | test: ACC |" in md


def test_search_spaces_and_the_zero_arm():
    import optuna

    from hydra_plugins.metaplastic_vit_plugins.search_sweeper import parse_space, suggest, trial_values

    space, fixed = parse_space({"meta": "tag(log, zero, interval(1, 300))", "net": "choice(bnn, vit)"},
                               ["epochs_per_task=2", "seed=range(0, 3)"])
    assert fixed == ["epochs_per_task=2"] and set(space) == {"meta", "net", "seed"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = []
    for _ in range(5):
        tried = {a for t in study.get_trials(deepcopy=False) for a in t.user_attrs}
        trial = study.ask()
        for name, override in space.items():
            suggest(trial, name, override, f"zero:{name}" in tried)
        values.append(trial_values(trial))
        study.tell(trial, 0.0)
    assert values[0]["meta"] == 0 and all(1 <= v["meta"] <= 300 for v in values[1:])  # zero once, first
    assert {v["net"] for v in values} <= {"bnn", "vit"} and {v["seed"] for v in values} <= {0, 1, 2}


def test_the_pareto_front_keeps_the_trials_nothing_beats():
    from pathlib import Path

    from metaplastic_vit.report import Search

    def trial(n, old, new):
        return {"number": n, "params": {"meta": n}, "values": {"val_old_acc": old, "val_new_acc": new}}

    search = Search(Path("s"), ["val_old_acc", "val_new_acc"], ["maximize", "maximize"], [None],
                    [trial(0, 10, 90), trial(1, 50, 50), trial(2, 40, 40), trial(3, 80, 20), trial(4, 50, 50)])
    assert [t["number"] for t in search.front()] == [3, 1, 4, 0]  # 2 is beaten by 1; ties both stay


def test_quasi_random_trials_cover_a_log_range_evenly(tmp_path):
    """sampler=qmc: a handful of trials spread over every decade of a strength range (random ones may cluster)."""
    import math

    from hydra_plugins.metaplastic_vit_plugins.search_sweeper import (
        OptunaSearchSweeper,
        parse_space,
        suggest,
        trial_values,
    )

    space, _ = parse_space({"strategy.strength": "tag(log, interval(0.01, 10000))"}, [])
    study = OptunaSearchSweeper(sampler="qmc")._study(tmp_path)
    decades = set()
    for _ in range(4):
        trial = study.ask()
        suggest(trial, "strategy.strength", space["strategy.strength"], False)
        decades.add(math.floor((math.log10(trial_values(trial)["strategy.strength"]) + 2) / 1.5))
        study.tell(trial, 0.0)
    assert decades == {0, 1, 2, 3}  # one trial in each quarter of the six decades


SEARCH = ["-m", "+search=meta", "net=bnn", "net.hidden=[16]", *tiny("epochs_per_task=1", "task_sequence=[pdigits]")]


def _search(cli, *args, base=SEARCH):
    proc = cli(*base, *args)
    assert proc.returncode == 0, proc.stderr
    (trials,) = cli.out.glob("search/search_meta/*/trials.json") if "hydra.sweep.dir" not in str(args) else [
        next(a.split("=", 1)[1] for a in args if a.startswith("hydra.sweep.dir=")) + "/trials.json"]
    return json.loads(Path(trials).read_text())


def test_a_continued_search_draws_what_an_uninterrupted_one_would_have(cli):
    """3 trials, then the same search continued to 4, give the 4 values of one search of 4: the sampler of each
    trial is seeded from the trial's number, not restarted with the study."""
    one = ["hydra.sweeper.seeds=[100]"]
    _search(cli, *one, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={cli.out}/a")
    continued = _search(cli, *one, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={cli.out}/a")
    whole = _search(cli, *one, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={cli.out}/b")
    values = [t["params"]["meta"] for t in continued]
    assert values == [t["params"]["meta"] for t in whole] and len(set(values)) == 4
    assert [t["state"] for t in continued] == ["COMPLETE"] * 4


def test_a_trial_runs_every_search_seed_and_a_repeated_draw_is_no_new_trial(cli):
    """Each trial averages its seeds' validation numbers (standard error kept); a draw repeating an earlier
    trial's values is neither run nor counted, and a space without new points ends the search early."""
    trials = _search(cli, "hydra.sweeper.seeds=[100,101]", "meta=choice(0,2)", "hydra.sweeper.n_trials=3")
    done = [t for t in trials if t["duplicate_of"] is None]
    assert sorted(t["params"]["meta"] for t in done) == [0, 2] and all(t["state"] == "COMPLETE" for t in done)
    repeats = [t for t in trials if t["duplicate_of"] is not None]
    assert repeats and all(t["state"] == "FAIL" and not t["run_dirs"] for t in repeats)
    for t in done:
        per_seed = [v["val_avg_acc"] for v in t["per_seed"].values()]
        assert sorted(t["per_seed"]) == ["100", "101"] and len(t["run_dirs"]) == 2
        assert t["values"]["val_avg_acc"] == pytest.approx(sum(per_seed) / 2)
        assert t["stderr"]["val_avg_acc"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2)
        assert sorted(read_results(d)["seed"] for d in t["run_dirs"]) == [100, 101]
    assert len(list(cli.out.glob("search/search_meta/*/*/results.json"))) == 4  # 2 points x 2 seeds, no more


def test_a_search_refuses_a_test_set_objective(cli):
    proc = cli(*SEARCH, "hydra.sweeper.objectives=[avg_acc]")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "'avg_acc' is measured on the test set" in line and "allow_test_objective=true" in line
    assert not list(cli.out.rglob("results.json"))


def test_a_pruned_trial_stops_early_is_marked_everywhere_and_counts_toward_the_budget(cli):
    """median pruning on each epoch's validation accuracy: a pruned trial's runs end `pruned` with the reason,
    trials.json and the report mark it, and a continued search keeps its decisions (the basic launcher runs the
    jobs one after another, so the pruner's decisions are deterministic)."""
    base = ["-m", "+search=meta", "net=bnn", "net.hidden=[32]", *tiny("epochs_per_task=3")]  # 6 epochs a run
    prune = ["hydra.sweeper.pruner=median", "hydra.sweeper.startup_trials=2", "hydra.sweeper.seeds=[100,101]",
             f"hydra.sweep.dir={cli.out}/p"]
    _search(cli, *prune, "hydra.sweeper.n_trials=4", base=base)
    trials = _search(cli, *prune, "hydra.sweeper.n_trials=6", base=base)
    states = [t["state"] for t in trials]
    assert len(trials) == 6 and "PRUNED" in states and states[:2] == ["COMPLETE", "COMPLETE"]
    for t in (t for t in trials if t["state"] == "PRUNED"):
        records = [read_results(d) for d in t["run_dirs"]]
        assert all(r["status"] == "pruned" and "pruned by the search's median pruner" in r["reason"] for r in records)
        assert all(len(r["epochs"]) < 6 for r in records)  # stopped before the end
    report = build_report([cli.out / "p"], cli.out / "report")
    (search,) = report["searches"]
    assert len(search.pruned) == states.count("PRUNED")
    assert f"and {len(search.pruned)} pruned" in (cli.out / "report" / "report.md").read_text()
    proc = cli(*SEARCH, "hydra.sweeper.pruner=median", "hydra.sweeper.objectives=[val_old_acc,val_new_acc]")
    assert proc.returncode == 2 and "a search on several objectives cannot prune" in proc.stderr


def test_a_search_prunes_through_the_local_launcher(cli):
    """The local launcher runs each job in its own process: the trial sink there reports every epoch to the study
    the sweeper holds (its journal file), so trials are pruned as with the basic launcher (one job at a time, so
    the pruner's decisions are deterministic)."""
    base = ["-m", "+search=meta", "net=bnn", "net.hidden=[32]", *tiny("epochs_per_task=3")]
    trials = _search(cli, "hydra/launcher=local", "hydra.launcher.max_parallel=1", "hydra.sweeper.pruner=median",
                     "hydra.sweeper.startup_trials=2", "hydra.sweeper.seeds=[100]", "hydra.sweeper.n_trials=5",
                     f"hydra.sweep.dir={cli.out}/p", base=base)
    states = [t["state"] for t in trials]
    assert len(trials) == 5 and "PRUNED" in states and states[:2] == ["COMPLETE", "COMPLETE"]
    for t in (t for t in trials if t["state"] == "PRUNED"):
        (record,) = [read_results(d) for d in t["run_dirs"]]
        assert record["status"] == "pruned" and len(record["epochs"]) < 6
