import pytest
import torch

from metaplastic_vit.data import build_tasks, parse_task_sequence
from metaplastic_vit.data.tasks import label_space, resolve_scenario
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
    assert label_space(split, "class").num_classes == 10
    assert label_space(split, "domain").num_classes == 2
    assert label_space(split, "domain").outputs(split[3], "domain").tolist() == [0, 1]
    both = parse_task_sequence(["mnist", "fmnist"])
    space = label_space(both, "class")
    assert space.num_classes == 20 and space.outputs(both[1], "class").tolist() == list(range(10, 20))


def _build(tokens, scenario="auto", img_size=None, **kw):
    return build_tasks(parse_task_sequence(tokens, **kw), "unused", None, False, scenario, img_size,
                       torch.device("cpu"))


def test_build_permuted_digits():
    data = _build(["pdigits", "pdigits"])
    a, b = data.tasks
    assert data.scenario == "domain" and data.labels.num_classes == 10 and data.img_size == 8
    assert len(a.train_idx) == 1437 and len(a.test_idx) == 360
    xa, ya = next(a.batches("test", 360))
    xb, yb = next(b.batches("test", 360))
    assert torch.equal(ya, yb)
    assert not torch.allclose(xa, xb)
    # the same pixels, in another order
    torch.testing.assert_close(xa.flatten(1).sort(1).values, xb.flatten(1).sort(1).values)
    assert abs(xa.mean().item()) < 0.1  # normalised with the train split's statistics


def test_build_class_split_and_task_masks():
    data = _build(["digits-5"])
    t3 = data.tasks[3]
    assert t3.outputs.tolist() == [6, 7]
    assert set(t3.train_targets.tolist()) == {6, 7}
    dom = _build(["digits-5"], scenario="domain")
    assert set(dom.tasks[3].train_targets.tolist()) == {0, 1} and dom.labels.num_classes == 2


def test_shuffled_batches_are_reproducible_and_resize_works():
    data = _build(["pdigits"], img_size=16)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x1, y1 = next(data.tasks[0].batches("train", 50, g1))
    x2, y2 = next(data.tasks[0].batches("train", 50, g2))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (50, 1, 16, 16)


def test_mixing_incompatible_inputs_is_an_error(tmp_path):
    from fakes import write_fake_cifar10

    write_fake_cifar10(tmp_path, n_train=20, n_test=10)
    with pytest.raises(UserError, match="mixes incompatible inputs \\(digits 1x8x8, cifar10 3x32x32\\)"):
        build_tasks(parse_task_sequence(["digits", "cifar10"]), str(tmp_path), None, False, "domain", None,
                    torch.device("cpu"))
