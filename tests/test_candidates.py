"""Candidates hold the validation optimum of a finished search, exactly, and say where it came from."""

import json

import pytest
from conftest import ROOT
from omegaconf import OmegaConf

from metaplastic_vit import candidates
from metaplastic_vit.errors import UserError


def _summary(path, trials, n_trials=None, fixed=()):
    path.mkdir(parents=True)
    (path / "search.json").write_text(json.dumps({
        "objectives": ["val_avg_acc"], "directions": ["maximize"], "n_trials": n_trials or len(trials),
        "seeds": [100, 101, 102], "space": {"meta": "tag(log, zero, interval(1, 300))"}, "fixed": list(fixed)}))
    (path / "trials.json").write_text(json.dumps([
        {"number": n, "state": state, "params": params, "duplicate_of": None,
         "values": None if value is None else {"val_avg_acc": value},
         "stderr": None if value is None else {"val_avg_acc": 1.5}} for n, state, params, value in trials]))
    return path


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweeps" / "candidates").mkdir(parents=True)
    (tmp_path / "sweeps" / "candidates" / "net_a.yaml").write_text(
        "# @package _global_\n# a candidate\ndefaults:\n  - override /net: bnn_ln\n")
    return tmp_path


def test_export_copies_the_best_trial_at_full_precision_and_check_holds_it_to_it(repo):
    meta = _summary(repo / "meta", [(0, "COMPLETE", {"meta": 0}, 48.7), (1, "COMPLETE", {"meta": 59.10312345678901},
                                                                         90.71), (2, "FAIL", {"meta": 3.0}, None)])
    ewc = _summary(repo / "ewc", [(0, "COMPLETE", {"strategy.strength": 195.53}, 61.0)], fixed=["strategy=ewc"])
    assert candidates.export(meta, "net_a") == {"meta": 59.10312345678901}
    assert candidates.export(ewc, "net_a") == {"ewc": 195.53}
    text = (repo / "sweeps" / "candidates" / "net_a.yaml").read_text()
    assert text.startswith("# @package _global_\n# a candidate\n") and text.count(candidates.MARKER) == 1
    tags = OmegaConf.to_container(OmegaConf.create(text))["tags"]
    assert tags["validated"] == {"meta": 59.10312345678901, "ewc": 195.53}
    assert tags["validated_from"]["meta"] == {"search": str(meta), "trial": 1, "param": "meta",
                                              "objective": "val_avg_acc", "value": 90.71, "stderr": 1.5,
                                              "seeds": [100, 101, 102]}
    assert candidates.check() == []
    (repo / "sweeps" / "candidates" / "net_a.yaml").write_text(text.replace("59.10312345678901", "59.1"))
    (problem,) = candidates.check()
    assert "tags.validated.meta is 59.1, but the best trial" in problem and "59.10312345678901" in problem


def test_an_unfinished_search_cannot_be_exported(repo):
    unfinished = _summary(repo / "s", [(0, "COMPLETE", {"meta": 0}, 48.7), (1, "RUNNING", {"meta": 5.0}, None)],
                          n_trials=4)
    with pytest.raises(UserError, match=r"has not finished \(1 of 4 trials, trials \[1\] still running\)"):
        candidates.export(unfinished, "net_a")
    assert candidates.MARKER not in (repo / "sweeps" / "candidates" / "net_a.yaml").read_text()
    assert candidates.main(["export", str(unfinished), "net_a"]) == 2


def test_every_committed_candidate_equals_its_finished_search(monkeypatch):
    """The values the study's sweeps read are exactly the validation optima of the committed search summaries,
    found on seeds that are not the evaluation seeds."""
    monkeypatch.chdir(ROOT)
    assert candidates.check() == []
    evaluation = {int(s) for path in (ROOT / "sweeps" / "grid").glob("*.yaml")
                  for s in str(OmegaConf.load(path).get("hydra", {}).get("sweeper", {}).get("params", {}).get(
                      "seed", "")).split(",") if s}
    assert {0, 1, 2} <= evaluation
    for path in sorted((ROOT / "sweeps" / "candidates").glob("*.yaml")):
        tags = OmegaConf.to_container(OmegaConf.create(path.read_text())).get("tags", {})
        for key, source in tags.get("validated_from", {}).items():
            assert not set(source["seeds"]) & evaluation, (path.name, key)


def test_the_default_net_runs_at_its_validated_meta():
    """`python run.py` uses the default net's meta exactly as its finished search chose it."""
    config = OmegaConf.load(ROOT / "conf" / "config.yaml")
    net = next(d["net"] for d in OmegaConf.to_container(config.defaults) if isinstance(d, dict) and "net" in d)
    candidate = OmegaConf.load(ROOT / "sweeps" / "candidates" / f"{net}.yaml")
    assert config.meta == candidate.tags.validated.meta
