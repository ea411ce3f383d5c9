"""Whole experiments composed from the real config and run in this process, on the embedded digits."""

import csv

import pytest
import torch
from conftest import config, read_results, run, tiny

from metaplastic_vit import experiment
from metaplastic_vit.loop.precision import Precision
from metaplastic_vit.metrics import summary
from metaplastic_vit.models import MODELS
from metaplastic_vit.record import read_record


def test_default_net_run_writes_a_complete_record(tmp_path):
    record = run(tmp_path, *tiny("logger.files.plots=true"))
    assert record.status == "completed" and record.net == "bvit_full" and record.meta == 16.36969827474918
    assert record.tasks == ["pdigits0", "pdigits1"] and record.scenario == "domain"
    for matrix in (record.acc_matrix, record.acc_matrix_task_aware, record.val_acc_matrix):
        assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    expected = summary(record.acc_matrix, record.initial_acc)
    assert (record.avg_acc, record.bwt, record.forgetting, record.fwt) == pytest.approx(
        (expected["avg_acc"], expected["bwt"], expected["forgetting"], expected["fwt"]))
    assert record.avg_acc_task_aware == pytest.approx(summary(record.acc_matrix_task_aware)["avg_acc"])
    assert record.val_avg_acc == pytest.approx(sum(record.val_acc_matrix[-1]) / 2)
    assert record.val_new_acc == record.val_acc_matrix[-1][1] and record.val_old_acc == record.val_acc_matrix[-1][0]
    assert len(record.epochs) == 4
    first = record.epochs[0]
    assert len(first.test_acc) == len(first.test_acc_task_aware) == len(first.val_acc) == 2  # every task, every epoch
    assert set(first.diagnostics.layers) == {"patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.proj",
                                             "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "head"}
    assert 0 <= first.diagnostics.attenuated <= 1 and first.diagnostics.histograms is None
    assert record.epochs[1].diagnostics.histograms  # at a task's end
    on_disk = read_record(tmp_path / "results.json")
    assert on_disk.to_dict() == record.to_dict()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 4 and {"test_acc_task1", "test_acc_task_aware_task1", "val_acc_task1"} <= set(rows[0])
    for png in ("accuracy_curves.png", "accuracy_matrix.png", "weight_histograms.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_task_id_per_task_state_changes_nothing(tmp_path):
    """Domain scenario: the per-task-LN net and the same net without per-task state give the same matrix."""
    with_state = run(tmp_path / "a", *tiny("net=bvit_full_ln"))
    without = run(tmp_path / "b", *tiny("net=bvit_full"))
    assert with_state.acc_matrix == without.acc_matrix
    assert with_state.val_acc_matrix == without.val_acc_matrix
    assert without.acc_matrix_task_aware == without.acc_matrix  # no state, one head: task id adds nothing
    assert with_state.acc_matrix_task_aware[1][1] == with_state.acc_matrix[1][1]  # the live task is its own
    assert with_state.acc_matrix_task_aware[1][0] != with_state.acc_matrix[1][0]  # task 1 with its own norms


def test_task_scenario_tests_with_the_task_id(tmp_path):
    record = run(tmp_path, *tiny("data.scenario=task"))
    assert record.scenario == "task" and record.acc_matrix == record.acc_matrix_task_aware


def test_permuted_tasks_in_the_class_scenario_get_their_own_outputs(tmp_path):
    cfg = config(*tiny("data.scenario=class"))
    from metaplastic_vit.data import build_tasks, parse_task_sequence

    data = build_tasks(parse_task_sequence(cfg.task_sequence), "unused", None, False, "class", None,
                       torch.device("cpu"))
    assert data.num_classes == 20 and data.tasks[1].outputs.tolist() == list(range(10, 20))
    assert set(data.tasks[1].splits["train"].targets.tolist()) == set(range(10, 20))
    record = run(tmp_path, *tiny("data.scenario=class"))
    assert record.scenario == "class" and record.acc_matrix != record.acc_matrix_task_aware


def test_bnn_accuracy_does_not_depend_on_the_test_batch_size(tmp_path):
    small = run(tmp_path / "a", *tiny("net=bnn", "net.hidden=[64]", "data.eval_batch_size=7"))
    large = run(tmp_path / "b", *tiny("net=bnn", "net.hidden=[64]", "data.eval_batch_size=1000"))
    assert small.acc_matrix == large.acc_matrix
    assert small.acc_matrix_task_aware == large.acc_matrix_task_aware
    assert small.val_acc_matrix == large.val_acc_matrix
    # the paper's transductive statistics let each test batch carry its task: accuracy depends on the batch
    small = run(tmp_path / "c", *tiny("net=bnn", "net.hidden=[64]", "net.transductive_bn=true",
                                      "data.eval_batch_size=7"))
    large = run(tmp_path / "d", *tiny("net=bnn", "net.hidden=[64]", "net.transductive_bn=true",
                                      "data.eval_batch_size=1000"))
    assert small.acc_matrix != large.acc_matrix


def test_a_final_batch_of_one_sample_works(tmp_path):
    cfg = config(*tiny("net=bnn"))
    from metaplastic_vit.data import build_tasks, parse_task_sequence

    data = build_tasks(parse_task_sequence(cfg.task_sequence), "unused", None, False, "auto", None,
                       torch.device("cpu"), val_fraction=0.1)
    n_train, n_test = len(data.tasks[0].splits["train"]), len(data.tasks[0].splits["test"])
    record = run(tmp_path, *tiny("net=bnn", "net.hidden=[32]", f"batch_size={n_train - 1}",
                                 f"data.eval_batch_size={n_test - 1}"))
    assert record.status == "completed"


def test_validation_split_is_held_out_stratified_and_seeded():
    from metaplastic_vit.data import build_tasks, parse_task_sequence

    def build(seed):
        return build_tasks(parse_task_sequence(["pdigits", "pdigits"], seed=seed), "unused", None, False, "auto",
                           None, torch.device("cpu"), val_fraction=0.1, seed=seed)

    data = build(0)
    task = data.tasks[0]
    train, val = task.splits["train"], task.splits["val"]
    assert not set(train.idx.tolist()) & set(val.idx.tolist())  # never trained on
    assert len(train) + len(val) == 1438 and len(val) == pytest.approx(144, abs=5)
    counts = torch.bincount(val.targets, minlength=10)
    assert counts.min() >= 13 and counts.max() <= 16  # about 10% of every class
    assert torch.equal(build(0).tasks[0].splits["val"].idx, val.idx)
    assert not torch.equal(build(1).tasks[0].splits["val"].idx, val.idx)
    assert not torch.equal(data.tasks[1].splits["val"].idx, val.idx)  # each task its own held-out part


def test_one_declaration_decides_the_fingerprint_the_report_groups_and_the_run_directory():
    """The schema's field metadata is the one list of keys that do not change results: the fingerprint, the
    settings a report groups by (record.science) and the run directory's name all follow it."""
    from metaplastic_vit.config import fingerprint, non_scientific, run_dirname, science

    def fp(*overrides, precision=Precision.fp32):
        return fingerprint(science(config(*overrides), precision))

    base = fp(*tiny())
    same = ["threads=2", "logger.console.progress=lines", "device=cpu", "+tags.note=x",
            "optimizer.implementation=foreach", "compile=true", "checkpoint=false", "data.root=elsewhere"]
    for override in [*same, "data.eval_batch_size=7"]:
        assert fp(*tiny(override)) == base, override
    assert run_dirname([*same, "+search=meta", "hydra/launcher=local"]) == "default"  # none names a directory
    assert fp(*tiny(), precision=Precision.bf16) != base
    for other in ("lr=0.01", "data.val_fraction=0.2", "strategy=ewc", "seed=1", "arch.proj_bias=false",
                  "arch.class_token=false", "strategy=ewc strategy.fisher_decay=0.5"):
        assert fp(*tiny(*other.split())) != base, other
        assert run_dirname(other.split()) == ",".join(sorted(other.split())), other
    bnn = tiny("net=bnn", "net.transductive_bn=true")  # the test batch size matters only here
    assert fp(*bnn) != fp(*bnn, "data.eval_batch_size=7")
    assert run_dirname(["data.eval_batch_size=7"]) == "data.eval_batch_size=7"  # sometimes scientific: kept
    vit = science(config(*tiny("arch.proj_bias=false")), Precision.fp32)
    assert vit["arch.proj_bias"] is False and "net.proj_bias" not in vit and "net.embed_dim" not in vit  # copies
    assert science(config(*tiny("+candidate=bvit", "meta=3")), Precision.fp32)["meta"] == 3
    declared = non_scientific()
    assert {"compile", "tags", "optimizer.implementation", "logger", "threads"} <= declared.keys()
    assert declared["data.eval_batch_size"] == "net.transductive_bn"


@pytest.mark.parametrize("net", sorted(MODELS))
def test_every_registered_net_runs(tmp_path, net):
    size = {"mlp": ["net.hidden=[32]"], "walk": ["net.embed_dim=32"], "vit": []}[MODELS[net].family]
    record = run(tmp_path, *tiny(f"net={net}", "epochs_per_task=1", "task_sequence=[pdigits]", *size))
    assert record.status == "completed" and record.net == net


def test_layerwise_meta_and_the_task_scenario_on_a_split(tmp_path):
    record = run(tmp_path, *tiny("net=bnn", "net.hidden=[32,32]", "meta=[0,5,10]", "task_sequence=[digits-5]",
                                 "data.scenario=task", "epochs_per_task=1"))
    assert record.scenario == "task" and len(record.tasks) == 5 and record.meta == [0, 5, 10]


@pytest.mark.parametrize("net", ["bvit_full", "bvit_full_ln"])  # the second with per-task LayerNorms
def test_cpu_runs_are_exactly_reproducible(tmp_path, monkeypatch, net):
    """Also whether each epoch is tested in the loop (threads=1) or beside the next one's training (threads
    unset on two cores)."""
    a = run(tmp_path / "a", *tiny(f"net={net}"))
    monkeypatch.setattr(experiment.os, "sched_getaffinity", lambda pid: {0, 1})
    b = run(tmp_path / "b", *[o for o in tiny(f"net={net}") if o != "threads=1"])
    assert [e.__dict__ for e in a.epochs] == [e.__dict__ for e in b.epochs] and b.threads == 1
    assert b.acc_matrix_task_aware == a.acc_matrix_task_aware


def test_a_small_model_trains_on_one_core_and_is_tested_on_another(monkeypatch):
    before = torch.get_num_threads()
    small, cpu = torch.nn.Linear(4, 2), torch.device("cpu")
    try:
        monkeypatch.setattr(experiment.os, "sched_getaffinity", lambda pid: {0, 1, 2})
        assert experiment.set_threads(None, None, small, cpu) == (1, 3, True)
        assert experiment.set_threads(2, None, small, cpu) == (2, 2, False)  # the cores asked for, tests in the loop
        assert experiment.set_threads(None, 1, small, cpu) == (1, 1, False)  # a local launcher's slot
        monkeypatch.setattr(experiment.os, "sched_getaffinity", lambda pid: {0})
        assert experiment.set_threads(None, None, small, cpu) == (1, 1, False)  # no core to spare
    finally:
        torch.set_num_threads(before)


def test_a_finished_run_is_not_retrained(tmp_path):
    first = run(tmp_path, *tiny())
    again = run(tmp_path, *tiny())
    assert again.epochs == first.epochs and again.resumes == [{"task": 2, "epoch": 0}]
    assert read_results(tmp_path)["status"] == "completed"


def test_the_command_returns_validation_accuracy_to_sweepers(tmp_path):
    """What a Hydra sweeper optimises is the validation ACC, never the test ACC."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from metaplastic_vit import cli

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(cli.CONFIG_DIR), version_base="1.3"):
        full = compose("config", overrides=[*tiny(), f"hydra.run.dir={tmp_path}"], return_hydra_config=True)
    from omegaconf import open_dict

    with open_dict(full):
        full.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(full)
    task = config(*tiny())
    returned = cli.main.__wrapped__(task)
    record = read_results(tmp_path)
    assert returned == record["val_avg_acc"] and returned != record["avg_acc"]


def test_each_purpose_draws_from_its_own_random_stream():
    """Permutation, validation hold-out, Fisher sample, replay, shuffling and initial weights never share a seed,
    nor do two tasks of one purpose; and the seeds stay what they were (a change would change every result)."""
    from metaplastic_vit import seeds
    from metaplastic_vit.data import build_tasks, parse_task_sequence
    from metaplastic_vit.data.splits import stratified_holdout

    drawn = {(stream, task): seeds.derive(0, stream, task) for stream in seeds.Stream for task in range(3)}
    assert len(set(drawn.values())) == len(drawn) and all(0 <= s < 2**63 for s in drawn.values())
    assert seeds.derive(1, seeds.Stream.permutation, 0) != seeds.derive(0, seeds.Stream.permutation, 0)
    assert seeds.derive(0, seeds.Stream.init) == 1445747666553143162
    tasks = parse_task_sequence(["pdigits", "pdigits"], seed=0)
    assert [t.permutation_seed for t in tasks] == [seeds.derive(0, seeds.Stream.permutation, k) for k in (0, 1)]
    data = build_tasks(tasks, "unused", None, False, "auto", None, torch.device("cpu"), seed=0)
    for i, task in enumerate(data.tasks):  # each task's hold-out is drawn from its own validation stream
        full = torch.cat([task.splits["train"].idx, task.splits["val"].idx]).sort().values
        held = stratified_holdout(task.images.train_y[full], 0.1, seeds.generator(0, seeds.Stream.validation, i))
        assert torch.equal(full[held], task.splits["val"].idx.sort().values)


def test_the_freeze_probe_stops_every_weight_tensor_after_its_task(tmp_path):
    record = run(tmp_path, *tiny("net=bvit_full", "strategy=freeze", "meta=0"))
    first, second = [[e for e in record.epochs if e.task == t] for t in (0, 1)]
    assert any(v["flipped"] > 0 for e in first for v in e.diagnostics.layers.values())
    assert all(v["flipped"] == 0 for e in second for v in e.diagnostics.layers.values())  # no sign moves
    assert record.epochs[-1].train_acc != record.epochs[len(first)].train_acc  # the 1-D parameters still learn


def test_meta_from_a_later_task_learns_the_first_task_as_plain_adam(tmp_path):
    late = run(tmp_path / "late", *tiny("net=bvit_full", "meta=50", "optimizer.meta_from_task=1"))
    plain = run(tmp_path / "plain", *tiny("net=bvit_full", "meta=0"))
    first = [e for e in late.epochs if e.task == 0]
    assert [e.test_acc for e in first] == [e.test_acc for e in plain.epochs[:len(first)]]
    assert late.epochs[-1].test_acc != plain.epochs[-1].test_acc
    assert first[-1].diagnostics.attenuated is None and late.epochs[-1].diagnostics.attenuated is not None
    assert late.metaplastic_weights > 0


def test_a_stream_records_the_whole_test_set_after_every_part_tested_once_per_epoch(tmp_path):
    from metaplastic_vit.report import build_report

    stream = run(tmp_path / "stream", *tiny("net=bnn", "net.hidden=[32]", "task_sequence=[stream:digits:3]",
                                            "fresh_optimizer=false"))
    assert stream.stream and stream.columns == ["digits (whole test set)"] and len(stream.tasks) == 3
    assert all(len(row) == 1 for row in stream.acc_matrix) and len(stream.acc_matrix) == 3  # a curve
    assert all(len(e.test_acc) == len(e.val_acc) == 1 for e in stream.epochs)  # one test of the shared set
    assert stream.avg_acc == stream.acc_matrix[-1][0] and stream.bwt is None
    whole = run(tmp_path / "whole", *tiny("net=bnn", "net.hidden=[32]", "task_sequence=[digits]"))
    report = build_report([tmp_path], tmp_path / "report")
    assert any(p.name == "stream_accuracy.png" for p in report["figures"])
    assert whole.columns == ["digits"]
