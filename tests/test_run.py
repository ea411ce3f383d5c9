"""The real entry point, run as a user would, with tiny overrides on the embedded data."""

import csv

import pytest
from conftest import TINY, read_results

from metaplastic_vit.metrics import summary


def test_single_run_writes_complete_results(cli):
    proc = cli(*TINY, "logger.plots=true", check=True)
    (results_path,) = cli.out.glob("runs/*/results.json")
    res = read_results(results_path.parent)
    assert res["status"] == "completed"
    assert res["tasks"] == ["pdigits0", "pdigits1"]
    assert len(res["acc_matrix"]) == 2 and all(len(r) == 2 for r in res["acc_matrix"])
    expected = summary(res["acc_matrix"], res["initial_acc"])
    for key in ("avg_acc", "bwt", "forgetting", "fwt"):
        assert res[key] == pytest.approx(expected[key])
    assert len(res["epochs"]) == 4
    first = res["epochs"][0]
    assert {"task", "epoch", "train_loss", "train_acc", "test_acc", "diagnostics"} <= set(first)
    assert len(first["test_acc"]) == 2  # every task is tested after every epoch
    # the default net: every linear map binary, per-task LayerNorm
    assert set(first["diagnostics"]) == {"patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.proj",
                                         "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "head"}
    assert res["config"]["net"]["name"] == "bvit_full_ln" and res["config"]["epochs_per_task"] == 2
    assert res["config"]["meta"] == 50
    rows = list(csv.DictReader((results_path.parent / "metrics.csv").open()))
    assert len(rows) == 4 and "test_acc_task1" in rows[0]
    for png in ("accuracy_curves.png", "accuracy_matrix.png", "weight_histograms.png"):
        assert (results_path.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ACC" in proc.stdout and "accuracy matrix" in proc.stdout
    assert "task 2/2 epoch 2" in proc.stdout  # one plain line per epoch when not on a terminal


def test_same_command_again_does_not_retrain(cli):
    cli(*TINY, check=True)
    (path,) = cli.out.glob("runs/*/results.json")
    first = read_results(path.parent)
    cli(*TINY, check=True)
    again = read_results(path.parent)
    assert again["epochs"] == first["epochs"] and again["acc_matrix"] == first["acc_matrix"]
    assert again["resumes"] == [{"task": 2, "epoch": 0}]


def test_cpu_runs_are_exactly_reproducible(cli, tmp_path):
    cli(*TINY, f"hydra.run.dir={tmp_path}/a", check=True)
    cli(*TINY, f"hydra.run.dir={tmp_path}/b", check=True)
    a, b = read_results(tmp_path / "a"), read_results(tmp_path / "b")
    assert a["epochs"] == b["epochs"]


def test_headline_multirun(cli):
    """`python run.py -m net=bvit meta=0,0.5,1,1.35` with tiny overrides: four jobs, four results."""
    proc = cli("-m", "net=bvit", "meta=0,0.5,1,1.35", *TINY, check=True)
    results = sorted(cli.out.glob("multirun/*/*/results.json"))
    assert len(results) == 4, proc.stdout
    metas = sorted(read_results(p.parent)["config"]["meta"] for p in results)
    assert metas == [0, 0.5, 1, 1.35]
    assert all(read_results(p.parent)["status"] == "completed" for p in results)
    names = {p.parent.name for p in results}  # job directories are named after their overrides
    assert all(any(f"meta={m}," in n for n in names) for m in ("0", "0.5", "1", "1.35"))


@pytest.mark.parametrize("net", ["vit", "hybrid", "bnn", "dnn"])
def test_every_net_runs(cli, net):
    cli(f"net={net}", *TINY, "net.hidden=[32,32]", check=True)
    (path,) = cli.out.glob("runs/*/results.json")
    res = read_results(path.parent)
    assert res["status"] == "completed" and res["net"] == net


def test_layerwise_meta_and_task_scenario(cli):
    cli("net=bnn", "net.hidden=[32,32]", "meta=[0,5,10]", "task_sequence=[digits-5]", "data.scenario=task",
        *TINY[:1], *TINY[2:], check=True)
    (path,) = cli.out.glob("runs/*/results.json")
    res = read_results(path.parent)
    assert res["scenario"] == "task" and len(res["tasks"]) == 5
    assert res["meta"] == [0, 5, 10]


@pytest.mark.parametrize("strategy", ["ewc", "si", "joint"])
def test_every_strategy_runs(cli, strategy):
    cli(f"strategy={strategy}", "net=bnn", "net.hidden=[64]", *TINY, check=True)
    (path,) = cli.out.glob("runs/*/results.json")
    res = read_results(path.parent)
    assert res["status"] == "completed" and res["strategy"] == strategy
    if strategy == "joint":  # every epoch sees both tasks: task 2 is learned before its turn
        assert res["acc_matrix"][0][1] > 50


def test_seed_task_split_on_a_tiny_imagenet_layout(cli, tmp_path):
    """imgnet-5 from the official tiny-imagenet-200 layout (a small fake), resized on the fly."""
    from fakes import write_fake_tinyimagenet

    write_fake_tinyimagenet(tmp_path / "data", n_classes=200, n_train_per_class=2, n_val_per_class=1)
    cli("net=hybrid", "task_sequence=[imgnet-5]", f"data.root={tmp_path / 'data'}", "arch.img_size=32",
        "arch.patch_size=8", *TINY[:1], *TINY[2:], check=True)
    (path,) = cli.out.glob("runs/*/results.json")
    res = read_results(path.parent)
    assert res["scenario"] == "class" and len(res["tasks"]) == 5
    assert res["config"]["arch"]["img_size"] == 32


def test_a_dataset_with_the_wrong_class_count_is_refused(cli, tmp_path):
    from fakes import write_fake_tinyimagenet

    write_fake_tinyimagenet(tmp_path / "data", n_classes=3)
    proc = cli("task_sequence=[imgnet-5]", f"data.root={tmp_path / 'data'}", *TINY[:1], *TINY[2:])
    assert proc.returncode == 2 and "has 3 classes, the task sequence expects the official 200" in proc.stderr
