"""Bad input is refused with one clear message before any data is loaded or anything is written."""

import itertools

import pytest
from conftest import ROOT, composer, config, run, tiny
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metaplastic_vit import experiment
from metaplastic_vit.errors import DataError, UserError, one_line

BEFORE_DATA = [
    (["net=foo"], "Could not find 'net/foo'; Available options in 'net': bnn, bnn_ln, bvit, "),
    (["task_sequence=[pfoo]"], "unknown task token 'pfoo'; use p<dataset>"),
    (["task_sequence=[digits-3]"], "10 classes cannot be split into 3 equal tasks; N must be one of [1, 2, 5, 10]"),
    (["task_sequence=[digits-0]"], "cannot be split into 0 equal tasks"),
    (["task_sequence=[]"], "task_sequence must name at least one task"),
    (["meta=-1"], "meta must be a number >= 0 or a list of them, got -1"),
    (["meta=abc"], "meta must be a number >= 0 or a list of them, got 'abc'"),
    (["lr=0"], "lr must be > 0, got 0.0"),
    (["lr=abc"], "Value 'abc' of type 'str' could not be converted to Float"),
    (["epochs_per_task=0"], "epochs_per_task must be >= 1, got 0"),
    (["batch_size=0"], "batch_size must be >= 1, got 0"),
    (["gamma=0"], "gamma must be > 0, got 0.0"),
    (["threads=0"], "threads must be >= 1, got 0"),
    (["seed=99999999999999999999"], "seed must lie in [0, 2^63), got 99999999999999999999"),
    (["device=tpu"], "unknown device 'tpu'"),
    (["precision=fp8"], "Invalid value 'fp8', expected one of [auto, fp32, bf16, fp16]"),
    (["net.name=cnn"], "unknown net 'cnn'; choose one of vit, bvit"),
    (["net.norm=group"], "Invalid value 'group', expected one of [layer, batch]"),
    (["arch.num_heads=3"], "arch.num_heads 3 does not divide arch.embed_dim 16"),
    (["meta=nan"], "meta must be a number >= 0 or a list of them, got nan"),
    (["meta=true"], "meta must be a number >= 0 or a list of them, got True"),
    (["meta=[1,2]", "+optimizer.meta_layers.x={patterns:[head.*],meta:1}"],
     "give layer-wise meta either as a list in meta or as optimizer.meta_layers, not both"),
    (["+optimizer.meta_layers.x={pattern:[head.*],meta:1}"], "optimizer.meta_layers.x must be {patterns"),
    (["+optimizer.meta_layers.x={patterns:[head.*],meta:-1}"], "optimizer.meta_layers.x.meta must be a number >= 0"),
    (["optimizer.eps=0"], "optimizer.eps must be > 0, got 0.0"),
    (["net.binary_scale=big"], "Invalid value 'big', expected one of [none, fan_in, mean_abs]"),
    (["net=bnn", "net.hidden=[]"], "net.hidden must list layer widths >= 1, got []"),
    (["arch.num_heads=0"], "arch.num_heads must be >= 1, got 0"),
    (["arch.img_size=0"], "arch.img_size must be >= 1, got 0"),
    (["bogus=1"], "Key 'bogus' not in 'Config'"),
    (["+epoch_per_task=5"], "unknown config key 'epoch_per_task'; did you mean epochs_per_task?"),
    (["+net.binary_weight=[head]"], "unknown config key 'net.binary_weight'; did you mean net.binary_weights?"),
    (["data.scenario=mixed"], "Invalid value 'mixed', expected one of [auto, domain, class, task]"),
    (["data.val_fraction=1"], "data.val_fraction must lie in [0, 1), got 1.0"),
    (["data.eval_batch_size=0"], "data.eval_batch_size must be >= 1, got 0"),
    (["optimizer.meta_scale=foo"], "Invalid value 'foo', expected one of [none, rms]"),
    (["optimizer.meta_on=some"], "Invalid value 'some', expected one of [all, binary]"),
    (["optimizer.implementation=jit"], "Invalid value 'jit', expected one of [auto, compiled, foreach]"),
    (["optimizer.betas=[0.9]"], "optimizer.betas must be two numbers in [0, 1), got [0.9]"),
    (["strategy=si", "strategy.fisher_samples=3"], "Key 'fisher_samples' not in 'SIConfig'"),
    (["strategy=ewc", "strategy.strength=-1"], "strategy.strength must be >= 0, got -1.0"),
    (["strategy=ewc", "strategy.mode=both"], "Invalid value 'both', expected one of [separate, online]"),
    (["strategy=replay", "strategy.buffer_size=0"], "strategy.buffer_size must be >= 1, got 0"),
    (["strategy=lwf", "strategy.temperature=0"], "strategy.temperature must be > 0, got 0.0"),
    (["logger.console.progress=loud"], "Invalid value 'loud', expected one of [auto, bar, lines, none]"),
    (["logger=wandb", "logger.wandb.mode=maybe"], "Invalid value 'maybe', expected one of [auto, online, offline"),
]


