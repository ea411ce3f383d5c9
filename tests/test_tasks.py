import pytest
import torch

from metaplastic_vit.data import build_tasks, parse_task_sequence
from metaplastic_vit.data.tasks import resolve_scenario, task_outputs
from metaplastic_vit.errors import UserError


def test_permuted_tokens_get_their_own_fixed_permutations():
    tasks = parse_task_sequence(["pdigits", "pdigits", "pmnist"], seed=3)
    assert [t.kind for t in tasks] == ["permuted"] * 3
    assert len({t.permutation_seed for t in tasks}) == 3
    assert parse_task_sequence(["pdigits", "pdigits"], seed=3) == tasks[:2]  # derived from the seed
    assert parse_task_sequence(["pdigits"], seed=4)[0].permutation_seed != tasks[0].permutation_seed


def test_split_tokens():
    tasks = parse_task_sequence(["digits-5"])
    assert [t.classes for t in tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    shuffled = parse_task_sequence(["digits-5"], class_order_seed=1)
    assert sorted(c for t in shuffled for c in t.classes) == list(range(10))
    assert [t.classes for t in shuffled] != [t.classes for t in tasks]
    seed_tasks = parse_task_sequence(["imgnet-5"])
    assert len(seed_tasks) == 5 and all(len(t.classes) == 40 for t in seed_tasks)
    assert seed_tasks[0].dataset == "tinyimagenet"


def test_whole_and_subset_tokens():
    mnist, fmnist, animals, vehicles = parse_task_sequence(["mnist", "fmnist", "cifar10-animals", "cifar10-vehicles"])
    assert mnist.classes == tuple(range(10)) and fmnist.dataset == "fmnist"
    assert animals.classes == (2, 3, 4, 5, 6, 7) and vehicles.classes == (0, 1, 8, 9)


@pytest.mark.parametrize("token, message", [
    ("pfoo", "unknown task token 'pfoo'; use p<dataset>"),
    ("digits-3", "10 classes cannot be split into 3 equal tasks; N must be one of \\[1, 2, 5, 10\\]"),
    ("digits-0", "cannot be split into 0 equal tasks"),
    ("cifar100-7", "100 classes cannot be split into 7"),
])
def test_bad_tokens(token, message):
    with pytest.raises(UserError, match=message):
        parse_task_sequence([token])


def test_scenarios_and_label_spaces():
    perm = parse_task_sequence(["pdigits", "pdigits"])
    split = parse_task_sequence(["digits-5"])
    assert resolve_scenario(perm, "auto") == "domain"
    assert resolve_scenario(split, "auto") == "class"
    with pytest.raises(UserError, match="set data.scenario"):
        resolve_scenario(perm + split, "auto")
    assert task_outputs(split, "class")[0] == 10
    assert task_outputs(split, "domain") == (2, [[0, 1]] * 5)
    assert task_outputs(split, "class")[1][3] == [6, 7]
    both = parse_task_sequence(["mnist", "fmnist"])
    assert task_outputs(both, "class") == (20, [list(range(10)), list(range(10, 20))])
    # permuted tasks of one dataset: a block of outputs each in the class and task scenarios
    assert task_outputs(perm, "task") == (20, [list(range(10)), list(range(10, 20))])
    assert task_outputs(perm, "domain") == (10, [list(range(10))] * 2)


def _build(tokens, scenario="auto", img_size=None, val_fraction=0.0, **kw):
    return build_tasks(parse_task_sequence(tokens, **kw), "unused", None, False, scenario, img_size,
                       torch.device("cpu"), val_fraction=val_fraction)


def test_build_permuted_digits():
    data = _build(["pdigits", "pdigits"])
    a, b = data.tasks
    assert data.scenario == "domain" and data.num_classes == 10 and data.img_size == 8
    assert len(a.splits["train"]) == 1438 and len(a.splits["test"]) == 359 and len(a.splits["val"]) == 0
    ba, bb = next(a.batches("test", 359)), next(b.batches("test", 359))
    xa, ya, xb, yb = ba.x, ba.y, bb.x, bb.y
    assert torch.equal(ya, yb)
    assert not torch.allclose(xa, xb)
    # the same pixels, in another order
    torch.testing.assert_close(xa.flatten(1).sort(1).values, xb.flatten(1).sort(1).values)
    assert abs(xa.mean().item()) < 0.1  # normalised with the train split's statistics


def test_build_class_split_and_task_masks():
    data = _build(["digits-5"])
    t3 = data.tasks[3]
    assert t3.outputs.tolist() == [6, 7]
    assert set(t3.splits["train"].targets.tolist()) == {6, 7}
    dom = _build(["digits-5"], scenario="domain")
    assert set(dom.tasks[3].splits["train"].targets.tolist()) == {0, 1} and dom.num_classes == 2
    assert data.task_masks[3].nonzero().flatten().tolist() == [6, 7]


def test_shuffled_batches_are_reproducible_and_resize_works():
    data = _build(["pdigits"], img_size=16)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    b1 = next(data.tasks[0].batches("train", 50, g1))
    b2 = next(data.tasks[0].batches("train", 50, g2))
    assert torch.equal(b1.x, b2.x) and torch.equal(b1.y, b2.y) and b1.x.shape == (50, 1, 16, 16)


def test_a_trailing_batch_of_one_joins_the_previous_batch():
    from metaplastic_vit.data.loader import batch_bounds

    assert batch_bounds(201, 100) == [(0, 100), (100, 201)]
    assert batch_bounds(200, 100) == [(0, 100), (100, 200)]
    assert batch_bounds(1, 100) == [(0, 1)]
    data = _build(["pdigits"])
    sizes = [len(b) for b in data.tasks[0].batches("test", 358)]
    assert sizes == [359]


def test_classes_missing_from_the_data_are_named(tmp_path):
    from fakes import write_fake_mnist

    from metaplastic_vit.errors import DataError

    fake = write_fake_mnist(tmp_path, n_train=40, n_test=20)
    assert set(fake.train_y.tolist()) == set(range(10))
    write_fake_mnist(tmp_path / "half", n_train=40, n_test=20, classes=5)
    with pytest.raises(DataError, match="task mnist-5:3: mnist under .* has no training samples of its classes "
                                        "\\[6, 7\\]"):
        build_tasks(parse_task_sequence(["mnist-5"]), str(tmp_path / "half"), None, False, "auto", None,
                    torch.device("cpu"))


def test_mixing_incompatible_inputs_is_an_error(tmp_path):
    from fakes import write_fake_cifar10

    write_fake_cifar10(tmp_path, n_train=20, n_test=10)
    with pytest.raises(UserError, match="mixes incompatible inputs \\(digits 1x8x8, cifar10 3x32x32\\)"):
        build_tasks(parse_task_sequence(["digits", "cifar10"]), str(tmp_path), None, False, "domain", None,
                    torch.device("cpu"))


def test_a_stream_is_its_dataset_cut_into_class_balanced_parts_sharing_one_test_set():
    import torch

    from metaplastic_vit.data import build_tasks

    tasks = parse_task_sequence(["stream:digits:4"])
    assert [t.name for t in tasks] == ["digits:1/4", "digits:2/4", "digits:3/4", "digits:4/4"]
    assert all(t.kind == "stream" and t.classes == tuple(range(10)) for t in tasks)
    data = build_tasks(tasks, "unused", None, False, "auto", None, torch.device("cpu"))
    assert data.scenario == "domain" and data.stream and data.columns == [0]
    parts = [set(t.splits["train"].idx.tolist()) for t in data.tasks]
    held = set(data.tasks[0].splits["val"].idx.tolist())
    assert sum(map(len, parts)) == len(set().union(*parts)) == 1438 - len(held)  # disjoint, covering the rest
    assert not held & set().union(*parts)  # validation held out of every part
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # equal parts
    for t in data.tasks:  # every class in every part, in equal shares (within one sample)
        counts = torch.bincount(t.splits["train"].targets, minlength=10)
        assert counts.max() - counts.min() <= 2
        assert torch.equal(t.splits["test"].idx, data.tasks[0].splits["test"].idx)  # the whole test set, shared
    assert [t.shares_tests_of for t in data.tasks] == [None, 0, 0, 0]
    with pytest.raises(UserError, match="give it as the only token"):
        parse_task_sequence(["stream:digits:4", "pdigits"])
    with pytest.raises(UserError, match="needs N >= 1 parts"):
        parse_task_sequence(["stream:digits:0"])