@pytest.fixture
def no_data(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the bad input was found")
    monkeypatch.setattr(experiment, "build_tasks", refuse)


@pytest.mark.parametrize("overrides, message", BEFORE_DATA, ids=[" ".join(o) for o, _ in BEFORE_DATA])
def test_bad_input_is_refused_before_any_data_is_loaded(tmp_path, no_data, overrides, message):
    with pytest.raises((UserError, HydraException, OmegaConfBaseException)) as info:
        run(tmp_path, *tiny(*overrides))
    line = one_line(info.value)
    assert message in line and "\n" not in line
    assert not list(tmp_path.iterdir())  # nothing written


NEEDS_DATA = [
    (["arch.patch_size=3"], UserError,
     "patch_size 3 does not divide img_size 8; choose a patch size among [1, 2, 4, 8]"),
    (["meta=[1,2]"], UserError, "meta has 2 values but the model has 8 metaplastic weight tensors"),
    (["task_sequence=[mnist]", "data.root=/nonexistent"], DataError,
     "mnist not found: /nonexistent/MNIST/raw/train-images-idx3-ubyte is missing; set data.download=true"),
]


@pytest.mark.parametrize("overrides, error, message", NEEDS_DATA, ids=[" ".join(o) for o, _, _ in NEEDS_DATA])
def test_bad_input_that_needs_the_data_is_refused_before_anything_is_written(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message.replace("[", "\\[").replace("]", "\\]")):
        run(tmp_path, *tiny(*overrides))
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]  # only the run directory's (released) lock


def test_tags_are_free_form(tmp_path):
    cfg = config(*tiny("+tags.note=first try", "+tags.owner=lab"))
    assert experiment.validate(cfg).tags == {"note": "first try", "owner": "lab"}


def test_hydras_multi_line_errors_become_one_line():
    with pytest.raises(HydraException) as info:
        config("net=foo")
    assert "\n" in str(info.value) and "\n" not in one_line(info.value)


def validated_values(candidate: str) -> dict:
    """The values a candidate's searches have exported so far."""
    tags = OmegaConf.load(ROOT / "sweeps" / "candidates" / f"{candidate}.yaml").get("tags") or {}
    return dict(tags.get("validated") or {})


def test_every_named_sweep_composes_with_every_value_of_its_parameters():
    """Every job of every named grid validates, except those of a candidate whose search has not run yet: they
    are refused in one line naming the value that is missing."""
    waiting = set()
    with composer() as compose_with:
        for path in sorted((ROOT / "sweeps" / "grid").glob("*.yaml")):
            full = compose_with(f"+sweep={path.stem}", return_hydra_config=True)
            params = {k: str(v).split(",") for k, v in (full.hydra.sweeper.get("params") or {}).items()}
            seeds = params.pop("seed", [])  # a seed changes no composition: each value once, with the first job
            jobs = [dict(zip(params, values, strict=True)) for values in itertools.product(*params.values())]
            jobs += [{**jobs[0], "seed": seed} for seed in seeds]
            for job in jobs:  # every combination of every other parameter's values
                overrides = [f"{k}={v}" for k, v in job.items()]
                try:
                    experiment.validate(compose_with(f"+sweep={path.stem}", *overrides))
                except UserError as exc:
                    candidate = dict(o.split("=", 1) for o in overrides).get("+candidate")
                    key = str(exc).split("reads tags.validated.", 1)[-1].split(",")[0]
                    assert candidate and "does not hold yet" in str(exc) and key not in validated_values(candidate)
                    waiting.add(candidate)
    assert "bvit_full" not in waiting and "bnn_ln" not in waiting  # the study's two main candidates are searched


def test_every_candidate_arm_baseline_probe_and_search_composes():
    baselines = sorted(p.stem for p in (ROOT / "sweeps" / "baseline").glob("*.yaml"))
    assert baselines == ["ewc", "joint", "lwf", "replay", "si"]
    with composer() as compose_with:
        for path in sorted((ROOT / "sweeps" / "candidates").glob("*.yaml")):
            validated = validated_values(path.stem)
            arms = ("validated", "no_meta") if "meta" in validated else ()
            arms += ("validated_layers",) if {"attn", "io"} <= validated.keys() else ()
            for arm in arms:
                experiment.validate(compose_with(f"+candidate={path.stem}", f"+arm={arm}"))
            for probe in ("freeze", "late") if "meta" in validated else ():
                cfg = compose_with(f"+candidate={path.stem}", f"+probe={probe}")
                if cfg.data.boundaries == "hard":
                    experiment.validate(cfg)
                else:  # both probes act at a task's end, which a boundary-free candidate never reaches
                    with pytest.raises(UserError, match="needs task boundaries"):
                        experiment.validate(cfg)
            for baseline in sorted(validated.keys() & set(baselines)):  # the strengths chosen for this candidate
                cfg = compose_with(f"+candidate={path.stem}", f"+baseline={baseline}")
                experiment.validate(cfg)
                assert cfg.meta == 0 and cfg.strategy.strength == validated[baseline]
        for baseline in ("replay", "joint"):  # no strength: the same for every candidate
            assert experiment.validate(compose_with("+candidate=bvit_full", f"+baseline={baseline}")).meta == 0
        for path in sorted((ROOT / "sweeps" / "search").glob("*.yaml")):
            experiment.validate(compose_with(f"+search={path.stem}", "+candidate=bvit_full_layerwise")
                                if path.stem == "meta_layers" else compose_with(f"+search={path.stem}"))
        assert experiment.validate(compose_with("+candidate=bnn", "+arm=no_meta")).meta == 0


def test_layer_wise_candidate_follows_meta_unless_its_groups_are_validated():
    def metas(*overrides):
        cfg = experiment.validate(config("+candidate=bvit_full_layerwise", *overrides))
        return cfg.meta, {g: v["meta"] for g, v in cfg.optimizer.meta_layers.items()}

    assert metas("+arm=no_meta") == (0, {"attn": 0, "io": 0})  # bvit_full's meta 0
    assert metas("meta=7") == (7, {"attn": 7, "io": 7})  # bvit_full at meta 7
    assert metas("+arm=validated_layers", "++tags.validated={meta: 3.0, attn: 5.0, io: 0.0}") == (
        3.0, {"attn": 5.0, "io": 0.0})


def test_a_value_no_search_has_exported_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"reads tags.validated.meta, which its candidate .* does not hold yet"):
        experiment.validate(config("+arm=validated"))
